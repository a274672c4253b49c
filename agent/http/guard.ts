import type { Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { answerAndClose as answerAndCloseRaw, gateConnections, resetSocket } from './connection-gate.ts';
import { RequestQueue } from './request-queue.ts';
import { SendWatchdog } from './send-watchdog.ts';

export { LINGER_MS, answerAndClose } from './connection-gate.ts';

/** Why a guarded listener cut a connection. */
export type CutReason = 'request_timeout' | 'send_timeout' | 'pipelining';

/** What a guarded listener tells its owner (metrics, logs). */
export interface GuardEvents {
  /** A connection opened, closed, or was refused at the cap. */
  connection?(event: 'opened' | 'closed' | 'refused'): void;
  /** A connection was cut: its request did not arrive in time, its client stopped taking the answer, or it pipelined too deep. */
  cut?(reason: CutReason): void;
  /** The listener reached its cap (`true`) or is well below it again (`false`); called on change only. */
  saturated?(atCap: boolean): void;
}

/** What a listener's configuration sets of its guard; the rest is the listener's own. */
export interface ListenerLimits {
  readonly maxConnections: number;
  readonly requestTimeoutMs: number;
  readonly sendTimeoutMs: number;
}

export interface GuardOptions {
  /** Connections served at once; the next one is answered with `refusal` and closed. */
  readonly maxConnections: number;
  /** Connections one remote address may hold (loopback exempt). */
  readonly maxPerAddress?: number;
  /** Connections kept for loopback clients (the kubelet's probes) beyond the cap. */
  readonly loopbackReserve?: number;
  /** A whole request (line, headers, body) must arrive within this; new idle connections too. */
  readonly requestTimeoutMs: number;
  /** A client must take at least `minProgressBytes` of a response per this, or it is cut. */
  readonly sendTimeoutMs: number;
  /** Default MIN_PROGRESS_BYTES (1 MiB). */
  readonly minProgressBytes?: number;
  /** Idle time allowed between requests on a kept-alive connection. */
  readonly keepAliveTimeoutMs: number;
  /** Requests per connection; after that node:http answers 503 and closes. */
  readonly maxRequestsPerSocket: number;
  /** Parsed requests that may wait behind the one being answered on a connection (pipelining). */
  readonly maxPipelined: number;
  /** The raw HTTP answer (status line, headers, body) for a connection over the cap. */
  readonly refusal: string;
  /** The raw HTTP answer for a request node:http could not parse or did not receive in time (its error code). */
  readonly clientErrorAnswer: (code: string | undefined) => string;
  readonly events?: GuardEvents;
}

/**
 * How often node:http looks for connections past their request timeout (its `connectionsCheckingInterval`
 * option, read only when the server is created): a fraction of the timeout, at most every second.
 */
export function checkingInterval(requestTimeoutMs: number): number {
  return Math.max(50, Math.min(1_000, Math.floor(requestTimeoutMs / 4)));
}

/**
 * Bounds everything a client can hold of an HTTP listener: connections (a cap answered, never hung),
 * request and keep-alive timeouts, requests per connection, one request answered at a time per
 * connection with a bounded pipeline behind it, and a minimum pace at which a client must take its
 * answers. Requests node:http cannot parse get `clientErrorAnswer`, after the responses already
 * under way on that connection. Must be called after the request handlers are registered.
 */
export function guardServer(server: Server, options: GuardOptions): void {
  server.headersTimeout = options.requestTimeoutMs;
  server.requestTimeout = options.requestTimeoutMs;
  server.keepAliveTimeout = options.keepAliveTimeoutMs;
  server.maxRequestsPerSocket = options.maxRequestsPerSocket;
  const events = options.events;
  const queue = new RequestQueue(options.maxPipelined, () => events?.cut?.('pipelining'));
  queue.install(server);
  const watchdog = new SendWatchdog(
    () => queue.busySockets(),
    options.sendTimeoutMs,
    (socket) => {
      events?.cut?.('send_timeout');
      resetSocket(socket);
    },
    options.minProgressBytes,
  );
  server.once('close', () => watchdog.stop());
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Duplex) => {
    if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') events?.cut?.('request_timeout');
    if (error.code === 'ECONNRESET' || !socket.writable) socket.destroy();
    else queue.whenIdle(socket, () => answerAndCloseRaw(socket, options.clientErrorAnswer(error.code)));
  });
  gateConnections(server, {
    maxConnections: options.maxConnections,
    maxPerAddress: options.maxPerAddress,
    loopbackReserve: options.loopbackReserve,
    refusal: options.refusal,
    ...(events?.connection ? { onConnection: (event: 'opened' | 'closed' | 'refused') => events.connection?.(event) } : {}),
    ...(events?.saturated ? { onSaturated: (atCap: boolean) => events.saturated?.(atCap) } : {}),
  });
}
