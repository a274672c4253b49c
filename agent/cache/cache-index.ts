import { LRUCache } from 'lru-cache';
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

export interface CacheIndexStats {
  readonly bytes: number;
  readonly entries: number;
  readonly evictions: number;
}

/**
 * Least-recently-used index of committed blobs, sized in bytes. Evicting an entry calls `remove`
 * (which deletes the file) unless a reader holds a lease, in which case removal waits for the
 * last release.
 */
export class CacheIndex {
  readonly maxBytes: number;
  readonly #lru: LRUCache<Digest, IndexEntry>;
  readonly #remove: (digest: Digest, evicted: boolean) => void;
  #evictions = 0;

  /** `remove` deletes the file; `evicted` tells an eviction (LRU, size) from a dropped entry (e.g. corrupt). */
  constructor(maxBytes: number, remove: (digest: Digest, evicted: boolean) => void) {
    this.maxBytes = maxBytes;
    this.#remove = remove;
    this.#lru = new LRUCache<Digest, IndexEntry>({
      maxSize: Math.max(1, maxBytes),
      sizeCalculation: (entry) => Math.max(1, entry.size),
      noDisposeOnSet: true,
      dispose: (entry, _digest, reason) => {
        if (reason === 'evict') this.#evictions += 1;
        if (entry.leases > 0) entry.removal = reason === 'evict' ? 'evicted' : 'dropped';
        else this.#remove(entry.digest, reason === 'evict');
      },
    });
  }

  /** Whether a blob of this size may be cached at all. */
  fits(size: number): boolean {
    return size <= this.maxBytes;
  }

  add(digest: Digest, size: number, verified: boolean, stamp?: string): void {
    const existing = this.#lru.get(digest);
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
    this.#lru.set(digest, { digest, size, verified, stamp, leases: 0, removal: undefined });
  }

  /** Takes a lease and marks the entry most recently used; undefined when not cached. */
  acquire(digest: Digest): Lease | undefined {
    const entry = this.#lru.get(digest);
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
        if (entry.leases === 0 && entry.removal !== undefined && !this.#lru.has(entry.digest)) this.#remove(entry.digest, entry.removal === 'evicted');
      },
    };
  }

  has(digest: Digest): boolean {
    return this.#lru.has(digest);
  }

  /** Indexed digests, least recently used first. */
  digestsOldestFirst(): Digest[] {
    return [...this.#lru.rkeys()];
  }

  /** Marks an entry most recently used. */
  touch(digest: Digest): void {
    this.#lru.get(digest);
  }

  /** Bytes that can still be added without evicting anything. */
  room(): number {
    return Math.max(0, this.maxBytes - this.#lru.calculatedSize);
  }

  /** Drops an entry (e.g. found corrupt); the file is removed once no reader holds it. */
  delete(digest: Digest): void {
    this.#lru.delete(digest);
  }

  stats(): CacheIndexStats {
    return { bytes: this.#lru.calculatedSize, entries: this.#lru.size, evictions: this.#evictions };
  }
}
