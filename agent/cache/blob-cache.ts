import { createHash } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import type { Digest } from '../oci/digest.ts';
import { BlobStore, ignoreMissing } from './blob-store.ts';
import { type BlobReadable, FileBlob, FillBlob } from './blob-reader.ts';
import { CacheIndex, type CacheIndexStats, type Lease } from './cache-index.ts';
import { DigestMismatchError, SizeMismatchError } from './errors.ts';
import { Fill, type FillSource } from './fill.ts';

/** What the cache reports; the caller logs and counts. Keeps this module free of logger/metrics choices. */
export interface CacheEvents {
  corrupt?(digest: Digest, error: Error): void;
  fillFailed?(digest: Digest, error: Error): void;
  evicted?(digest: Digest): void;
  storeError?(operation: string, error: Error): void;
}

export interface SmallBlob {
  readonly bytes: Buffer;
  readonly mediaType: string | undefined;
}

export interface CacheStats extends CacheIndexStats {
  readonly inflight: number;
  readonly joined: number;
  readonly digestMismatches: number;
  readonly scanned: boolean;
}

/**
 * The verified, content-addressed blob cache with one fill per digest. Blobs found on disk at
 * start-up are re-hashed once on their first serve; everything committed by this process was
 * verified before its rename.
 */
export class BlobCache {
  readonly store: BlobStore;
  readonly #index: CacheIndex;
  readonly #events: CacheEvents;
  readonly #inflight = new Map<Digest, Fill>();
  readonly #verifying = new Map<Digest, Promise<boolean>>();
  #scanned = false;
  #joined = 0;
  #mismatches = 0;

