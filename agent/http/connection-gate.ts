import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { isLoopback } from '../config/address.ts';

/** How long a connection that got a final raw answer may linger before it is destroyed. */
export const LINGER_MS = 1_000;

export interface GateOptions {
  /** Connections served at once; the next one is answered with `refusal` and closed. */
  readonly maxConnections: number;
  /** Connections one remote address may hold (loopback exempt); undefined: no per-address cap. */
  readonly maxPerAddress?: number | undefined;
  /**
   * Extra connections kept for loopback clients once the cap is reached: the kubelet probes the
   * metrics port on 127.0.0.1, and clients elsewhere in the cluster must not be able to fail its
   * probes by holding the cap.
   */
  readonly loopbackReserve?: number | undefined;
  /** The raw HTTP answer (status line, headers, body) for a refused connection. */
  readonly refusal: string;
  /** A connection opened, closed, or was refused. */
  readonly onConnection?: (event: 'opened' | 'closed' | 'refused') => void;
  /** Refusing started (`true`) or the listener is well below its cap again (`false`). */
  readonly onSaturated?: (atCap: boolean) => void;
}

const ignore = (): void => undefined;

/**
 * Puts a connection cap in front of node:http's own connection handling (its one 'connection'
 * listener is wrapped), so that a refused connection never gets a parser or a request while the
 * server keeps listening, closing and timing its connections itself. Every accepted socket gets an
 * error listener first: no client (a reset after an answer, a socket a `connect` handler took over)
 * can raise an unhandled error.
 */
export function gateConnections(server: Server, options: GateOptions): void {
  const handlers = server.listeners('connection') as Array<(socket: Socket) => void>;
  const handle = handlers[0];
  if (handlers.length !== 1 || handle === undefined) throw new Error(`expected node:http's one connection listener, found ${handlers.length}`);
  server.removeAllListeners('connection');
  const counts = new ConnectionCounts(options);
  server.on('connection', (socket: Socket) => {
    socket.on('error', ignore);
    const release = counts.admit(socket.remoteAddress ?? '');
    if (!release) {
      options.onConnection?.('refused');
      answerAndClose(socket, options.refusal);
      return;
    }
    options.onConnection?.('opened');
    socket.once('close', () => {
      release();
      options.onConnection?.('closed');
    });
    handle.call(server, socket);
  });
}

/** Who holds how many connections: the cap, the loopback reserve and the per-address cap in one place. */
export class ConnectionCounts {
  readonly #options: GateOptions;
  #open = 0;
  #reserved = 0;
  readonly #perAddress = new Map<string, number>();
  #atCap = false;

  constructor(options: GateOptions) {
    this.#options = options;
  }

  /** Counts a new connection from `address`; returns its release, or undefined when it must be refused. */
  admit(address: string): (() => void) | undefined {
    // A socket that closed before it was handled has no address: never loopback.
    const loopback = address !== '' && isLoopback(address);
    const perAddress = this.#options.maxPerAddress;
    const held = this.#perAddress.get(address) ?? 0;
    if (!loopback && perAddress !== undefined && held >= perAddress) return this.#refused();
    let pool: 'open' | 'reserved';
    if (this.#open < this.#options.maxConnections) pool = 'open';
    else if (loopback && this.#reserved < (this.#options.loopbackReserve ?? 0)) pool = 'reserved';
    else return this.#refused();
    if (pool === 'open') this.#open += 1;
    else this.#reserved += 1;
    this.#perAddress.set(address, held + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (pool === 'open') this.#open -= 1;
      else this.#reserved -= 1;
      const left = (this.#perAddress.get(address) ?? 1) - 1;
      if (left > 0) this.#perAddress.set(address, left);
      else this.#perAddress.delete(address);
      if (this.#atCap && this.#open <= Math.floor(this.#options.maxConnections * 0.9)) this.#saturated(false);
    };
  }

  #refused(): undefined {
    this.#saturated(true);
    return undefined;
  }

  #saturated(now: boolean): void {
    if (now === this.#atCap) return;
    this.#atCap = now;
    this.#options.onSaturated?.(now);
  }
}

/**
 * Sends a final raw answer and closes: what the client still sends is read and dropped (so the close
 * is a clean FIN, not a reset that could destroy the answer in flight). The socket goes away by itself
 * once the answer is out and the client closed its side too, and after LINGER_MS whatever the client does.
 */
export function answerAndClose(socket: Duplex, raw: string): void {
  socket.on('error', ignore);
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const timer = setTimeout(() => socket.destroy(), LINGER_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  socket.end(raw);
  socket.resume();
}

/**
 * Cuts a connection with a reset (RST), so a client that stopped reading gets no orderly end. A
 * TLS socket's handle cannot be reset (Node throws), so it is destroyed instead: the peer listener's
 * connections are TLS.
 */
export function resetSocket(socket: Socket): void {
  try {
    socket.resetAndDestroy();
  } catch {
    socket.destroy();
  }
}
