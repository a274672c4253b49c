import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { resetSocket } from './connection-gate.ts';

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

interface ConnectionState {
  /** A request of this connection is being answered (from its handler's start to its response's close). */
  active: boolean;
  /** That request and its response. */
  current: { readonly req: IncomingMessage; readonly res: ServerResponse } | undefined;
  /** Requests node:http already parsed from this connection (pipelining), waiting for their turn. */
  readonly waiting: Array<() => void>;
  /** Run once nothing is being answered (a parse error's answer after the responses under way). */
  idle: Array<() => void>;
  answered: boolean;
  /** Reset for pipelining too deep: what node:http still parses from its buffer is dropped. */
  cut: boolean;
}

/**
 * One request per connection at a time. node:http hands every pipelined request of a connection to
 * the handler at once: one connection pipelining 1,000 manifest GETs would run 1,000 handlers and
 * hold 1,000 bodies. HTTP/1.1 answers them in order anyway, so nothing is lost by starting the next
 * handler only once the previous response is done; and at most `maxWaiting` parsed requests may
 * wait per connection, beyond that the connection is reset (no HTTP client on the node pipelines
 * that deep; containerd does not pipeline at all).
 */
export class RequestQueue {
  readonly #connections = new WeakMap<Duplex, ConnectionState>();
  /** Connections with a response in progress, for the send watchdog. */
  readonly #busy = new Set<Socket>();
  readonly #maxWaiting: number;
  readonly #onOverflow: () => void;

  constructor(maxWaiting: number, onOverflow: () => void) {
    this.#maxWaiting = maxWaiting;
    this.#onOverflow = onOverflow;
  }

  /** Routes `server`'s request handlers (`request` and `checkExpectation`) through the queue. */
  install(server: Server): void {
    for (const event of ['request', 'checkExpectation'] as const) {
      const handlers = server.listeners(event) as Handler[];
      if (handlers.length === 0) continue;
      server.removeAllListeners(event);
      server.on(event, (req: IncomingMessage, res: ServerResponse) => this.#enqueue(req.socket as Socket, req, res, () => {
        for (const handler of handlers) handler.call(server, req, res);
      }));
    }
  }

  /** Connections with a response in progress. */
  busySockets(): Iterable<Socket> {
    return this.#busy;
  }

  /**
   * Runs `answer` once per connection, after the responses under way on it are done. When the
   * request being answered never arrived whole (its body stopped, or the client half-closed), its
   * handler waits for bytes that will not come: the connection is answered now, or cut when that
   * response already started.
   */
  whenIdle(socket: Duplex, answer: () => void): void {
    const state = this.#state(socket);
    if (state.answered) return;
    state.answered = true;
    const current = state.active ? state.current : undefined;
    if (current && !current.req.complete) {
      if (current.res.headersSent) socket.destroy();
      else answer();
      return;
    }
    if (state.active) state.idle.push(answer);
    else answer();
  }

  #enqueue(socket: Socket, req: IncomingMessage, res: ServerResponse, run: () => void): void {
    const state = this.#state(socket);
    if (state.cut) return;
    const start = (): void => {
      if (socket.destroyed) return;
      state.active = true;
      state.current = { req, res };
      this.#busy.add(socket);
      res.once('close', () => this.#done(socket, state));
      run();
    };
    if (!state.active) {
      start();
      return;
    }
    if (state.waiting.length >= this.#maxWaiting) {
      this.#onOverflow();
      state.cut = true;
      state.waiting.length = 0;
      resetSocket(socket);
      return;
    }
    state.waiting.push(start);
  }

  #done(socket: Socket, state: ConnectionState): void {
    state.active = false;
    state.current = undefined;
    this.#busy.delete(socket);
    const next = state.waiting.shift();
    if (next && !socket.destroyed) {
      next();
      return;
    }
    state.waiting.length = 0;
    const idle = state.idle;
    state.idle = [];
    for (const run of idle) run();
  }

  #state(socket: Duplex): ConnectionState {
    let state = this.#connections.get(socket);
    if (!state) {
      state = { active: false, current: undefined, waiting: [], idle: [], answered: false, cut: false };
      this.#connections.set(socket, state);
    }
    return state;
  }
}