  constructor(dir: string, maxBytes: number, events: CacheEvents = {}) {
    this.store = new BlobStore(dir);
    this.#events = events;
    this.#index = new CacheIndex(maxBytes, (digest) => {
      events.evicted?.(digest);
      this.store.remove(digest).catch((error: unknown) => events.storeError?.('remove', error as Error));
    });
  }

  /** Prepares the directory (removing crash leftovers). The index is rebuilt by `scan`, which callers need not await. */
  async init(): Promise<{ removedTemp: number }> {
    return { removedTemp: await this.store.init() };
  }

  /** Rebuilds the index from disk, oldest first so LRU order survives a restart. */
  async scan(): Promise<{ blobs: number; bytes: number }> {
    const found = await this.store.scan();
    found.sort((a, b) => a.usedAtMs - b.usedAtMs);
    let bytes = 0;
    for (const blob of found) {
      this.#index.add(blob.digest, blob.size, false);
      bytes += blob.size;
    }
    this.#scanned = true;
    return { blobs: found.length, bytes };
  }

  get ready(): boolean {
    return this.#scanned;
  }

  stats(): CacheStats {
    return { ...this.#index.stats(), inflight: this.#inflight.size, joined: this.#joined, digestMismatches: this.#mismatches, scanned: this.#scanned };
  }

  /** Size of a cached or in-flight blob with known size, without touching upstream. */
  async sizeOf(digest: Digest): Promise<number | undefined> {
    const fill = this.#running(digest);
    if (fill?.size !== undefined) return fill.size;
    const blob = await this.#openCommitted(digest);
    if (!blob) return undefined;
    const size = blob.size();
    blob.close();
    return size;
  }

  /** A cached blob or a running fill to join; undefined when the caller must fetch. */
  async lookup(digest: Digest): Promise<BlobReadable | undefined> {
    const committed = await this.#openCommitted(digest);
    if (committed) return committed;
    const fill = this.#running(digest);
    if (fill) {
      this.#joined += 1;
      return new FillBlob(fill, 'joined');
    }
    return undefined;
  }

  /**
   * Opens a blob: from disk, by joining the running fill, or by starting one with `fetch`.
   * Rejects with fetch's error when upstream does not deliver content (e.g. 404).
   */
  async open(digest: Digest, fetch: () => Promise<FillSource>): Promise<BlobReadable> {
    const found = await this.lookup(digest);
    const reader = found ?? (await this.#startFill(digest, fetch));
    if (reader instanceof FillBlob) {
      try {
        await reader.started();
      } catch (error) {
        reader.close();
        throw error;
      }
    }
    return reader;
  }

  async #startFill(digest: Digest, fetch: () => Promise<FillSource>): Promise<FillBlob> {
    const again = this.#running(digest);
    if (again) {
      this.#joined += 1;
      return new FillBlob(again, 'joined');
    }
    const { path, handle } = await this.store.createTemp();
    // Re-check: another request may have started the fill while the temp file was created.
    const raced = this.#running(digest);
    if (raced) {
      await handle.close();
      await this.store.removeTemp(path);
      this.#joined += 1;
      return new FillBlob(raced, 'joined');
    }
    const fill = new Fill(digest, path, handle, fetch());
    this.#inflight.set(digest, fill);
    const reader = new FillBlob(fill, 'miss');
    void this.#settle(fill);
    return reader;
  }

  /** Commits a verified fill or discards a failed one; runs independently of any client. */
  async #settle(fill: Fill): Promise<void> {
    const ok = await fill.verified();
    try {
      if (!ok) {
        if (fill.error instanceof DigestMismatchError || fill.error instanceof SizeMismatchError) this.#mismatches += 1;
        if (fill.error) this.#events.fillFailed?.(fill.digest, fill.error);
        await this.store.removeTemp(fill.tempPath);
        return;
      }
      const size = fill.written;
      if (this.#index.fits(size)) {
        await this.store.commit(fill.tempPath, fill.digest);
        this.#index.add(fill.digest, size, true);
      } else {
        await this.store.removeTemp(fill.tempPath);
      }
      fill.complete();
    } catch (error) {
      this.#events.storeError?.('commit', error as Error);
      // The bytes were verified; only caching failed. Readers may still complete; nobody new may join,
      // since complete() may have closed the temp file.
      fill.complete();
      this.#forget(fill);
      await this.store.removeTemp(fill.tempPath).catch(() => undefined);
    } finally {
      this.#forget(fill);
    }
  }

  /**
   * The fill to join for a digest. A failed fill stays in the map until its temp file is removed,
   * but must never be joined: its file may already be closed, and a new request should fetch again.
   */
  #running(digest: Digest): Fill | undefined {
    const fill = this.#inflight.get(digest);
    return fill?.failed ? undefined : fill;
  }

  #forget(fill: Fill): void {
    if (this.#inflight.get(fill.digest) === fill) this.#inflight.delete(fill.digest);
  }

  async #openCommitted(digest: Digest): Promise<FileBlob | undefined> {
    const lease = this.#index.acquire(digest) ?? (await this.#adoptFromDisk(digest));
    if (!lease) return undefined;
    try {
      if (!lease.verified && !(await this.#verifyOnce(digest))) {
        lease.release();
        return undefined;
      }
      lease.markVerified();
      const handle = await open(this.store.blobPath(digest), 'r');
      const { size } = await handle.stat();
      if (size !== lease.size) {
        await handle.close();
        this.#dropCorrupt(digest, new SizeMismatchError(lease.size, size));
        lease.release();
        return undefined;
      }
      return new FileBlob(handle, size, lease.release);
    } catch (error) {
      lease.release();
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        this.#dropCorrupt(digest, error as Error);
        return undefined;
      }
      throw error;
    }
  }

  /** Re-hashes a blob found on disk at start-up; concurrent first serves share one check. */
  #verifyOnce(digest: Digest): Promise<boolean> {
    let running = this.#verifying.get(digest);
    if (!running) {
      running = this.store.verify(digest).then(
        () => true,
        (error: unknown) => {
          this.#dropCorrupt(digest, error as Error);
          return false;
        },
      );
      running.finally(() => this.#verifying.delete(digest)).catch(() => undefined);
      this.#verifying.set(digest, running);
    }
    return running;
  }

  #dropCorrupt(digest: Digest, error: Error): void {
    if (error instanceof DigestMismatchError || error instanceof SizeMismatchError) this.#mismatches += 1;
    this.#events.corrupt?.(digest, error);
    this.#index.delete(digest);
  }

  /** Small content (manifests): verified on every read, since it is read whole anyway. */
  async getSmall(digest: Digest): Promise<SmallBlob | undefined> {
    const lease = this.#index.acquire(digest) ?? (await this.#adoptFromDisk(digest));
    if (!lease) return undefined;
    try {
      const bytes = await readFile(this.store.blobPath(digest));
      const actual = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
      if (actual !== digest) {
        this.#dropCorrupt(digest, new DigestMismatchError(digest, actual));
        return undefined;
      }
      lease.markVerified();
      return { bytes, mediaType: await this.store.readMediaType(digest) };
    } catch (error) {
      ignoreMissing(error);
      this.#dropCorrupt(digest, error as Error);
      return undefined;
    } finally {
      lease.release();
    }
  }

  /** Before the start-up scan finished, a blob not yet indexed may still be on disk. */
  async #adoptFromDisk(digest: Digest): Promise<Lease | undefined> {
    if (this.#scanned) return undefined;
    const size = await this.store.sizeOf(digest);
    if (size === undefined) return undefined;
    this.#index.add(digest, size, false);
    return this.#index.acquire(digest);
  }

  /** Stores small verified content (the caller hashed it). */
  async putSmall(digest: Digest, bytes: Buffer, mediaType: string | undefined): Promise<void> {
    if (!this.#index.fits(bytes.length)) return;
    const { path, handle } = await this.store.createTemp();
    try {
      await handle.writeFile(bytes);
      await handle.sync();
    } finally {
      await handle.close();
    }
    if (mediaType) await this.store.writeMediaType(digest, mediaType);
    await this.store.commit(path, digest);
    this.#index.add(digest, bytes.length, true);
  }
}
