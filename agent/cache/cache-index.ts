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
 * disk, fills included.
 */
export interface Claim {
  /** Bytes held now. */
  readonly bytes: number;
  /**
   * Grows (evicting least recently used blobs nobody reads) or shrinks the claim to `total` bytes.
   * False when the room cannot be made; the claim is then unchanged.
   */
  resize(total: number): boolean;
  /** Hands the claimed bytes over to a committed entry (the temp file became the blob's file). */
  commit(digest: Digest, size: number, stamp?: string): void;
  /** Gives the bytes back (the temp file is gone). Idempotent. */
  release(): void;
}

export interface CacheIndexStats {
  /** Bytes of indexed (committed) blobs. */
  readonly bytes: number;
  readonly entries: number;
  readonly evictions: number;
  /** Bytes claimed by running fills for their temp files. */
  readonly claimed: number;
}

/**
 * Least-recently-used index of committed blobs, sized in bytes, and the ledger of what running
 * fills have claimed. Committed + claimed bytes + files still held by readers stay within
 * `maxBytes`: room is made by evicting the least recently used blobs that no reader holds (a
 * blob being read would keep its file, so evicting it frees nothing). Evicting or dropping an
 * entry calls `remove` (which deletes the file); for a leased entry that waits for the last release.
 */
export class CacheIndex {
  readonly maxBytes: number;
  /** Least recently used first: a Map keeps insertion order, and a use re-inserts. */
  readonly #entries = new Map<Digest, IndexEntry>();
  readonly #remove: (digest: Digest, evicted: boolean) => void;
  #indexed = 0;
  #claimed = 0;
  /** Bytes of entries that left the index while leased: their files stay until the last reader is done. */
  #leaving = 0;
  #evictions = 0;

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
    if (!this.#makeRoom(size)) {
      this.#evictions += 1;
      this.#remove(digest, true);
      return;
    }
    this.#entries.set(digest, { digest, size, verified, stamp, leases: 0, removal: undefined });
    this.#indexed += size;
  }

  /** Claims `bytes` for a fill's temp file, evicting as needed; undefined when there is no room. */
  claim(bytes: number): Claim | undefined {
    if (!this.#makeRoom(bytes)) return undefined;
    this.#claimed += bytes;
    let held = bytes;
    let open = true;
    const release = (): void => {
      if (!open) return;
      open = false;
      this.#claimed -= held;
      held = 0;
    };
    return {
      get bytes() {
        return held;
      },
      resize: (total) => {
        if (!open) return false;
        if (total > held && !this.#makeRoom(total - held)) return false;
        this.#claimed += total - held;
        held = total;
        return true;
      },
      commit: (digest, size, stamp) => {
        // Released and re-added with nothing in between: the room just given back is the entry's.
        release();
        this.add(digest, size, true, stamp);
      },
      release,
    };
  }

  /** Takes a lease and marks the entry most recently used; undefined when not cached. */
  acquire(digest: Digest): Lease | undefined {
    const entry = this.#use(digest);
    if (!entry) return undefined;
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
        if (entry.leases > 0 || entry.removal === undefined) return;
        this.#leaving -= entry.size;
        // A digest committed again meanwhile has a new file at the same path: that one stays.
        if (!this.#entries.has(entry.digest)) this.#remove(entry.digest, entry.removal === 'evicted');
      },
    };
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

  /** Bytes that can still be added or claimed without evicting anything. */
  room(): number {
    return Math.max(0, this.maxBytes - this.#used());
  }

  /** Drops an entry (e.g. found corrupt); the file is removed once no reader holds it. */
  delete(digest: Digest): void {
    const entry = this.#entries.get(digest);
    if (entry) this.#drop(entry, 'dropped');
  }

  stats(): CacheIndexStats {
    return { bytes: this.#indexed, entries: this.#entries.size, evictions: this.#evictions, claimed: this.#claimed };
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
   * Evicts least recently used entries nobody reads until `bytes` more fit. Evicts nothing when
   * even that would not make enough room (no blob is thrown away for a claim that fails anyway).
   */
  #makeRoom(bytes: number): boolean {
    if (bytes > this.maxBytes) return false;
    let excess = this.#used() + bytes - this.maxBytes;
    if (excess <= 0) return true;
    const victims: IndexEntry[] = [];
    for (const entry of this.#entries.values()) {
      if (entry.leases > 0 || entry.size === 0) continue;
      victims.push(entry);
      excess -= entry.size;
      if (excess <= 0) break;
    }
    if (excess > 0) return false;
    for (const entry of victims) this.#drop(entry, 'evicted');
    return true;
  }

  #drop(entry: IndexEntry, how: 'evicted' | 'dropped'): void {
    this.#entries.delete(entry.digest);
    this.#indexed -= entry.size;
    if (how === 'evicted') this.#evictions += 1;
    if (entry.leases > 0) {
      entry.removal = how;
      this.#leaving += entry.size;
    } else {
      this.#remove(entry.digest, how === 'evicted');
    }
  }
}
