import type { Digest } from '../oci/digest.ts';
import type { CacheIndex, Claim } from './cache-index.ts';
import type { DiskReserve, DiskShare } from './disk-reserve.ts';
import { NoRoomError } from './errors.ts';
import type { FillSpace } from './fill.ts';

/** Bytes a fill writes between two free-space checks (statfs): the disk can fill up from elsewhere. */
export const RECHECK_BYTES = 4 * 1024 * 1024;

export interface FillRoomOptions {
  /** Resolves once the files of evicted blobs are deleted: a claim's room is real only then. */
  readonly removals: () => Promise<void>;
  readonly recheckBytes?: number;
}

/**
 * The room one fill's temp file takes: a claim under `cache_max_bytes` (the announced size up
 * front, or growing as bytes arrive when upstream announced none) and a share of the free space
 * above the node's reserve, checked again every RECHECK_BYTES. When either runs out the fill
 * relays instead; the claim then shrinks to what is on disk and is given back with the temp file.
 */
export class FillRoom implements FillSpace {
  readonly #index: CacheIndex;
  readonly #share: DiskShare;
  readonly #removals: () => Promise<void>;
  readonly #recheckBytes: number;
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
  }

  async start(size: number | undefined): Promise<NoRoomError | undefined> {
    this.#size = size;
    this.#claim = this.#index.claim(size ?? 0);
    if (!this.#claim) {
      return size !== undefined && !this.#index.fits(size)
        ? new NoRoomError('cache_max_bytes', `blob of ${size} bytes is larger than cache_max_bytes (${this.#index.maxBytes})`)
        : this.#cacheFull();
    }
    await this.#removals();
    return this.#checkDisk(0);
  }

  async grow(total: number): Promise<NoRoomError | undefined> {
    const claim = this.#claim;
    if (!claim) return this.#cacheFull();
    const onDisk = this.#asked;
    this.#asked = total;
    this.#share.progress(onDisk);
    const before = claim.bytes;
    if (!claim.resize(Math.max(total, this.#size ?? 0))) return this.#cacheFull();
    if (claim.bytes > before) await this.#removals();
    if (total > this.#grantedUpTo || total - this.#checkedAt >= this.#recheckBytes) return this.#checkDisk(onDisk, total);
    return undefined;
  }

  /** The file stops growing at `total` bytes (relaying): the rest of the claim and the disk share go back. */
  stop(total: number): void {
    this.#claim?.resize(total);
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

  /** Asks for free space up to the whole announced size, or RECHECK_BYTES past `total` when none was announced. */
  async #checkDisk(onDisk: number, total = 0): Promise<NoRoomError | undefined> {
    const upTo = this.#size ?? total + this.#recheckBytes;
    if (!(await this.#share.request(upTo - onDisk))) {
      return new NoRoomError('free_space', 'not enough free disk space to cache this blob (5% of the file system, at most 1 GiB, stays free)');
    }
    this.#grantedUpTo = upTo;
    this.#checkedAt = total;
    return undefined;
  }

  #cacheFull(): NoRoomError {
    return new NoRoomError('cache_max_bytes', `no room under cache_max_bytes (${this.#index.maxBytes}): the rest is taken by blobs being read and running fills`);
  }
}
