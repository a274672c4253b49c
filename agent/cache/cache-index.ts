import type { Digest } from '../oci/digest.ts';

interface IndexEntry {
  readonly digest: Digest;
  readonly size: number;
  /** False for entries found on disk at start-up until they are re-hashed on first serve. */
  verified: boolean;
  /** inode, size and mtime of the file when it was verified: a different stamp means re-hash before serving. */
  stamp: string | undefined;
  leases: number;
  /**
   * Left the index while leased, and how (LRU eviction, or dropped e.g. as corrupt): the file is
   * removed when the last lease is released.
   */
  removal: 'evicted' | 'dropped' | undefined;
}

/** A hold on a cached blob: while held, eviction does not remove the file. */
export interface Lease {
  readonly digest: Digest;
  readonly size: number;
  readonly verified: boolean;
  readonly stamp: string | undefined;
  markVerified(stamp?: string): void;
  release(): void;
}

/**
 * Bytes a running fill may put in its temp file. They count against `cache_max_bytes` like
 * committed blobs do, from the moment they are claimed: a cache of 20 GiB holds at most 20 GiB on
 * disk, fills included. Room is made by eviction only for bytes the fill is about to write; bytes
 * it merely announced (`Content-Length`) may be held ahead of the writes from free room, never
 * by evicting: an upstream that announces a huge blob and sends one byte cannot empty the cache.
 */
export interface Claim {
  /** Bytes held now: for what is (about to be) written, plus the reservation ahead of it. */
  readonly bytes: number;
  /** The part of `bytes` held ahead of the writes (taken from free room only). */
  readonly reserved: number;
  /**
   * Holds room for `total` written bytes: the reservation is used first, then free room, then
   * least recently used blobs nobody reads are evicted. False when the room cannot be made; the
   * claim is then unchanged.
   */
  grow(total: number): boolean;
  /**
   * Holds up to `total` bytes, taking only room that is free now (evicts nothing, never shrinks).
   * What it could not hold still counts when later fills ask whether they could fit (`couldFit`),
   * without taking room from anyone.
   */
  reserve(total: number): void;
  /** The file stops at `total` bytes: the claim holds that much, and the reservation goes back. */
  shrink(total: number): void;
  /** Hands the claimed bytes over to a committed entry (the temp file became the blob's file). */
  commit(digest: Digest, size: number, stamp?: string): void;
  /** Gives the bytes back (the temp file is gone). Idempotent. */
  release(): void;
}

/**
 * A claim's ledger: `held` counts against maxBytes, `reserved` (≤ held) of it is not written yet;
 * `expected` more are announced but not held (they only count in `couldFit`).
 */
interface ClaimState {
  held: number;
  reserved: number;
  expected: number;
}

export interface CacheIndexStats {
  /** Bytes of indexed (committed) blobs. */
  readonly bytes: number;
  readonly entries: number;
  readonly evictions: number;
  /** Bytes claimed by running fills for their temp files, reservations included. */
  readonly claimed: number;
  /** The part of `claimed` held ahead of the writes (announced, not written yet). */
  readonly reserved: number;
  /** Bytes of indexed blobs that are pinned (never evicted). */
  readonly pinned: number;
}

/**
 * Least-recently-used index of committed blobs, sized in bytes, and the ledger of what running
 * fills have claimed. Committed + claimed bytes + files still held by readers stay within
 * `maxBytes`: room is made by evicting the least recently used blobs that no reader holds (a
 * blob being read would keep its file, so evicting it frees nothing). Evicting or dropping an
 * entry calls `remove` (which deletes the file); for a leased entry that waits for the last release.
 * Fills' reservations (bytes announced, not written) only ever take free room, and give it back
 * to files that are already on disk (found at start-up, adopted) before anything is evicted.
 */
export class CacheIndex {
  readonly maxBytes: number;
  /** Least recently used first: a Map keeps insertion order, and a use re-inserts. */
  readonly #entries = new Map<Digest, IndexEntry>();
  readonly #remove: (digest: Digest, evicted: boolean) => void;
  #indexed = 0;
  #claimed = 0;
  #reserved = 0;
  #expected = 0;
  readonly #claims = new Set<ClaimState>();
  /** Bytes of indexed entries a reader holds: what eviction cannot free. */
  #leasedIndexed = 0;
  /** Bytes of entries that left the index while leased: their files stay until the last reader is done. */
  #leaving = 0;
  #evictions = 0;
  /** Digests eviction passes over (preloaded and imported images); they may be indexed or not yet. */
  #pins: ReadonlySet<Digest> = new Set();

