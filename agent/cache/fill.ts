import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import type { Digest } from '../oci/digest.ts';
import { DigestMismatchError, SizeMismatchError } from './errors.ts';

/** What an upstream fetch hands the fill once response headers are in. */
export interface FillSource {
  /** Announced length (Content-Length), when upstream sent one. */
  readonly size: number | undefined;
  readonly body: AsyncIterable<Uint8Array>;
}

type FillState = 'starting' | 'running' | 'done' | 'failed';

/**
 * One upstream download of one digest into a temp file, hashed as bytes pass. Readers (the
 * request that started it and every request that joined) read the temp file as it grows; the
 * fill does not depend on any of them, so a client that disconnects does not abort it.
 */
export class Fill {
  readonly digest: Digest;
  readonly tempPath: string;
  #size: number | undefined;
  #written = 0;
  #state: FillState = 'starting';
  #error: Error | undefined;
  #wake: Array<() => void> = [];
  readonly #handle: FileHandle;
  #readers = 0;
  #closed = false;
  readonly #started: Promise<void>;
  readonly #verified: Promise<boolean>;

  constructor(digest: Digest, tempPath: string, handle: FileHandle, source: Promise<FillSource>) {
    this.digest = digest;
    this.tempPath = tempPath;
    this.#handle = handle;
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
    this.#verified = source.then((s) => this.#copy(s.body)).then(
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

  /** The failure, once the fill has failed. */
  get error(): Error | undefined {
    return this.#error;
  }

  /** Resolves on the next progress, completion or failure. */
  changed(): Promise<void> {
    if (this.#state === 'done' || this.#state === 'failed') return Promise.resolve();
    return new Promise((resolve) => this.#wake.push(resolve));
  }

  /** Reads bytes already written; the caller bounds `length` by `written`. */
  async read(position: number, length: number): Promise<Buffer> {
    const buffer = Buffer.allocUnsafe(length);
    const { bytesRead } = await this.#handle.read(buffer, 0, length, position);
    return bytesRead === length ? buffer : buffer.subarray(0, bytesRead);
  }

  async #copy(body: AsyncIterable<Uint8Array>): Promise<void> {
    const hash = createHash('sha256');
    for await (const chunk of body) {
      hash.update(chunk);
      let offset = 0;
      while (offset < chunk.byteLength) {
        const { bytesWritten } = await this.#handle.write(chunk, offset, chunk.byteLength - offset, this.#written);
        offset += bytesWritten;
        this.#written += bytesWritten;
      }
      if (this.#size !== undefined && this.#written > this.#size) throw new SizeMismatchError(this.#size, this.#written);
      this.#notify();
    }
    if (this.#size !== undefined && this.#written !== this.#size) throw new SizeMismatchError(this.#size, this.#written);
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== this.digest) throw new DigestMismatchError(this.digest, actual);
    await this.#handle.sync();
    this.#size = this.#written;
  }

  /** Marks the verified content complete; readers may now send the final bytes. */
  complete(): void {
    this.#state = 'done';
    this.#notify();
    this.#closeIfUnused();
  }

  #fail(error: Error): void {
    this.#state = 'failed';
    this.#error = error;
    this.#notify();
    this.#closeIfUnused();
  }

  /** Fails a fill from outside (e.g. the commit step failed). */
  abort(error: Error): void {
    if (this.#state !== 'done') this.#fail(error);
  }

  get failed(): boolean {
    return this.#state === 'failed';
  }

  /** Registers a reader; the returned function unregisters it. The file closes after the last reader of an ended fill. */
  attach(): () => void {
    if (this.#closed) throw new Error(`fill of ${this.digest} is closed`);
    this.#readers += 1;
    let detached = false;
    return () => {
      if (detached) return;
      detached = true;
      this.#readers -= 1;
      this.#closeIfUnused();
    };
  }

  #closeIfUnused(): void {
    if (!this.#closed && this.#readers === 0 && (this.#state === 'done' || this.#state === 'failed')) {
      this.#closed = true;
      this.#handle.close().catch(() => undefined);
    }
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = [];
    for (const resolve of wake) resolve();
  }
}

function toError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}
