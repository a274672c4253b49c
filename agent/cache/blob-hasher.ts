import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import type { HashReply, HashRequest } from './hash-worker.ts';

/**
 * SHA-256 of a blob as its bytes arrive. `update` never blocks; a hasher on another thread may fall
 * behind, which `backlog` tells, and `drained` waits out. The digest is the verdict of the fill:
 * nothing is verified before `digest` resolved.
 */
export interface BlobHasher {
  update(chunk: Buffer): void;
  /** Bytes handed to `update` and not hashed yet. */
  readonly backlog: number;
  /** Resolves once the backlog is below `bytes` (at once when it is). */
  drained(bytes: number): Promise<void>;
  /** The hex digest of everything updated; rejects when the hashing thread failed. */
  digest(): Promise<string>;
  /** The fill failed: the hash is not wanted any more. */
  dispose(): void;
}

/**
 * Blobs announced at least this large are hashed on the hashing thread: reading the socket and
 * writing the file then share one core while SHA-256 (as costly per byte as the rest together)
 * takes the other. Smaller blobs, and those of unknown size, are hashed inline: the hand-over
 * costs more than it saves for them.
 */
export const OFF_THREAD_MIN_BYTES = 8 * 1024 * 1024;

/** The hasher for a blob of `size` bytes (announced, or undefined). */
export function hasherFor(size: number | undefined): BlobHasher {
  return size !== undefined && size >= OFF_THREAD_MIN_BYTES ? HashThread.shared().hasher() : new InlineHasher();
}

/** SHA-256 on the calling thread. */
export class InlineHasher implements BlobHasher {
  readonly #hash = createHash('sha256');
  readonly backlog = 0;

  update(chunk: Buffer): void {
    this.#hash.update(chunk);
  }

  drained(): Promise<void> {
    return Promise.resolve();
  }

  digest(): Promise<string> {
    return Promise.resolve(this.#hash.digest('hex'));
  }

  dispose(): void {}
}

/** Bytes copied together before they go to the hashing thread: one message per MiB. */
const BLOCK_BYTES = 1024 * 1024;
/** Blocks kept for reuse once the thread handed them back (more are allocated while it lags). */
const SPARE_BLOCKS = 4;
/**
 * A thread with nothing to hash for this long is stopped: its V8 isolate takes ~25 MiB, which an
 * idle agent should not hold. The next large fill starts a new one (in a few milliseconds).
 */
export const IDLE_STOP_MS = 30_000;

interface Pending {
  backlog: number;
  readonly waiters: Array<{ readonly below: number; readonly resolve: () => void }>;
  digest?: PromiseWithResolvers<string>;
  failed?: Error;
}

/**
 * One worker thread hashing for every fill of the agent, started on first use and stopped after
 * IDLE_STOP_MS without work; it keeps the process alive only while a hash is in flight. Bytes reach
 * it copied into 1 MiB blocks whose memory is transferred, not cloned, and handed back for reuse.
 * When the thread dies, every hash in flight fails (its fill fails: nothing unverified completes)
 * and the next large fill starts a new one.
 */
export class HashThread {
  static #shared: HashThread | undefined;

  static shared(): HashThread {
    HashThread.#shared ??= new HashThread();
    return HashThread.#shared;
  }

  readonly #worker: Worker;
  readonly #pending = new Map<number, Pending>();
  readonly #spare: ArrayBuffer[] = [];
  #nextId = 1;
  #stopped: Error | undefined;
  #idle: NodeJS.Timeout | undefined;
  readonly #idleStopMs: number;

  constructor(idleStopMs = IDLE_STOP_MS) {
    this.#idleStopMs = idleStopMs;
    const source = import.meta.url.endsWith('.ts') ? './hash-worker.ts' : './hash-worker.js';
    // A small young generation, as the agent's own (--max-semi-space-size=1): the thread only ever
    // holds a message or two.
    this.#worker = new Worker(new URL(source, import.meta.url), { execArgv: [], resourceLimits: { maxYoungGenerationSizeMb: 2 } });
    this.#worker.on('message', (reply: HashReply) => this.#reply(reply));
    this.#worker.on('error', (error) => this.#stop(error));
    this.#worker.on('exit', (code) => this.#stop(new Error(`the hashing thread exited (code ${code})`)));
    this.#worker.unref();
  }

  /** False once the thread stopped (idle, terminated or dead). */
  get running(): boolean {
    return this.#stopped === undefined;
  }

