import { type Hash, createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { Readable, finished } from 'node:stream';
import type { Digest } from '../oci/digest.ts';
import { type AbandonReason, DigestMismatchError, FillAbandonedError, SizeMismatchError } from './errors.ts';

/** An upstream body; `destroy` (undici's and node's streams have it) stops it at once, even while it stalls. */
export type FillBody = AsyncIterable<Uint8Array> & { destroy?(error?: Error): unknown };

/** What an upstream fetch hands the fill once response headers are in. */
export interface FillSource {
  /** Announced length (Content-Length), when upstream sent one. */
  readonly size: number | undefined;
  readonly body: FillBody;
  /**
   * Continues a download that broke off after `offset` bytes (a Range request). The fill asks at
   * most MAX_RESUMES times, only after a failure `resumable` calls a broken transfer, and only when
   * bytes arrived since the last attempt; the whole blob is still verified against its digest at the end.
   */
  readonly resume?: (offset: number) => Promise<{ readonly body: FillBody }>;
  /** Whether a failure while reading `body` is a broken transfer (the source knows its own errors). */
  readonly resumable?: (error: unknown) => boolean;
  /**
   * Called once when the fill stops reading upstream: verified, failed or cut for good (resumes
   * happen before), with the bytes read from this source's bodies (resumes included). Whatever the
   * download held (a download slot) is given back here.
   */
  readonly ended?: (received: number) => void;
  /** Called (before `ended`) when the bytes did not match the digest or the announced size: the source served wrong content. */
  readonly rejected?: (error: Error) => void;
  /**
   * Whether other downloads wait for what this one holds (a download slot). A relay paced by readers
   * too slow to take its memory window gives its slot up then (RELAY_CRAWL_MS).
   */
  readonly contended?: () => boolean;
}

/**
 * A relay is paced by its slowest reader, so a reader that crawls would hold an upstream download
 * slot for as long as it likes. While other downloads wait for the slot, the readers of a relay must
 * take at least a whole memory window (16 MiB) per RELAY_CRAWL_MS (1.6 MiB/s; containerd on the node
 * reads far faster), or the relay is stopped and the slot goes to the next in line.
 */
export const RELAY_CRAWL_MS = 10_000;

/**
 * Room on disk for the temp file, asked for before it grows. An answer with an error means "do not
 * write": the fill relays from memory from then on, and the error says why.
 */
export interface FillSpace {
  /** Once upstream answered: the announced size, or undefined. */
  start(size: number | undefined): Promise<Error | undefined>;
  /** Before the file grows to `total` bytes. */
  grow(total: number): Promise<Error | undefined>;
  /** The file stays at `total` bytes (relaying from here on). */
  stop(total: number): void;
}

/** Most bytes received but not yet written before reading from upstream pauses (a lone fill). */
const MAX_QUEUED_BYTES = 4 * 1024 * 1024;
/**
 * Bytes waiting for a write that all fills together aim to hold: each fill may queue this divided
 * by the fills reading at once, within [MIN_QUEUED_BYTES, MAX_QUEUED_BYTES] (the batch being
 * written comes on top; a fill that started alone keeps its larger queue until it drains). A lone
 * fill keeps its whole queue (smaller ones measured 12% slower); three fills of 1 GiB at 32 MiB
 * held 25 MiB more at peak than at 4 MiB, no faster. Without a budget 48 fills (six mirrors at
 * their default eight) behind a slow disk would hold 192 MiB.
 */
const QUEUE_BUDGET_BYTES = MAX_QUEUED_BYTES;
const MIN_QUEUED_BYTES = 256 * 1024;
/** Fills reading an upstream body right now (they share QUEUE_BUDGET_BYTES). */
let reading = 0;

function queueLimit(): number {
  return Math.max(MIN_QUEUED_BYTES, Math.min(MAX_QUEUED_BYTES, Math.floor(QUEUE_BUDGET_BYTES / Math.max(1, reading))));
}
/**
 * Most chunks queued for the writer, whatever their bytes: an upstream sending 1-byte chunks would
 * otherwise queue 4 million Buffer objects (hundreds of MiB) within MAX_QUEUED_BYTES.
 */
const MAX_QUEUED_CHUNKS = 1024;
/** Chunks smaller than this are copied together into COALESCE_BYTES blocks (write queue, relay window). */
const SMALL_CHUNK_BYTES = 16 * 1024;
const COALESCE_BYTES = 64 * 1024;

/** Resumes after a connection broke mid-blob (flaky tunnels, proxies that drop connections). */
const MAX_RESUMES = 2;

export interface FillOptions {
  /** The temp file; undefined when no file could be created (the fill relays from the start). */
  readonly handle: FileHandle | undefined;
  /** Room for the temp file (cache_max_bytes, free space); without it the file may grow freely. */
  readonly room?: FillSpace;
  /** Told once when the fill stops writing to disk and relays from memory instead. */
  readonly onRelay?: (reason: Error) => void;
  /** Told when the last reader left before upstream answered: nobody wants the download any more. */
  readonly onUnwanted?: () => void;
  /** Most bytes held in memory for the slowest reader while relaying (default 16 MiB). */
  readonly relayWindowBytes?: number;
  /** Default RELAY_CRAWL_MS (tests shorten it). */
  readonly relayCrawlMs?: number;
}

type FillState = 'starting' | 'running' | 'done' | 'failed';

/** A reader's hold on a fill: where it is, so memory is only dropped once every reader passed it. */
export interface FillReader {
  advance(position: number): void;
  detach(): void;
}

/** Write failures that mean "no room / no cache": the bytes are still streamed, just not kept. */
const CACHE_WRITE_ERRORS = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EIO', 'EFBIG', 'ENOENT', 'EBADF']);

/**
 * One upstream download of one digest, hashed as bytes pass. Normally the bytes go to a temp
 * file and every reader (the request that started it and every request that joined) reads that
 * file as it grows; the fill does not depend on any of them, so a client that disconnects does
 * not abort it. When the disk cannot take the bytes (no space, cache dir gone), the fill relays
 * them from a bounded memory window instead: readers still get the whole blob, paced by the
 * slowest one, and nothing is cached. A relaying fill that every reader left once bytes were
 * dropped from memory can serve nobody, now or later: it is stopped (upstream destroyed), so it
 * does not hold a download slot for as long as upstream sends.
 */
export class Fill {
  readonly digest: Digest;
  readonly tempPath: string;
  #size: number | undefined;
  #written = 0;
  /** Bytes that are in the temp file; the rest (relay mode) is in `#memory`. */
  #fileBytes = 0;
  #relay = false;
  #memory: Buffer[] = [];
  #memoryStart = 0;
  #memoryBytes = 0;
  #dropped = false;
  #state: FillState = 'starting';
  #error: Error | undefined;
  /** The upstream body being read (the first, or a resume's). */
  #body: FillBody | undefined;
  #source: FillSource | undefined;
  /** The block small relayed chunks are being copied into (see #remember). */
  #tail: { readonly block: Buffer; used: number; view: Buffer } | undefined;
  /** While the relay waits for its readers: since when, and where the window started then. */
  #paced: { readonly at: number; readonly start: number } | undefined;
  /** Set when the fill was stopped for having no reader (see #stopIfUnread). */
  #abandoned: FillAbandonedError | undefined;
  #wake: Array<() => void> = [];
  #readerWake: Array<() => void> = [];
  readonly #handle: FileHandle | undefined;
  readonly #options: FillOptions;
  readonly #positions = new Map<number, number>();
  #nextReader = 0;
  #closed = false;
  /** The file is no longer needed by the fill itself (synced or abandoned): it closes after the last reader. */
  #released = false;
  readonly #started: Promise<void>;
  readonly #verified: Promise<boolean>;

  constructor(digest: Digest, tempPath: string, options: FillOptions, source: Promise<FillSource>) {
    this.digest = digest;
    this.tempPath = tempPath;
    this.#handle = options.handle;
    this.#options = options;
    if (!options.handle) this.#relay = true;
    this.#started = source.then(
      (s) => {
        this.#size = s.size;
        this.#state = 'running';
        this.#notify();
      },
      (error: unknown) => {
        this.#fail(toError(error));
        throw error;
      },
    );
    // Observed through started(); keep unhandled-rejection noise away.
    this.#started.catch(() => undefined);
    this.#verified = source.then((s) => this.#copy(s).catch((error: unknown) => this.#rejected(s, error)).finally(() => s.ended?.(this.#written))).then(
      () => true,
      (error: unknown) => {
        this.#fail(toError(error));
        return false;
      },
    );
  }

  /** Resolves once upstream answered with content; rejects with the upstream error otherwise. */
  started(): Promise<void> {
    return this.#started;
  }

  /** Resolves true when every byte arrived and matched the digest, false otherwise (never rejects). */
  verified(): Promise<boolean> {
    return this.#verified;
  }

  get size(): number | undefined {
    return this.#size;
  }

  get written(): number {
    return this.#written;
  }

  get done(): boolean {
    return this.#state === 'done';
  }

  get failed(): boolean {
    return this.#state === 'failed';
  }

  /** The failure, once the fill has failed. */
  get error(): Error | undefined {
    return this.#error;
  }

  /** True when the bytes were not (all) written to disk: the blob is streamed, not cached. */
  get relaying(): boolean {
    return this.#relay;
  }

  /** Buffers held in the relay window (each costs more than its bytes: see #remember). */
  get relayBuffers(): number {
    return this.#memory.length;
  }

  /** A new reader can start from byte 0 only while nothing was dropped from the relay window. */
  get joinable(): boolean {
    return !this.#dropped && !this.#closed && this.#state !== 'failed';
  }

  /** Resolves on the next progress, completion or failure. */
  changed(): Promise<void> {
    if (this.#state === 'done' || this.#state === 'failed') return Promise.resolve();
    return new Promise((resolve) => this.#wake.push(resolve));
  }

  /** Reads bytes already written; the caller bounds `length` by `written`. */
  async read(position: number, length: number, into?: (length: number) => Buffer): Promise<Buffer> {
    if (position < this.#fileBytes) {
      if (!this.#handle) throw new Error('fill has no file');
      const bounded = Math.min(length, this.#fileBytes - position);
      const buffer = into ? into(bounded) : Buffer.allocUnsafe(bounded);
      const { bytesRead } = await this.#handle.read(buffer, 0, bounded, position);
      return bytesRead === bounded ? buffer : buffer.subarray(0, bytesRead);
    }
    return this.#readMemory(position, length);
  }

  #readMemory(position: number, length: number): Buffer {
    if (position < this.#memoryStart) throw new Error(`relayed bytes at ${position} were already released`);
    let offset = this.#memoryStart;
    for (const chunk of this.#memory) {
      if (position < offset + chunk.length) {
        const from = position - offset;
        return chunk.subarray(from, Math.min(chunk.length, from + length));
      }
      offset += chunk.length;
    }
    return Buffer.alloc(0);
  }

  /** Tells the source its bytes were wrong (a peer that served them is penalised); rethrows. */
  #rejected(source: FillSource, error: unknown): never {
    if (error instanceof DigestMismatchError || error instanceof SizeMismatchError) source.rejected?.(error);
    throw error;
  }

  async #copy(source: FillSource): Promise<void> {
    this.#source = source;
    if (!this.#relay && this.#options.room) {
      const refused = await this.#options.room.start(source.size);
      if (refused) this.#startRelay(refused);
    }
    const hash = createHash('sha256');
    await this.#download(source, hash);
    if (this.#size !== undefined && this.#written !== this.#size) throw new SizeMismatchError(this.#size, this.#written);
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== this.digest) throw new DigestMismatchError(this.digest, actual);
    this.#size = this.#written;
  }

  /** Reads the body, and the resumes' bodies after a broken transfer, into the hash and the store. */
  async #download(source: FillSource, hash: Hash): Promise<void> {
    let body = source.body;
    for (let resumes = 0; ; resumes += 1) {
      const before = this.#written;
      try {
        this.#body = body;
        await this.#consume(body, hash);
        if (this.#abandoned) throw this.#abandoned;
        return;
      } catch (error) {
        // Whatever the destroyed body threw: stopped on purpose, never resumed.
        if (this.#abandoned) throw this.#abandoned;
        if (error instanceof DigestMismatchError || error instanceof SizeMismatchError || source.resumable?.(error) !== true) throw error;
        // Every announced byte arrived and then the connection dropped (proxies that close without
        // saying so): nothing is missing, and the digest check decides.
        if (this.#size !== undefined && this.#written === this.#size) return;
        // A retry that brought nothing new is not repeated.
        const stalled = resumes > 0 && this.#written === before;
        if (!source.resume || resumes >= MAX_RESUMES || stalled) throw error;
        body = (await source.resume(this.#written)).body;
      }
    }
  }

  /**
   * Hashes every chunk as it arrives; a separate writer stores whatever has queued up in one
   * `writev`. The socket hands over ~64 KiB at a time and one awaited write per chunk cost
   * more than the copy itself; batching by "what queued while the last write ran" keeps latency at
   * one chunk for a slow upstream and batches grow by themselves for a fast one. Chunks are taken as
   * stream events, not through an async iterator (a promise per chunk cost a fifth of the CPU of
   * the read). The queue is bounded: past MAX_QUEUED_BYTES unwritten the body is paused until the
   * writer caught up.
   */
  async #consume(body: FillBody, hash: Hash): Promise<void> {
    let queue: Buffer[] = [];
    let queuedBytes = 0;
    let writer: Promise<void> | undefined;
    let writeError: unknown;
    const startWriter = (): Promise<void> => {
      writer ??= (async () => {
        try {
          while (queue.length > 0) {
            const batch = queue;
            const bytes = queuedBytes;
            queue = [];
            queuedBytes = 0;
            await this.#store(batch, bytes);
          }
        } finally {
          writer = undefined;
        }
      })();
      writer.catch((error: unknown) => {
        writeError ??= error;
      });
      return writer;
    };
    let received = this.#written;
    // Small chunks are copied together (see SMALL_CHUNK_BYTES): an upstream sending 1-byte chunks
    // must not cost an object per byte in the queue, the writev and every reader's reads.
    let tail: { readonly block: Buffer; used: number } | undefined;
    const enqueue = (chunk: Buffer): void => {
      queuedBytes += chunk.length;
      const last = queue.length - 1;
      if (chunk.length >= SMALL_CHUNK_BYTES) {
        queue.push(chunk);
        return;
      }
      // Only the block at the end of this queue grows (its view there starts at 0); a block the
      // writer took is never written to again: the next small chunk starts a new one.
      if (tail && last >= 0 && queue[last]!.buffer === tail.block.buffer && tail.used + chunk.length <= tail.block.length) {
        chunk.copy(tail.block, tail.used);
        tail.used += chunk.length;
        queue[last] = tail.block.subarray(0, tail.used);
        return;
      }
      const block = Buffer.allocUnsafeSlow(COALESCE_BYTES);
      chunk.copy(block, 0);
      tail = { block, used: chunk.length };
      queue.push(block.subarray(0, chunk.length));
    };
    const stream = readable(body);
    reading += 1;
    try {
      await new Promise<void>((resolve, reject) => {
        let settled = false;
        const stop = (error: unknown): void => {
          if (settled) return;
          settled = true;
          stream.off('data', onData);
          stream.destroy();
          if (stream !== body) body.destroy?.();
          reject(error);
        };
        const onData = (raw: Uint8Array): void => {
          if (writeError !== undefined) return stop(writeError);
          // A body that cannot be destroyed is left at the next chunk.
          if (this.#abandoned) return stop(this.#abandoned);
          const chunk = Buffer.isBuffer(raw) ? raw : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
          received += chunk.length;
          if (this.#size !== undefined && received > this.#size) return stop(new SizeMismatchError(this.#size, received));
          hash.update(chunk);
          enqueue(chunk);
          const running = startWriter();
          if (queuedBytes < queueLimit() && queue.length < MAX_QUEUED_CHUNKS) return;
          stream.pause();
          void running
            .catch(() => undefined)
            .then(() => {
              if (!settled) stream.resume();
            });
        };
        stream.on('data', onData);
        finished(stream, (error) => {
          if (settled) return;
          settled = true;
          stream.off('data', onData);
          if (error) reject(error);
          else resolve();
        });
      });
    } finally {
      reading -= 1;
      // Bytes that arrived before a failure still count (a resume continues after them).
      while (writer !== undefined || queue.length > 0) await (writer ?? startWriter()).catch(() => undefined);
    }
    if (writeError !== undefined) throw writeError;
  }

  /** Puts one batch in the temp file (or the relay window) and tells the readers. */
  async #store(batch: Buffer[], bytes: number): Promise<void> {
    if (!this.#relay) await this.#writeToFile(batch, bytes);
    if (this.#relay) {
      for (const chunk of batch) this.#remember(chunk);
      this.#memoryBytes += bytes;
    }
    this.#written += bytes;
    this.#notify();
    if (this.#relay) await this.#paceRelay();
  }

  /**
   * Puts a relayed chunk in the memory window. Small chunks are copied into shared blocks: the
   * window counts bytes, and an upstream sending tiny chunks would otherwise fill it with millions
   * of Buffer objects, each costing far more than its bytes. A block is only ever appended to, and
   * the window's last entry is replaced by a longer view of it, so what readers already got stays.
   */
  #remember(chunk: Buffer): void {
    const tail = this.#tail;
    if (chunk.length >= SMALL_CHUNK_BYTES) {
      this.#tail = undefined;
      this.#memory.push(chunk);
      return;
    }
    if (tail && this.#memory[this.#memory.length - 1] === tail.view && tail.used + chunk.length <= tail.block.length) {
      chunk.copy(tail.block, tail.used);
      tail.used += chunk.length;
      tail.view = tail.block.subarray(0, tail.used);
      this.#memory[this.#memory.length - 1] = tail.view;
      return;
    }
    const block = Buffer.allocUnsafe(COALESCE_BYTES);
    chunk.copy(block, 0);
    const view = block.subarray(0, chunk.length);
    this.#tail = { block, used: chunk.length, view };
    this.#memory.push(view);
  }

  async #writeToFile(chunks: Buffer[], bytes: number): Promise<void> {
    const handle = this.#handle;
    if (!handle) return;
    const refused = await this.#options.room?.grow(this.#fileBytes + bytes);
    if (refused) {
      this.#startRelay(refused);
      return;
    }
    try {
      let written = 0;
      let rest = chunks;
      while (written < bytes) {
        const { bytesWritten } = await handle.writev(rest, this.#fileBytes + written);
        written += bytesWritten;
        if (written < bytes) rest = [Buffer.concat(chunks).subarray(written)];
      }
      this.#fileBytes += bytes;
    } catch (error) {
      if (!CACHE_WRITE_ERRORS.has((error as NodeJS.ErrnoException).code ?? '')) throw error;
      // Whatever part of this batch reached the file is ignored: the batch goes to memory whole.
      // It stays claimed until the temp file is removed, since part of it may be on disk.
      this.#startRelay(toError(error), this.#fileBytes + bytes);
    }
  }

  /** Stops writing to the file, which keeps `onDisk` bytes until it is removed; later bytes go to memory. */
  #startRelay(reason: Error, onDisk = this.#fileBytes): void {
    if (this.#relay && this.#memoryBytes > 0) return;
    this.#relay = true;
    this.#memoryStart = this.#fileBytes;
    this.#options.room?.stop(onDisk);
    this.#options.onRelay?.(reason);
  }

  /** Relay mode: drop what every reader has passed; wait while the slowest lags a full window. */
  async #paceRelay(): Promise<void> {
    const window = this.#options.relayWindowBytes ?? 16 * 1024 * 1024;
    const crawlMs = this.#options.relayCrawlMs ?? RELAY_CRAWL_MS;
    for (let waited = false; ; waited = true) {
      this.#releaseMemory();
      if (this.#positions.size === 0) {
        this.#stopIfUnread();
        return;
      }
      if (this.#memoryBytes <= window) {
        // Room without waiting: the readers keep up, the relay is not paced by them.
        if (!waited) this.#paced = undefined;
        return;
      }
      const now = performance.now();
      if (!this.#paced || this.#memoryStart - this.#paced.start >= window) this.#paced = { at: now, start: this.#memoryStart };
      if (now - this.#paced.at >= crawlMs && this.#source?.contended?.()) throw this.#abandon('crawling');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, crawlMs);
        timer.unref();
        this.#readerWake.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /**
   * The last reader left a running download. A body upstream never announced the size of is
   * stopped: nothing bounds it but cache_max_bytes, so an endless one would write that much and
   * evict every mirror's blobs for nobody (a sized one goes on into the cache). Relaying with no
   * reader: the memory goes (nobody will read it), and once bytes were dropped nobody can join
   * either, so the download is pointless and is stopped. A stopped download fails like any other
   * (nothing cached, the temp file removed, the download slot given back).
   */
  #stopIfUnread(): void {
    if (this.#positions.size > 0 || this.#state !== 'running' || this.#abandoned) return;
    if (this.#size === undefined) {
      this.#abandon('unsized');
      return;
    }
    if (!this.#relay) return;
    this.#releaseMemory(true);
    if (this.#dropped) this.#abandon('relaying');
  }

  /** Stops the download on purpose: the upstream body is destroyed, and the copy ends with this error. */
  #abandon(when: Exclude<AbandonReason, 'waiting'>): FillAbandonedError {
    this.#abandoned = new FillAbandonedError(this.digest, when);
    this.#body?.destroy?.(this.#abandoned);
    return this.#abandoned;
  }

  #releaseMemory(all = false): void {
    const slowest = all ? Infinity : Math.min(...this.#positions.values());
    while (this.#memory.length > 0) {
      const first = this.#memory[0]!;
      if (this.#memoryStart + first.length > slowest) break;
      this.#memory.shift();
      this.#memoryStart += first.length;
      this.#memoryBytes -= first.length;
      this.#dropped = true;
    }
  }

  /**
   * Marks the verified content complete: readers may now send the final bytes. With `persist`, the
   * temp file (by now renamed into the cache) is then fsynced; the promise rejects when that
   * fails. The fsync runs after the readers finished instead of before: for a large blob it takes
   * hundreds of milliseconds, and the bytes the readers get are the verified ones either way.
   */
  async complete(persist = false): Promise<void> {
    this.#state = 'done';
    this.#notify();
    try {
      if (persist && !this.#relay && this.#handle && !this.#closed) await this.#handle.sync();
    } finally {
      this.#released = true;
      this.#closeIfUnused();
    }
  }

  #fail(error: Error): void {
    this.#released = true;
    this.#state = 'failed';
    this.#error = error;
    this.#notify();
    this.#wakeReaders();
    this.#closeIfUnused();
  }

  /** Registers a reader at `position`; detach when done. The file closes after the last reader of an ended fill. */
  attach(position = 0): FillReader {
    if (this.#closed) throw new Error(`fill of ${this.digest} is closed`);
    const id = this.#nextReader++;
    this.#positions.set(id, position);
    let detached = false;
    return {
      advance: (next) => {
        if (detached) return;
        this.#positions.set(id, next);
        this.#wakeReaders();
      },
      detach: () => {
        if (detached) return;
        detached = true;
        this.#positions.delete(id);
        this.#wakeReaders();
        if (this.#positions.size === 0 && this.#state === 'starting') this.#options.onUnwanted?.();
        this.#stopIfUnread();
        this.#closeIfUnused();
      },
    };
  }

  #wakeReaders(): void {
    const wake = this.#readerWake;
    this.#readerWake = [];
    for (const resolve of wake) resolve();
  }

  #closeIfUnused(): void {
    if (!this.#closed && this.#positions.size === 0 && this.#released) {
      this.#closed = true;
      this.#memory = [];
      this.#memoryBytes = 0;
      this.#handle?.close().catch(() => undefined);
    }
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = [];
    for (const resolve of wake) resolve();
  }
}

/** The body as a node stream (undici's and node's bodies are; other iterables are wrapped). */
function readable(body: FillBody): Readable {
  return body instanceof Readable ? body : Readable.from(body, { objectMode: false });
}

function toError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}
