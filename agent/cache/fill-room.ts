import type { Digest } from '../oci/digest.ts';
import type { CacheIndex, Claim } from './cache-index.ts';
import type { DiskReserve, DiskShare } from './disk-reserve.ts';
import { NoRoomError } from './errors.ts';
import type { FillSpace } from './fill.ts';

/** Bytes a fill writes between two free-space checks (statfs): the disk can fill up from elsewhere. */
export const RECHECK_BYTES = 4 * 1024 * 1024;

/**
 * Announced bytes a fill may hold ahead of its writes even before it wrote as much (see
 * FillRoom): enough for most layers to be held whole, small against any real cache_max_bytes.
 */
export const RESERVE_AHEAD_BYTES = 16 * 1024 * 1024;

export interface FillRoomOptions {
  /** Resolves once the files of evicted blobs are deleted: a claim's room is real only then. */
  readonly removals: () => Promise<void>;
  readonly recheckBytes?: number;
  readonly reserveAheadBytes?: number;
}

/**
 * The room one fill's temp file takes: a claim under `cache_max_bytes` and a share of the free
 * space above the node's reserve, checked before the first write and again every RECHECK_BYTES.
 * When either runs out the fill relays instead; the claim then shrinks to what is on disk and is
 * given back with the temp file.
 *
 * The claim grows as bytes arrive, and only bytes that arrived make room by evicting. The
 * announced size (`Content-Length`) is upstream's word, not bytes: it is held ahead of the writes
 * (in the cache, and as a free-space grant) only where there is room without evicting, and only
 * as far ahead as the fill has already written (at least RESERVE_AHEAD_BYTES). A few honest fills
 * starting at once then do not all count on the same free room, while an upstream announcing a
 * huge blob and sending one byte evicts nothing and takes little.
 */
export class FillRoom implements FillSpace {
  readonly #index: CacheIndex;
  readonly #share: DiskShare;
  readonly #removals: () => Promise<void>;
  readonly #recheckBytes: number;
  readonly #reserveAheadBytes: number;
  #claim: Claim | undefined;
  #size: number | undefined;
  /** The file size the last grow() asked for: on disk by the next one (writes are sequential). */
  #asked = 0;
  /** File size up to which free space was granted, and where it was last checked. */
  #grantedUpTo = 0;
  #checkedAt = 0;

  constructor(index: CacheIndex, disk: DiskReserve, options: FillRoomOptions) {
    this.#index = index;
    this.#share = disk.open();
    this.#removals = options.removals;
    this.#recheckBytes = options.recheckBytes ?? RECHECK_BYTES;
    this.#reserveAheadBytes = options.reserveAheadBytes ?? RESERVE_AHEAD_BYTES;
  }

  async start(size: number | undefined): Promise<NoRoomError | undefined> {
    this.#size = size;
    if (size !== undefined && !this.#index.fits(size)) {
      return new NoRoomError('cache_max_bytes', `blob of ${size} bytes is larger than cache_max_bytes (${this.#index.maxBytes})`);
    }
    // Relays from the start what could not be cached even by evicting every blob nobody reads.
    if (size !== undefined && !this.#index.couldFit(size)) return this.#cacheFull();
    this.#claim = this.#index.claim(0);
    if (!this.#claim) return this.#cacheFull();
    this.#reserveAhead(0);
    // Free space is first checked at the first write, once room was made for it under
    // cache_max_bytes: the blobs evicted for it free the disk too.
    return undefined;
  }

  async grow(total: number): Promise<NoRoomError | undefined> {
    const claim = this.#claim;
    if (!claim) return this.#cacheFull();
    const onDisk = this.#asked;
    this.#asked = total;
    this.#share.progress(onDisk);
    const before = claim.bytes;
    if (!claim.grow(total)) return this.#cacheFull();
    // More than the reservation held: free room was taken, or blobs were evicted.
    if (claim.bytes > before) await this.#removals();
    this.#reserveAhead(total);
    if (total > this.#grantedUpTo || total - this.#checkedAt >= this.#recheckBytes) return this.#checkDisk(onDisk, total);
    return undefined;
  }

  /** The file stops growing at `total` bytes (relaying): the rest of the claim and the disk share go back. */
  stop(total: number): void {
    this.#claim?.shrink(total);
    this.#share.close();
  }

  /** The temp file became the blob's file: the claim becomes its index entry. */
  commit(digest: Digest, size: number, stamp?: string): void {
    this.#share.close();
    if (this.#claim) this.#claim.commit(digest, size, stamp);
    else this.#index.add(digest, size, true, stamp);
  }

  /** The temp file is gone: everything goes back. */
  release(): void {
    this.#share.close();
    this.#claim?.release();
  }

  /**
   * How far ahead of `written` the file may be counted on: the announced size, but no further
   * than the fill has written already (at least RESERVE_AHEAD_BYTES); RECHECK_BYTES without one.
   */
  #aheadTo(written: number): number {
    if (this.#size === undefined) return written + this.#recheckBytes;
    return Math.min(this.#size, written + Math.max(this.#reserveAheadBytes, written));
  }

  /** Holds announced bytes ahead of `written` in the cache, from free room only. */
  #reserveAhead(written: number): void {
    if (this.#size !== undefined) this.#claim?.reserve(this.#aheadTo(written));
  }

  /**
   * Asks for free space for the bytes about to be written (up to `total`) and ahead of them, so
   * fills writing at once do not count on the same free bytes. Near the reserve only what is about
   * to be written is granted, and checked again at the next write.
   */
  async #checkDisk(onDisk: number, total: number): Promise<NoRoomError | undefined> {
    for (const upTo of new Set([this.#aheadTo(total), total])) {
      if (await this.#share.request(upTo - onDisk)) {
        this.#grantedUpTo = upTo;
        this.#checkedAt = total;
        return undefined;
      }
    }
    return new NoRoomError('free_space', 'not enough free disk space to cache this blob (5% of the file system, at most 1 GiB, stays free)');
  }

  #cacheFull(): NoRoomError {
    return new NoRoomError('cache_max_bytes', `no room under cache_max_bytes (${this.#index.maxBytes}): the rest is taken by blobs being read and running fills`);
  }
}
