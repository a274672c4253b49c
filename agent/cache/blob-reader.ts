import type { FileHandle } from 'node:fs/promises';
import type { Fill, FillReader } from './fill.ts';
import type { StartStake } from './fill-start.ts';

/** Largest read: few syscalls per MiB for a lone stream. */
export const CHUNK_BYTES = 1024 * 1024;
/** Smallest read, used when very many streams run at once. */
export const MIN_CHUNK_BYTES = 16 * 1024;
/**
 * Total bytes of read chunks the agent aims to hold at once, across all streams: a chunk stays in
 * memory until the client's socket takes it, so with 1,000 concurrent clients 1 MiB chunks would
 * mean ~1 GiB. Each stream's chunk is the budget divided by the active streams, within the bounds.
 */
export const CHUNK_BUDGET_BYTES = 32 * 1024 * 1024;

/** Counts active streams and sizes their reads to keep memory bounded under high concurrency. */
export class ReadBudget {
  #active = 0;
  readonly #budget: number;

  constructor(budget = CHUNK_BUDGET_BYTES) {
    this.#budget = budget;
  }

  open(): () => void {
    this.#active += 1;
    let closed = false;
    return () => {
      if (closed) return;
      closed = true;
      this.#active -= 1;
    };
  }

  get active(): number {
    return this.#active;
  }