  hasher(): BlobHasher {
    const id = this.#nextId++;
    const pending: Pending = { backlog: 0, waiters: [] };
    if (this.#pending.size === 0) this.#busy();
    this.#pending.set(id, pending);
    return new ThreadHasher(this, id, pending);
  }

  /** Work arrived: the thread keeps the process alive until it is done, and is not stopped for idling. */
  #busy(): void {
    clearTimeout(this.#idle);
    this.#idle = undefined;
    if (!this.#stopped) this.#worker.ref();
  }

  /** Nothing in flight: the process may exit, and the thread stops if nothing comes for a while. */
  #quiet(): void {
    if (this.#stopped) return;
    this.#worker.unref();
    this.#idle = setTimeout(() => {
      if (this.#pending.size === 0) void this.terminate();
    }, this.#idleStopMs);
    this.#idle.unref();
  }

  /** Stops the thread: hashes in flight fail; the next `shared()` starts a new one. */
  async terminate(): Promise<void> {
    if (HashThread.#shared === this) HashThread.#shared = undefined;
    await this.#worker.terminate();
  }

  block(): ArrayBuffer {
    return this.#spare.pop() ?? new ArrayBuffer(BLOCK_BYTES);
  }

  send(request: HashRequest, pending: Pending): void {
    if (this.#stopped) {
      pending.failed ??= this.#stopped;
      return;
    }
    if (request.op === 'update') pending.backlog += request.length;
    this.#worker.postMessage(request, request.op === 'update' ? [request.block] : []);
  }

  forget(id: number): void {
    if (!this.#pending.delete(id)) return;
    if (!this.#stopped) this.#worker.postMessage({ op: 'drop', id } satisfies HashRequest);
    if (this.#pending.size === 0) this.#quiet();
  }

  #reply(reply: HashReply): void {
    const pending = this.#pending.get(reply.id);
    if (reply.op === 'hashed') {
      if (this.#spare.length < SPARE_BLOCKS) this.#spare.push(reply.block);
      if (!pending) return;
      pending.backlog -= reply.length;
      wake(pending);
      return;
    }
    this.#pending.delete(reply.id);
    pending?.digest?.resolve(reply.hex);
    if (this.#pending.size === 0) this.#quiet();
  }

  #stop(error: Error): void {
    if (this.#stopped) return;
    this.#stopped = error;
    clearTimeout(this.#idle);
    if (HashThread.#shared === this) HashThread.#shared = undefined;
    for (const pending of this.#pending.values()) {
      pending.failed ??= error;
      pending.backlog = 0;
      wake(pending);
      pending.digest?.reject(error);
    }
    this.#pending.clear();
  }
}

function wake(pending: Pending): void {
  for (let i = pending.waiters.length - 1; i >= 0; i--) {
    const waiter = pending.waiters[i]!;
    if (pending.backlog < waiter.below) {
      pending.waiters.splice(i, 1);
      waiter.resolve();
    }
  }
}

/** A fill's hash on the hashing thread: chunks are gathered into blocks, a full block is sent. */
class ThreadHasher implements BlobHasher {
  readonly #thread: HashThread;
  readonly #id: number;
  readonly #pending: Pending;
  #block: Uint8Array | undefined;
  #used = 0;
  #ended = false;

  constructor(thread: HashThread, id: number, pending: Pending) {
    this.#thread = thread;
    this.#id = id;
    this.#pending = pending;
  }

  get backlog(): number {
    return this.#pending.backlog + this.#used;
  }

  update(chunk: Buffer): void {
    if (this.#ended) throw new Error('hash already finished');
    let from = 0;
    while (from < chunk.length) {
      this.#block ??= new Uint8Array(this.#thread.block());
      const take = Math.min(chunk.length - from, this.#block.length - this.#used);
      this.#block.set(chunk.subarray(from, from + take), this.#used);
      this.#used += take;
      from += take;
      if (this.#used === this.#block.length) this.#flush();
    }
  }

  drained(bytes: number): Promise<void> {
    if (this.#pending.backlog < bytes || this.#pending.failed) return Promise.resolve();
    return new Promise((resolve) => this.#pending.waiters.push({ below: bytes, resolve }));
  }

  async digest(): Promise<string> {
    if (this.#ended) throw new Error('hash already finished');
    this.#flush();
    this.#ended = true;
    if (this.#pending.failed) throw this.#pending.failed;
    this.#pending.digest = Promise.withResolvers<string>();
    this.#thread.send({ op: 'digest', id: this.#id }, this.#pending);
    if (this.#pending.failed) throw this.#pending.failed;
    return this.#pending.digest.promise;
  }

  dispose(): void {
    this.#ended = true;
    this.#block = undefined;
    this.#used = 0;
    this.#thread.forget(this.#id);
  }

  #flush(): void {
    const block = this.#block;
    if (!block || this.#used === 0) return;
    const length = this.#used;
    this.#block = undefined;
    this.#used = 0;
    this.#thread.send({ op: 'update', id: this.#id, block: block.buffer as ArrayBuffer, length }, this.#pending);
  }
}
