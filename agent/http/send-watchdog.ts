import type { Socket } from 'node:net';

/** The least a client must take of a response per FLOOR_PERIODS send timeouts: 1 MiB (~4 KiB/s at the default 60 s). */
export const MIN_PROGRESS_BYTES = 1024 * 1024;
/** How many send timeouts the floor is measured over. */
export const FLOOR_PERIODS = 4;

interface Marks {
  /** When the socket last took any bytes, and how many it had taken then. */
  readonly lastBytes: number;
  readonly lastAt: number;
  /** Where the current floor window started. */
  readonly floorBytes: number;
  readonly floorAt: number;
  /** The scan that last saw this connection mid-answer: a connection missing from the previous scan starts afresh. */
  readonly scan: number;
}

/**
 * Cuts connections whose client does not take its answer. While bytes are queued for a client, it
 * must take some within `sendTimeoutMs`, and at least `minProgressBytes` within FLOOR_PERIODS send
 * timeouts; otherwise its connection is reset (the kernel drops what it still holds for it) and the
 * response's file lease goes with it. The floor catches a client that takes a few bytes now and then
 * to dodge the plain timeout; it is measured over several periods because what a client takes shows
 * up in the steps the kernel's socket buffers hand over (up to a few MiB at once on a fast link), and a
 * client keeping a pace near the floor must not be cut for a step that landed just outside a window.
 * A connection with nothing queued is waiting on the agent itself (upstream, a download slot), which
 * its own timeouts bound: its clocks start again.
 *
 * What the client took is what the socket accepted for sending (`bytesWritten`): the agent writes
 * bodies with backpressure, a slice at a time, so that is never more than a slice ahead of what the
 * client took.
 */
export class SendWatchdog {
  readonly #sendTimeoutMs: number;
  readonly #minProgressBytes: number;
  readonly #marks = new WeakMap<Socket, Marks>();
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
    const marks = this.#marks.get(socket);
    const bytes = socket.bytesWritten;
    if (!marks || marks.scan < this.#scan - 1 || socket.writableLength === 0) {
      this.#marks.set(socket, { lastBytes: bytes, lastAt: now, floorBytes: bytes, floorAt: now, scan: this.#scan });
      return false;
    }
    const moved = bytes !== marks.lastBytes;
    const floorMet = bytes - marks.floorBytes >= this.#minProgressBytes;
    const next: Marks = {
      lastBytes: bytes,
      lastAt: moved ? now : marks.lastAt,
      floorBytes: floorMet ? bytes : marks.floorBytes,
      floorAt: floorMet ? now : marks.floorAt,
      scan: this.#scan,
    };
    this.#marks.set(socket, next);
    return now - next.lastAt >= this.#sendTimeoutMs || now - next.floorAt >= FLOOR_PERIODS * this.#sendTimeoutMs;
  }
}
