import { createHash } from 'node:crypto';
import type { Stats } from 'node:fs';
import { type FileHandle, open, readFile, stat, statfs } from 'node:fs/promises';
import type { Digest } from '../oci/digest.ts';
import { BlobStore, ignoreMissing } from './blob-store.ts';
import { type BlobReadable, FileBlob, FillBlob, ReadBudget } from './blob-reader.ts';
import { CacheIndex, type CacheIndexStats, type Lease } from './cache-index.ts';
import { DigestMismatchError, SizeMismatchError } from './errors.ts';
import { Fill, type FillSource } from './fill.ts';

/** What the cache reports; the caller logs and counts. Keeps this module free of logger/metrics choices. */
/** Free space kept on the cache's file system: 5% of it, at most 1 GiB. */
const RESERVE_FRACTION = 0.05;
const RESERVE_MAX_BYTES = 1024 ** 3;

export interface CacheEvents {
  /** A blob is being streamed without caching (no room, or the cache dir is unusable). */
  cacheBypassed?(digest: Digest, reason: Error): void;
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
  /** Sizes reads by how many streams run at once: memory stays bounded under 1,000 clients. */
  readonly #budget = new ReadBudget();
  readonly #verifying = new Map<Digest, Promise<boolean>>();
  /** Digests being renamed into place: an older copy's delayed removal must not hit the new file. */
  readonly #committing = new Set<Digest>();
  /** File removals in flight: a commit of the same digest waits for them (the thread pool may reorder). */
  readonly #removing = new Map<Digest, Promise<void>>();
  #scanned = false;
  #joined = 0;
  #mismatches = 0;

  constructor(dir: string, maxBytes: number, events: CacheEvents = {}) {
    this.store = new BlobStore(dir);
    this.#events = events;
    this.#index = new CacheIndex(maxBytes, (digest, evicted) => void this.#removeFile(digest, evicted));
  }