  chunkBytes(): number {
    return Math.max(MIN_CHUNK_BYTES, Math.min(CHUNK_BYTES, Math.floor(this.#budget / Math.max(1, this.#active))));
  }
}

/** Where the bytes of a response come from, for logs and metrics. */
export type BlobOrigin = 'hit' | 'miss' | 'joined';

/** A blob opened for reading: a committed file, or a fill in progress. */
export interface BlobReadable {
  readonly origin: BlobOrigin;
  /** Total size when known (always for committed blobs; for fills once upstream announced it). */
  size(): number | undefined;
  /**
   * Yields bytes [start, end). With `end` undefined, to the end of the blob. Throws when a fill
   * fails; the last byte of the range is only yielded once the whole blob is verified.
   */
  read(start: number, end?: number): AsyncGenerator<Buffer>;
  /** Hands back a chunk `read` yielded once nothing references it any more (the socket took it). */
  recycle?(chunk: Buffer): void;
  close(): void;
}

/** Buffers kept for reuse per stream: the one being read into, the ones the socket still holds. */
const FREE_BUFFERS = 4;

/**
 * Read buffers of one stream, handed back once the socket took them: one allocation per stream
 * instead of one per chunk (the profile showed a third of the time in GC and allocation).
 */
class BufferRing {
  readonly #free: Buffer[] = [];
  readonly #ours = new WeakSet<ArrayBufferLike>();
  #closed = false;

  take(length: number): Buffer {
    while (this.#free.length > 0) {
      const candidate = this.#free.pop()!;
      if (candidate.length >= length) return candidate.subarray(0, length);
    }
    const buffer = Buffer.allocUnsafeSlow(length);
    this.#ours.add(buffer.buffer);
    return buffer;
  }

  /** Only buffers this ring allocated come back (not, e.g., slices of a fill's relay memory). */
  give(chunk: Buffer): void {
    if (this.#closed || this.#free.length >= FREE_BUFFERS || !this.#ours.has(chunk.buffer)) return;
    this.#free.push(Buffer.from(chunk.buffer, 0, chunk.buffer.byteLength));
  }

  close(): void {
    this.#closed = true;
    this.#free.length = 0;
  }
}

/** A committed, verified file, opened before the response starts so a vanished file is a miss, not a broken response. */
export class FileBlob implements BlobReadable {
  readonly origin: BlobOrigin = 'hit';
  readonly #handle: FileHandle;
  readonly #size: number;
  readonly #release: () => void;
  readonly #budget: ReadBudget;
  readonly #leaveBudget: () => void;
  #closed = false;

  constructor(handle: FileHandle, size: number, release: () => void, budget: ReadBudget) {
    this.#handle = handle;
    this.#size = size;
    this.#release = release;
    this.#budget = budget;
    this.#leaveBudget = budget.open();
  }

  size(): number {
    return this.#size;
  }

  readonly #ring = new BufferRing();

  recycle(chunk: Buffer): void {
    this.#ring.give(chunk);
  }

  async *read(start: number, end: number = this.#size): AsyncGenerator<Buffer> {
    let position = start;
    while (position < end) {
      const length = Math.min(this.#budget.chunkBytes(), end - position);
      const buffer = this.#ring.take(length);
      const { bytesRead } = await this.#handle.read(buffer, 0, length, position);
      if (bytesRead === 0) throw new Error(`cached file ended early at ${position} of ${this.#size} bytes`);
      position += bytesRead;
      yield bytesRead === length ? buffer : buffer.subarray(0, bytesRead);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#ring.close();
    this.#leaveBudget();
    this.#release();
    this.#handle.close().catch(() => undefined);
  }
}

/** A reader of a fill in progress: bytes already written are served at once, the rest as they arrive. */
export class FillBlob implements BlobReadable {
  readonly origin: BlobOrigin;
  readonly #fill: Fill;
  readonly #reader: FillReader;
  readonly #budget: ReadBudget;
  readonly #leaveBudget: () => void;
  readonly #ring = new BufferRing();
  /** Resolves when the reader is closed: a read waiting for the fill stops waiting. */
  readonly #closing = Promise.withResolvers<void>();
  /** This reader's requester in the fill's start (see FillStart). */
  readonly #stake: StartStake | undefined;
  #closed = false;

  constructor(fill: Fill, origin: BlobOrigin, budget: ReadBudget, stake?: StartStake) {
    this.origin = origin;
    this.#fill = fill;
    this.#reader = fill.attach();
    this.#budget = budget;
    this.#leaveBudget = budget.open();
    this.#stake = stake;
  }

  size(): number | undefined {
    return this.#fill.size;
  }

  /**
   * Resolves once upstream answered with content; rejects with the fill's error, or with this
   * reader's own requester's failure (the fill may go on for others: see FillStart).
   */
  started(): Promise<void> {
    if (!this.#stake) return this.#fill.started();
    const started = Promise.race([this.#fill.started(), this.#stake.own]);
    // Observed by whoever awaits it; one that stopped waiting (its client left) must not leave it unhandled.
    started.catch(() => undefined);
    return started;
  }

  /**
   * Yields the range as the fill writes it. Until the blob is verified, the last byte of the range is
   * held back, so no response can complete on unverified content. Once everything but that byte was
   * yielded, the byte is copied aside and the reader stops pinning the relay window: a reader
   * waiting only for verification (a small Range request, the end of a GET) must not hold a relay
   * that can only be verified by going on. Ends early, without an error, when the reader is closed
   * (its client went away).
   */
  async *read(start: number, end?: number): AsyncGenerator<Buffer> {
    const fill = this.#fill;
    let position = start;
    let heldBack: Buffer | undefined;
    this.#reader.advance(position);
    for (;;) {
      if (this.#closed) return;
      if (fill.failed) throw fill.error ?? new Error('fill failed');
      const last = end ?? fill.size;
      if (heldBack) {
        if (fill.done) {
          yield heldBack;
          return;
        }
      } else if (!fill.done && last !== undefined && position === last - 1 && fill.written >= last) {
        heldBack = Buffer.from(await fill.read(position, 1));
        if (heldBack.length !== 1) throw new Error(`fill of ${fill.digest} could not be read at ${position}`);
        position += 1;
        this.#reader.advance(Number.MAX_SAFE_INTEGER);
        continue;
      }
      const limit = fill.done ? (end ?? fill.size ?? fill.written) : Math.min(fill.written, end ?? Infinity) - 1;
      if (!heldBack && position < limit) {
        const chunk = await fill.read(position, Math.min(this.#budget.chunkBytes(), limit - position), (n) => this.#ring.take(n));
        if (chunk.length === 0) throw new Error(`fill of ${fill.digest} could not be read at ${position}`);
        position += chunk.length;
        yield chunk;
        // Only after the consumer took the chunk: relayed memory may then be released.
        this.#reader.advance(position);
        continue;
      }
      if (fill.done && !heldBack) return;
      await Promise.race([fill.changed(), this.#closing.promise]);
    }
  }

  recycle(chunk: Buffer): void {
    this.#ring.give(chunk);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing.resolve();
    this.#ring.close();
    this.#leaveBudget();
    this.#stake?.leave();
    this.#reader.detach();
  }
}
