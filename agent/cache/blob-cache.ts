import { createHash } from 'node:crypto';
import type { Stats } from 'node:fs';
import { type FileHandle, open, readFile, stat } from 'node:fs/promises';
import type { BodyBudget } from '../memory/body-budget.ts';
import { HeldBody } from '../memory/held-body.ts';
import type { Digest } from '../oci/digest.ts';
import { BlobStore, ignoreMissing } from './blob-store.ts';
import { type BlobReadable, FileBlob, FillBlob, ReadBudget } from './blob-reader.ts';
import { CacheIndex, type CacheIndexStats, type Lease } from './cache-index.ts';
import { DiskReserve, type FreeSpace } from './disk-reserve.ts';
import { DigestMismatchError, FillAbandonedError, SizeMismatchError } from './errors.ts';
import { Fill } from './fill.ts';
import { type FetchBlob, type FillRequester, FillStart, asRequester } from './fill-start.ts';
import { FillRoom } from './fill-room.ts';

/** What the cache reports; the caller logs and counts. Keeps this module free of logger/metrics choices. */
export interface CacheEvents {
  /** A blob is being streamed without caching (no room, or the cache dir is unusable). */
  cacheBypassed?(digest: Digest, reason: Error): void;
  corrupt?(digest: Digest, error: Error): void;
  fillFailed?(digest: Digest, error: Error): void;
  evicted?(digest: Digest): void;
  storeError?(operation: string, error: Error): void;
}

export interface CacheOptions {
  /** Free and total bytes of the cache's file system (default: statfs). Tests shrink the disk with it. */
  readonly freeSpace?: FreeSpace;
  /** Bytes a fill writes between two free-space checks (default 4 MiB). */
  readonly recheckBytes?: number;
}

export type { FetchBlob, FillRequester } from './fill-start.ts';
export type { FillSource } from './fill.ts';

export interface SmallBlob {
  /** Counted against the body budget until the caller releases it. */
  readonly body: HeldBody;
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
  readonly #disk: DiskReserve;
  readonly #recheckBytes: number | undefined;
  readonly #events: CacheEvents;
  readonly #inflight = new Map<Digest, Fill>();
  /** How each running fill is being started (with whose request), for requests joining it. */
  readonly #starts = new WeakMap<Fill, FillStart>();
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

