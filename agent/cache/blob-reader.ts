import type { FileHandle } from 'node:fs/promises';
import type { Fill, FillReader } from './fill.ts';

/** Read size for streaming; large enough to keep syscalls per MiB low, small enough to keep memory flat. */
export const CHUNK_BYTES = 1024 * 1024;

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
  close(): void;
}

/** A committed, verified file, opened before the response starts so a vanished file is a miss, not a broken response. */
export class FileBlob implements BlobReadable {
  readonly origin: BlobOrigin = 'hit';
  readonly #handle: FileHandle;
  readonly #size: number;
  readonly #release: () => void;
  #closed = false;

  constructor(handle: FileHandle, size: number, release: () => void) {
    this.#handle = handle;
    this.#size = size;
    this.#release = release;
  }

  size(): number {
    return this.#size;
  }

  async *read(start: number, end: number = this.#size): AsyncGenerator<Buffer> {
    let position = start;
    while (position < end) {
      const length = Math.min(CHUNK_BYTES, end - position);
      const buffer = Buffer.allocUnsafe(length);
      const { bytesRead } = await this.#handle.read(buffer, 0, length, position);
      if (bytesRead === 0) throw new Error(`cached file ended early at ${position} of ${this.#size} bytes`);
      position += bytesRead;
      yield bytesRead === length ? buffer : buffer.subarray(0, bytesRead);
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#release();
    this.#handle.close().catch(() => undefined);
  }
}

/** A reader of a fill in progress: bytes already written are served at once, the rest as they arrive. */
export class FillBlob implements BlobReadable {
  readonly origin: BlobOrigin;
  readonly #fill: Fill;
  readonly #reader: FillReader;

  constructor(fill: Fill, origin: BlobOrigin) {
    this.origin = origin;
    this.#fill = fill;
    this.#reader = fill.attach();
  }

  size(): number | undefined {
    return this.#fill.size;
  }

  /** Resolves once upstream answered with content; rejects with its error otherwise. */
  started(): Promise<void> {
    return this.#fill.started();
  }

  async *read(start: number, end?: number): AsyncGenerator<Buffer> {
    const fill = this.#fill;
    let position = start;
    this.#reader.advance(position);
    for (;;) {
      if (fill.failed) throw fill.error ?? new Error('fill failed');
      // Until verified, hold back the last byte of the range so no response can complete on unverified content.
      const limit = fill.done ? (end ?? fill.size ?? fill.written) : Math.min(fill.written, end ?? Infinity) - 1;
      if (position < limit) {
        const chunk = await fill.read(position, Math.min(CHUNK_BYTES, limit - position));
        if (chunk.length === 0) throw new Error(`fill of ${fill.digest} could not be read at ${position}`);
        position += chunk.length;
        yield chunk;
        // Only after the consumer took the chunk: relayed memory may then be released.
        this.#reader.advance(position);
        continue;
      }
      if (fill.done) return;
      await fill.changed();
    }
  }

  close(): void {
    this.#reader.detach();
  }
}
