import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

/** What a guarded listener tells its owner (metrics, logs). */
export interface GuardEvents {
  /** A connection opened, closed, or was refused because the listener was at its cap. */
  connection?(event: 'opened' | 'closed' | 'refused'): void;
  /** A connection was cut because its request did not arrive within `requestTimeoutMs`. */
  requestTimeout?(): void;
  /** A connection was cut because its client took no byte of a response for `sendTimeoutMs`. */
  sendTimeout?(): void;
  /** The listener reached its cap (`true`) or is well below it again (`false`); called on change only. */
  saturated?(atCap: boolean): void;
}

export interface GuardOptions {
  /** Connections served at once; the next one is answered with `refusal` and closed. */
  readonly maxConnections: number;
  /** A whole request (line, headers, body) must arrive within this; new idle connections too. */
  readonly requestTimeoutMs: number;
  /** A response the client takes no byte of for this long is cut. */
  readonly sendTimeoutMs: number;
  /** Idle time allowed between requests on a kept-alive connection. */
  readonly keepAliveTimeoutMs: number;
  /** Requests per connection; after that node:http answers 503 and closes. */
  readonly maxRequestsPerSocket: number;
  /** The raw HTTP answer (status line, headers, body) for a connection over the cap. */
  readonly refusal: string;
  /** The raw HTTP answer for a request node:http could not parse or did not receive in time (its error code). */
  readonly clientErrorAnswer: (code: string | undefined) => string;
  readonly events?: GuardEvents;
}

/** How long a connection that got a final raw answer may linger before it is destroyed. */
export const LINGER_MS = 1_000;

const ignore = (): void => undefined;

/**
 * Bounds everything a client can hold of an HTTP listener: a connection cap answered (never hung), request
 * and keep-alive timeouts, requests per connection, and a send timeout. Every socket the server hands out
 * gets an error listener first, so that no client (a reset after a CONNECT answer, a connection cut
 * mid-response, a socket a `connect` handler took over) can raise an unhandled error; requests node:http
 * cannot parse get `clientErrorAnswer`, after the responses already under way on that connection.
 *
 * The cap sits in front of node:http's own connection handling (its one 'connection' listener is
 * wrapped), so a refused connection never gets a parser or a request, while the server keeps listening,
 * closing and timing its connections itself.
 */
export function guardServer(server: Server, options: GuardOptions): void {
  server.headersTimeout = options.requestTimeoutMs;
  server.requestTimeout = options.requestTimeoutMs;
  server.keepAliveTimeout = options.keepAliveTimeoutMs;
  server.maxRequestsPerSocket = options.maxRequestsPerSocket;
  const responses = new OpenResponses();
  const track = (req: IncomingMessage, res: ServerResponse): void => {
    responses.track(req.socket, res);
    res.setTimeout(options.sendTimeoutMs, () => onSendTimeout(req.socket, options.events));
  };
  server.prependListener('request', track);
  server.prependListener('checkExpectation', track);
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Duplex) => {
    if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') options.events?.requestTimeout?.();
    if (error.code === 'ECONNRESET' || !socket.writable) socket.destroy();
    else responses.whenIdle(socket, () => answerAndClose(socket, options.clientErrorAnswer(error.code)));
  });
  gateConnections(server, options);
}

/**
 * Responses still being written, per connection: a parse error on a pipelined connection must not
 * cut into them, its answer waits until they are done.
 */
class OpenResponses {
  readonly #open = new WeakMap<Duplex, { count: number; idle: Array<() => void> }>();
  readonly #answered = new WeakSet<Duplex>();

  track(socket: Duplex, res: ServerResponse): void {
    const entry = this.#open.get(socket) ?? { count: 0, idle: [] };
    entry.count += 1;
    this.#open.set(socket, entry);
    res.once('close', () => {
      entry.count -= 1;
      if (entry.count > 0) return;
      const idle = entry.idle;
      entry.idle = [];
      for (const run of idle) run();
    });
  }

  /** Runs `answer` once per connection, after the responses under way on it are done. */
  whenIdle(socket: Duplex, answer: () => void): void {
    if (this.#answered.has(socket)) return;
    this.#answered.add(socket);
    const entry = this.#open.get(socket);
    if (entry && entry.count > 0) entry.idle.push(answer);
    else answer();
  }
}

/**
 * node:http saw no progress on a connection mid-answer for the send timeout: no byte read and no
 * write completed (the agent writes blobs in chunks of at most 1 MiB, so a client slower than a chunk
 * per send timeout counts as stalled). With bytes queued for the client, the client stopped reading:
 * the connection is reset (the kernel drops what it still holds for it) and the response's file lease
 * goes with it. With nothing queued, the agent itself is waiting (upstream, a download slot), which its
 * own timeouts bound: not the client's doing, and the timer runs again from the next write.
 */
function onSendTimeout(socket: Socket, events: GuardEvents | undefined): void {
  if (socket.destroyed || socket.writableLength === 0) return;
  events?.sendTimeout?.();
  socket.resetAndDestroy();
}

function gateConnections(server: Server, options: GuardOptions): void {
  const handlers = server.listeners('connection') as Array<(socket: Socket) => void>;
  const handle = handlers[0];
  if (handlers.length !== 1 || handle === undefined) throw new Error(`expected node:http's one connection listener, found ${handlers.length}`);
  server.removeAllListeners('connection');
  let open = 0;
  let atCap = false;
  const saturated = (now: boolean): void => {
    if (now === atCap) return;
    atCap = now;
    options.events?.saturated?.(now);
  };
  server.on('connection', (socket: Socket) => {
    socket.on('error', ignore);
    if (open >= options.maxConnections) {
      saturated(true);
      options.events?.connection?.('refused');
      answerAndClose(socket, options.refusal);
      return;
    }
    open += 1;
    options.events?.connection?.('opened');
    socket.once('close', () => {
      open -= 1;
      options.events?.connection?.('closed');
      if (open <= Math.floor(options.maxConnections * 0.9)) saturated(false);
    });
    handle.call(server, socket);
  });
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