  /** `remove` deletes the file; `evicted` tells an eviction (LRU, size) from a dropped entry (e.g. corrupt). */
  constructor(maxBytes: number, remove: (digest: Digest, evicted: boolean) => void) {
    this.maxBytes = maxBytes;
    this.#remove = remove;
  }

  /** Whether a blob of this size may be cached at all. */
  fits(size: number): boolean {
    return size <= this.maxBytes;
  }

  /**
   * Indexes a blob whose file is in place (committed, or found on disk). Room is made by
   * eviction; a file that cannot be given room is removed instead of indexed.
   */
  add(digest: Digest, size: number, verified: boolean, stamp?: string): void {
    const existing = this.#use(digest);
    if (existing) {
      if (verified) {
        existing.verified = true;
        existing.stamp = stamp;
      }
      return;
    }
    if (!this.fits(size)) {
      this.#remove(digest, false);
      return;
    }
    // The file exists: bytes merely announced by running fills give way to it first.
    if (!this.#makeRoom(size, true)) {
      this.#evictions += 1;
      this.#remove(digest, true);
      return;
    }
    this.#entries.set(digest, { digest, size, verified, stamp, leases: 0, removal: undefined });
    this.#indexed += size;
  }

  /**
   * Claims `bytes` for a fill's temp file (bytes about to be written), evicting as needed;
   * undefined when there is no room. A claim of 0 bytes always succeeds.
   */
  claim(bytes: number): Claim | undefined {
    if (!this.#makeRoom(bytes, false)) return undefined;
    const state: ClaimState = { held: bytes, reserved: 0, expected: 0 };
    const expect = (bytes: number): void => {
      this.#expected += bytes - state.expected;
      state.expected = bytes;
    };
    this.#claims.add(state);
    this.#claimed += bytes;
    let open = true;
    const release = (): void => {
      if (!open) return;
      open = false;
      this.#claims.delete(state);
      this.#claimed -= state.held;
      this.#reserved -= state.reserved;
      expect(0);
      state.held = 0;
      state.reserved = 0;
    };
    return {
      get bytes() {
        return state.held;
      },
      get reserved() {
        return state.reserved;
      },
      grow: (total) => {
        if (!open) return false;
        const written = state.held - state.reserved;
        if (total <= written) return true;
        const fromReservation = Math.min(total - written, state.reserved);
        const more = total - written - fromReservation;
        if (more > 0 && !this.#makeRoom(more, false)) return false;
        state.reserved -= fromReservation;
        this.#reserved -= fromReservation;
        state.held += more;
        this.#claimed += more;
        expect(Math.max(0, state.expected - more));
        return true;
      },
      reserve: (total) => {
        if (!open) return;
        const take = Math.max(0, Math.min(total - state.held, this.maxBytes - this.#used()));
        state.held += take;
        state.reserved += take;
        this.#claimed += take;
        this.#reserved += take;
        expect(Math.max(0, total - state.held));
      },
      shrink: (total) => {
        if (!open) return;
        const held = Math.min(state.held, Math.max(0, total));
        this.#claimed -= state.held - held;
        this.#reserved -= state.reserved;
        state.held = held;
        state.reserved = 0;
        expect(0);
      },
      commit: (digest, size, stamp) => {
        // Released and re-added with nothing in between: the room just given back is the entry's.
        release();
        this.add(digest, size, true, stamp);
      },
      release,
    };
  }

  /**
   * Whether `bytes` could be claimed now if every blob nobody reads were evicted (nothing is), next
   * to what running fills expect to write (announced, as far ahead as they may reserve). A fill
   * that could not fit relays from the start instead of writing for nothing and leaving several
   * fills half-written when together they do not fit.
   */
  couldFit(bytes: number): boolean {
    const evictable = this.#indexed - this.#leasedIndexed - this.#pinnedUnleased();
    return bytes <= this.maxBytes && this.#used() - evictable + this.#expected + bytes <= this.maxBytes;
  }

  /** Takes a lease and marks the entry most recently used; undefined when not cached. */
  acquire(digest: Digest): Lease | undefined {
    const entry = this.#use(digest);
    if (!entry) return undefined;
    if (entry.leases === 0) this.#leasedIndexed += entry.size;
    entry.leases += 1;
    let released = false;
    return {
      digest,
      size: entry.size,
      verified: entry.verified,
      stamp: entry.stamp,
      markVerified: (stamp?: string) => {
        entry.verified = true;
        if (stamp !== undefined) entry.stamp = stamp;
      },
      release: () => {
        if (released) return;
        released = true;
        entry.leases -= 1;
        if (entry.leases > 0) return;
        if (entry.removal === undefined) {
          this.#leasedIndexed -= entry.size;
          return;
        }
        this.#leaving -= entry.size;
        // A digest committed again meanwhile has a new file at the same path: that one stays.
        if (!this.#entries.has(entry.digest)) this.#remove(entry.digest, entry.removal === 'evicted');
      },
    };
  }

  /**
   * Replaces the set of pinned digests: eviction never picks them (they can still be dropped as
   * corrupt). Unpinned ones become evictable again, in their LRU place. What they may hold in all is
   * the caller's budget (pin_max_bytes), not the index's.
   */
  setPins(pins: ReadonlySet<Digest>): void {
    this.#pins = new Set(pins);
  }

  isPinned(digest: Digest): boolean {
    return this.#pins.has(digest);
  }

  has(digest: Digest): boolean {
    return this.#entries.has(digest);
  }

  /** Indexed digests, least recently used first. */
  digestsOldestFirst(): Digest[] {
    return [...this.#entries.keys()];
  }

  /** Marks an entry most recently used. */
  touch(digest: Digest): void {
    this.#use(digest);
  }

  /**
   * Bytes that files already on disk can still be indexed into without evicting anything
   * (fills' reservations give way to them; a claim gets less: see `Claim`).
   */
  room(): number {
    return Math.max(0, this.maxBytes - this.#used() + this.#reserved);
  }

  /** Drops an entry (e.g. found corrupt); the file is removed once no reader holds it. */
  delete(digest: Digest): void {
    const entry = this.#entries.get(digest);
    if (entry) this.#drop(entry, 'dropped');
  }

  stats(): CacheIndexStats {
    let pinned = 0;
    for (const digest of this.#pins) pinned += this.#entries.get(digest)?.size ?? 0;
    return { bytes: this.#indexed, entries: this.#entries.size, evictions: this.#evictions, claimed: this.#claimed, reserved: this.#reserved, pinned };
  }

  /** Pinned bytes no reader holds (those held are already out of the evictable count). */
  #pinnedUnleased(): number {
    let bytes = 0;
    for (const digest of this.#pins) {
      const entry = this.#entries.get(digest);
      if (entry && entry.leases === 0) bytes += entry.size;
    }
    return bytes;
  }

  #used(): number {
    return this.#indexed + this.#claimed + this.#leaving;
  }

  /** The entry, moved to the most recently used end. */
  #use(digest: Digest): IndexEntry | undefined {
    const entry = this.#entries.get(digest);
    if (!entry) return undefined;
    this.#entries.delete(digest);
    this.#entries.set(digest, entry);
    return entry;
  }

  /**
   * Makes room for `bytes` more: from free room, then (with `takeReservations`) from what fills
   * reserved ahead of their writes, then by evicting least recently used entries nobody reads.
   * Changes nothing when even that would not make enough room (no blob is thrown away for a
   * claim that fails anyway).
   */
  #makeRoom(bytes: number, takeReservations: boolean): boolean {
    if (bytes > this.maxBytes) return false;
    let excess = this.#used() + bytes - this.maxBytes;
    if (excess <= 0) return true;
    const fromReservations = takeReservations ? Math.min(excess, this.#reserved) : 0;
    excess -= fromReservations;
    const victims: IndexEntry[] = [];
    for (const entry of this.#entries.values()) {
      if (excess <= 0) break;
      if (entry.leases > 0 || entry.size === 0 || this.#pins.has(entry.digest)) continue;
      victims.push(entry);
      excess -= entry.size;
    }
    if (excess > 0) return false;
    this.#takeReservations(fromReservations);
    for (const entry of victims) this.#drop(entry, 'evicted');
    return true;
  }

  /** Shrinks fills' reservations by `bytes` in all; they hold that much less ahead of their writes. */
  #takeReservations(bytes: number): void {
    let rest = bytes;
    for (const state of this.#claims) {
      if (rest <= 0) return;
      const take = Math.min(rest, state.reserved);
      state.reserved -= take;
      state.held -= take;
      this.#reserved -= take;
      this.#claimed -= take;
      rest -= take;
    }
  }

  #drop(entry: IndexEntry, how: 'evicted' | 'dropped'): void {
    this.#entries.delete(entry.digest);
    this.#indexed -= entry.size;
    if (how === 'evicted') this.#evictions += 1;
    if (entry.leases > 0) {
      entry.removal = how;
      this.#leasedIndexed -= entry.size;
      this.#leaving += entry.size;
    } else {
      this.#remove(entry.digest, how === 'evicted');
    }
  }
}