  constructor(dir: string, maxBytes: number, events: CacheEvents = {}, options: CacheOptions = {}) {
    this.store = new BlobStore(dir);
    this.#events = events;
    this.#disk = new DiskReserve(this.store.root, options.freeSpace);
    this.#recheckBytes = options.recheckBytes;
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

  /** Resolves once every file removal in flight is done: room made by eviction is then free on disk. */
  #removalsDone(): Promise<void> {
    if (this.#removing.size === 0) return Promise.resolve();
    return Promise.all(this.#removing.values()).then(() => undefined);
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

  /** Pins exactly these digests (preloaded and imported images): eviction passes over them. */
  setPins(pins: ReadonlySet<Digest>): void {
    this.#index.setPins(pins);
  }

  /** Whether the blob is in the cache (no file is opened, nothing is read; a running fill does not count). */
  isCached(digest: Digest): boolean {
    return this.#index.has(digest);
  }

  /** A cached blob or a running fill to join; undefined when the caller must fetch. */
  async lookup(digest: Digest): Promise<BlobReadable | undefined> {
    return (await this.#openCommitted(digest)) ?? this.#join(digest);
  }

  /**
   * Opens a blob: from disk, by joining the running fill, or by starting one with the requester's
   * fetch. Rejects with the fetch's error when upstream does not deliver content (e.g. 404): the
   * starter's own failure is not a joiner's (see FillStart). `signal` is the client's: when it
   * aborts before upstream answered, the client stops waiting (rejected with its reason) and
   * leaves the fill; the fill itself goes on for the others.
   */
  async open(digest: Digest, fetch: FetchBlob | FillRequester, signal?: AbortSignal): Promise<BlobReadable> {
    signal?.throwIfAborted();
    const requester = asRequester(fetch);
    const reader = (await this.#openCommitted(digest)) ?? this.#join(digest, requester) ?? (await this.#startFill(digest, requester));
    if (reader instanceof FillBlob) {
      try {
        await untilAborted(reader.started(), signal);
      } catch (error) {
        reader.close();
        throw error;
      }
    }
    return reader;
  }

  /**
   * A reader of the running fill. With a requester, it is queued in case the requests before it
   * fail on their own; without, the reader shares the fill's outcome whatever it is.
   */
  #join(digest: Digest, requester?: FillRequester): FillBlob | undefined {
    const fill = this.#running(digest);
    if (!fill) return undefined;
    this.#joined += 1;
    return new FillBlob(fill, 'joined', this.#budget, requester && this.#starts.get(fill)?.join(requester));
  }

  async #startFill(digest: Digest, requester: FillRequester): Promise<FillBlob> {
    const again = this.#join(digest, requester);
    if (again) return again;
    const temp = await this.#createTemp();
    // Re-check: another request may have started the fill while the temp file was created. Joined
    // before anything else is awaited: a fill found joinable may end and close on any later await.
    const raced = this.#join(digest, requester);
    if (raced) {
      if (temp) void this.#dropTemp(temp);
      return raced;
    }
    const unwanted = new AbortController();
    const room = new FillRoom(this.#index, this.#disk, { removals: () => this.#removalsDone(), ...(this.#recheckBytes ? { recheckBytes: this.#recheckBytes } : {}) });
    const start = new FillStart(requester, unwanted.signal);
    const fill = new Fill(
      digest,
      temp?.path ?? '',
      {
        handle: temp?.handle,
        room,
        onRelay: (reason) => this.#events.cacheBypassed?.(digest, reason),
        onUnwanted: () => unwanted.abort(new FillAbandonedError(digest)),
      },
      start.source,
    );
    this.#inflight.set(digest, fill);
    this.#starts.set(fill, start);
    const reader = new FillBlob(fill, 'miss', this.#budget, start.firstStake);
    void this.#settle(fill, room);
    return reader;
  }

  /** Closes and removes a temp file nobody will write (its request joined another fill). */
  async #dropTemp(temp: { path: string; handle: FileHandle }): Promise<void> {
    try {
      await temp.handle.close();
      await this.store.removeTemp(temp.path);
    } catch (error) {
      this.#events.storeError?.('remove temp file', error as Error);
    }
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

  /**
   * Commits a verified fill or discards a failed one; runs independently of any client. The fill's
   * room (its claim under cache_max_bytes) becomes the index entry, or is given back once the temp
   * file is gone.
   */
  async #settle(fill: Fill, room: FillRoom): Promise<void> {
    const ok = await fill.verified();
    if (!ok) {
      if (fill.error instanceof DigestMismatchError || fill.error instanceof SizeMismatchError) this.#mismatches += 1;
      // Abandoned before upstream was asked: nothing failed.
      if (fill.error && !(fill.error instanceof FillAbandonedError)) this.#events.fillFailed?.(fill.digest, fill.error);
      // Forgotten only once its temp file is gone (nobody joins a failed fill; a new request starts
      // its own), so a fill counted in flight is one whose file still exists.
      await this.#discard(fill, room);
      this.#forget(fill);
      return;
    }
    // Streamed without caching (no room, or the cache dir went away), or the commit failed: nothing to keep.
    const committed = !fill.relaying && this.#index.fits(fill.written) && (await this.#tryCommit(fill, room));
    // From here a new request finds the committed file, or fetches again: nobody joins this fill,
    // whose temp file closes once its readers are done.
    this.#forget(fill);
    if (committed) {
      await this.#persist(fill);
      return;
    }
    // The bytes were verified: the readers may still complete.
    void fill.complete();
    await this.#discard(fill, room);
  }

  /** Renames a verified fill's temp file into the cache; false (reported) when the store failed. */
  async #tryCommit(fill: Fill, room: FillRoom): Promise<boolean> {
    try {
      await this.#commit(fill.tempPath, fill.digest, fill.written, room);
      return true;
    } catch (error) {
      this.#events.storeError?.('commit', error as Error);
      return false;
    }
  }

  /** Removes a fill's temp file (a failure is reported, never thrown), then gives its room back. */
  async #discard(fill: Fill, room: FillRoom): Promise<void> {
    try {
      await this.store.removeTemp(fill.tempPath);
    } catch (error) {
      this.#events.storeError?.('remove temp file', error as Error);
    } finally {
      room.release();
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

  /**
   * Renames a verified temp file into place and indexes it (turning the room it claimed into its
   * entry), safe against a delayed removal of an older copy.
   */
  async #commit(tempPath: string, digest: Digest, size: number, claim: { commit(digest: Digest, size: number, stamp?: string): void }): Promise<void> {
    this.#committing.add(digest);
    try {
      await this.#removing.get(digest);
      // rename keeps inode and mtime: the stamp taken here is the committed file's.
      const stamp = await stat(tempPath).then(stampOf, () => undefined);
      await this.store.commit(tempPath, digest);
      claim.commit(digest, size, stamp);
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

  /**
   * Room for `bytes` more on the cache's file system above the node's free-space reserve, counting
   * what running fills have still to write (and counted by their checks until released); undefined
   * when the reserve would not hold. For the other files under cache_dir (tag records).
   */
  async reserveSpace(bytes: number): Promise<{ release(): void } | undefined> {
    const share = this.#disk.open();
    if (await share.request(bytes)) return { release: () => share.close() };
    share.close();
    return undefined;
  }

  /**
   * Small content (manifests), read whole and verified on every read. Room for it is held under
   * `budget` BEFORE it is read (its size is the index's): the caller owns the returned body and
   * releases it once done. Content larger than `maxBytes` counts as not cached (nothing is read). Rejects with the budget's refusal, or `signal`'s reason while waiting.
   */
  async getSmall(digest: Digest, budget: BodyBudget, signal?: AbortSignal, maxBytes = Infinity): Promise<SmallBlob | undefined> {
    const lease = this.#index.acquire(digest) ?? (await this.#adoptFromDisk(digest));
    if (!lease) return undefined;
    try {
      // Larger than the caller's kind of content can be (a layer asked for as a manifest): not read at all.
      if (lease.size > maxBytes) return undefined;
      const hold = await budget.acquire(lease.size, signal);
      try {
        const bytes = await readFile(this.store.blobPath(digest));
        const actual = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
        if (actual !== digest) {
          hold.release();
          this.#dropCorrupt(digest, new DigestMismatchError(digest, actual));
          return undefined;
        }
        lease.markVerified();
        const mediaType = await this.store.readMediaType(digest);
        return { body: new HeldBody(bytes, hold), mediaType };
      } catch (error) {
        hold.release();
        ignoreMissing(error);
        this.#dropCorrupt(digest, error as Error);
        return undefined;
      }
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
   * Stores small verified content (the caller hashed it), with the same room checks as a fill.
   * Never throws: a manifest that cannot be cached (no room, disk full, cache dir gone) is still
   * served; a failed write is reported as an event.
   */
  async putSmall(digest: Digest, bytes: Buffer, mediaType: string | undefined): Promise<boolean> {
    const claim = this.#index.claim(bytes.length);
    if (!claim) return false;
    const share = this.#disk.open();
    let temp: { path: string; handle: FileHandle } | undefined;
    try {
      await this.#removalsDone();
      if (!(await share.request(bytes.length))) return false;
      temp = await this.#createTemp();
      if (!temp) return false;
      try {
        await temp.handle.writeFile(bytes);
        await temp.handle.sync();
      } finally {
        await temp.handle.close();
      }
      if (mediaType) await this.store.writeMediaType(digest, mediaType);
      await this.#commit(temp.path, digest, bytes.length, claim);
      return true;
    } catch (error) {
      this.#events.cacheBypassed?.(digest, error as Error);
      if (temp) await this.store.removeTemp(temp.path).catch(() => undefined);
      return false;
    } finally {
      share.close();
      // A no-op once committed.
      claim.release();
    }
  }
}

function stampOf(info: Stats): string {
  return `${info.ino}:${info.size}:${info.mtimeMs}`;
}

/** `promise`, unless `signal` aborts first: then rejects with the signal's reason. */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    if (signal.aborted) {
      // Nobody waits for `promise` any more: its rejection is nobody's to handle.
      promise.catch(() => undefined);
      onAbort();
      return;
    }
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
