import type { Socket } from 'node:net';

/** The least a client must take of a response per send timeout: 1 MiB (~17 KiB/s at the default 60 s). */
export const MIN_PROGRESS_BYTES = 1024 * 1024;

interface Mark {
  readonly bytes: number;
  readonly at: number;
  /** The scan that last saw this connection mid-answer: a connection missing from the previous scan starts afresh. */
  readonly scan: number;
}

/**
 * Cuts connections whose client does not take a response: while bytes are queued for a client, it
 * must take at least `minProgressBytes` per `sendTimeoutMs`, or its connection is reset (the kernel
 * drops what it still holds for it) and the response's file lease goes with it. A client that takes
 * a few bytes now and then to dodge a plain inactivity timeout is cut all the same. A connection
 * with nothing queued is waiting on the agent itself (upstream, a download slot), which its own
 * timeouts bound: its clock starts again.
 *
 * Progress is what the socket accepted for sending (`bytesWritten`): the agent writes bodies with
 * backpressure, one chunk at a time, so that is never more than a chunk ahead of what the client
 * took.
 */
export class SendWatchdog {
  readonly #sendTimeoutMs: number;
  readonly #minProgressBytes: number;
  readonly #marks = new WeakMap<Socket, Mark>();
  readonly #timer: NodeJS.Timeout;
  #scan = 0;

  constructor(sockets: () => Iterable<Socket>, sendTimeoutMs: number, onStalled: (socket: Socket) => void, minProgressBytes = MIN_PROGRESS_BYTES) {
    this.#sendTimeoutMs = sendTimeoutMs;
    this.#minProgressBytes = minProgressBytes;
    this.#timer = setInterval(() => {
      this.#scan += 1;
      const now = performance.now();
      for (const socket of [...sockets()]) if (this.#stalled(socket, now)) onStalled(socket);
    }, Math.max(50, Math.floor(sendTimeoutMs / 4)));
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  #stalled(socket: Socket, now: number): boolean {
    if (socket.destroyed) return false;
    const mark = this.#marks.get(socket);
    const bytes = socket.bytesWritten;
    const fresh = !mark || mark.scan < this.#scan - 1;
    if (fresh || socket.writableLength === 0 || bytes - mark.bytes >= this.#minProgressBytes) {
      this.#marks.set(socket, { bytes, at: now, scan: this.#scan });
      return false;
    }
    this.#marks.set(socket, { ...mark, scan: this.#scan });
    return now - mark.at >= this.#sendTimeoutMs;
  }
}