  /**
   * Deletes a blob's file (evicted, dropped, or found at start-up with no room left). Tracked, so that
   * a commit of the same digest waits for it (the thread pool may reorder unlink and rename); skipped
   * while a new verified copy is being renamed to that path.
   */
  #removeFile(digest: Digest, evicted: boolean): Promise<void> {
    if (evicted) this.#events.evicted?.(digest);
    if (this.#committing.has(digest)) return Promise.resolve();
    const removal = this.store.remove(digest).catch((error: unknown) => this.#events.storeError?.('remove', error as Error));
    this.#removing.set(digest, removal);
    void removal.finally(() => {
      if (this.#removing.get(digest) === removal) this.#removing.delete(digest);
    });
    return removal;
  }

  /** Prepares the directory (removing crash leftovers). The index is rebuilt by `scan`, which callers need not await. */
  async init(): Promise<{ removedTemp: number }> {
    return { removedTemp: await this.store.init() };
  }

  /**
   * Rebuilds the index from disk, oldest first so LRU order survives a restart. Blobs committed
   * (or adopted) while the scan ran are newer than anything on disk: they stay the most recently
   * used, and what no longer fits is evicted from the oldest found blobs, not from them.
   */
  async scan(): Promise<{ blobs: number; bytes: number }> {
    const found = (await this.store.scan()).filter((blob) => !this.#index.has(blob.digest));
    found.sort((a, b) => b.usedAtMs - a.usedAtMs);
    const live = this.#index.digestsOldestFirst();
    let room = this.#index.room();
    const kept: typeof found = [];
    const removals: Array<Promise<void>> = [];
    let bytes = 0;
    for (const blob of found) {
      bytes += blob.size;
      if (blob.size <= room) {
        kept.push(blob);
        room -= blob.size;
      } else {
        removals.push(this.#removeFile(blob.digest, true));
      }
    }
    // Indexed before anything is awaited: `room` and `live` still hold.
    for (const blob of kept.reverse()) this.#index.add(blob.digest, blob.size, false);
    for (const digest of live) this.#index.touch(digest);
    await Promise.all(removals);
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
      return new FillBlob(fill, 'joined', this.#budget);
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
      return new FillBlob(again, 'joined', this.#budget);
    }
    const temp = await this.#createTemp();
    // Re-check: another request may have started the fill while the temp file was created.
    const raced = this.#running(digest);
    if (raced) {
      if (temp) {
        await temp.handle.close();
        await this.store.removeTemp(temp.path);
      }
      this.#joined += 1;
      return new FillBlob(raced, 'joined', this.#budget);
    }
    const fill = new Fill(
      digest,
      temp?.path ?? '',
      {
        handle: temp?.handle,
        mayWrite: (size) => this.#hasRoomFor(size),
        onRelay: (reason) => this.#events.cacheBypassed?.(digest, reason),
      },
      fetch(),
    );
    this.#inflight.set(digest, fill);
    const reader = new FillBlob(fill, 'miss', this.#budget);
    void this.#settle(fill);
    return reader;
  }

  /**
   * A temp file for a fill. When the cache dir vanished (deleted while running) it is recreated
   * once; when that fails too, the fill relays without a file (the pull still works, uncached).
   */
  async #createTemp(): Promise<{ path: string; handle: FileHandle } | undefined> {
    try {
      return await this.store.createTemp();
    } catch (first) {
      try {
        // Only the directories: temp files of fills still running must stay.
        await this.store.ensureLayout();
        return await this.store.createTemp();
      } catch {
        this.#events.storeError?.('create temp file', first as Error);
        return undefined;
      }
    }
  }

  /** Free space check before caching a blob: the node's disk matters more than a cache entry. */
  async #hasRoomFor(size: number | undefined): Promise<boolean> {
    try {
      const fs = await statfs(this.store.root);
      const free = fs.bavail * fs.bsize;
      const reserve = Math.min(RESERVE_MAX_BYTES, fs.blocks * fs.bsize * RESERVE_FRACTION);
      return free - (size ?? 0) > reserve;
    } catch {
      return false;
    }
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
      if (fill.relaying) {
        // Streamed without caching (no disk space, or the cache dir went away): nothing to commit.
        await this.store.removeTemp(fill.tempPath);
      } else if (this.#index.fits(size)) {
        await this.#commit(fill.tempPath, fill.digest, size);
        this.#forget(fill);
        await this.#persist(fill);
        return;
      } else {
        await this.store.removeTemp(fill.tempPath);
      }
      void fill.complete();
    } catch (error) {
      this.#events.storeError?.('commit', error as Error);
      // The bytes were verified; only caching failed. Readers may still complete; nobody new may join,
      // since complete() may have closed the temp file.
      void fill.complete();
      this.#forget(fill);
      await this.store.removeTemp(fill.tempPath).catch(() => undefined);
    } finally {
      this.#forget(fill);
    }
  }

  /**
   * Lets the readers finish, then fsyncs the committed file. A write error the disk reports only
   * now (EIO on write-back) means the file may not hold the verified bytes once the page cache
   * lets go of them: the entry is dropped and the blob fetched again next time.
   */
  async #persist(fill: Fill): Promise<void> {
    try {
      await fill.complete(true);
    } catch (error) {
      this.#events.storeError?.('fsync', error as Error);
      this.#index.delete(fill.digest);
    }
  }

  /**
   * The fill to join for a digest. A failed fill stays in the map until its temp file is removed,
   * but must never be joined: its file may already be closed, and a new request should fetch again.
   */
  #running(digest: Digest): Fill | undefined {
    const fill = this.#inflight.get(digest);
    return fill && fill.joinable ? fill : undefined;
  }

  #forget(fill: Fill): void {
    if (this.#inflight.get(fill.digest) === fill) this.#inflight.delete(fill.digest);
  }

  /**
   * Opens a committed blob for serving. The file's size is checked on every open; its inode, size
   * and mtime are compared with those recorded when it was last verified, and any difference
   * (first serve after a restart, the file rewritten in place) means a full re-hash before a
   * single byte is served.
   */
  async #openCommitted(digest: Digest): Promise<FileBlob | undefined> {
    const lease = this.#index.acquire(digest) ?? (await this.#adoptFromDisk(digest));
    if (!lease) return undefined;
    try {
      const handle = await open(this.store.blobPath(digest), 'r');
      const info = await handle.stat();
      if (info.size !== lease.size) {
        await handle.close();
        this.#dropCorrupt(digest, new SizeMismatchError(lease.size, info.size));
        lease.release();
        return undefined;
      }
      const stamp = stampOf(info);
      if (!lease.verified || lease.stamp !== stamp) {
        if (!(await this.#verifyOnce(digest))) {
          await handle.close();
          lease.release();
          return undefined;
        }
        lease.markVerified(stamp);
      }
      return new FileBlob(handle, info.size, lease.release, this.#budget);
    } catch (error) {
      lease.release();
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        this.#dropCorrupt(digest, error as Error);
        return undefined;
      }
      throw error;
    }
  }

  /** Renames a verified temp file into place and indexes it, safe against a delayed removal of an older copy. */
  async #commit(tempPath: string, digest: Digest, size: number): Promise<void> {
    this.#committing.add(digest);
    try {
      await this.#removing.get(digest);
      // rename keeps inode and mtime: the stamp taken here is the committed file's.
      const stamp = await stat(tempPath).then(stampOf, () => undefined);
      await this.store.commit(tempPath, digest);
      this.#index.add(digest, size, true, stamp);
    } finally {
      this.#committing.delete(digest);
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

  /**
   * Stores small verified content (the caller hashed it). Never throws: a manifest that cannot be
   * cached (disk full, cache dir gone) is still served; the failure is reported as an event.
   */
  async putSmall(digest: Digest, bytes: Buffer, mediaType: string | undefined): Promise<boolean> {
    if (!this.#index.fits(bytes.length)) return false;
    const temp = await this.#createTemp();
    if (!temp) return false;
    try {
      try {
        await temp.handle.writeFile(bytes);
        await temp.handle.sync();
      } finally {
        await temp.handle.close();
      }
      if (mediaType) await this.store.writeMediaType(digest, mediaType);
      await this.#commit(temp.path, digest, bytes.length);
      return true;
    } catch (error) {
      this.#events.cacheBypassed?.(digest, error as Error);
      await this.store.removeTemp(temp.path).catch(() => undefined);
      return false;
    }
  }
}

function stampOf(info: Stats): string {
  return `${info.ino}:${info.size}:${info.mtimeMs}`;
}
