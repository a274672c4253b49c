import { type Server, createServer } from 'node:http';
import { type GuardEvents, type ListenerLimits, answerAndClose, checkingInterval, guardServer } from './http/guard.ts';
import { rawResponse } from './http/respond.ts';

export interface HealthChecks {
  /** Listener up and cache index usable. Upstream reachability is deliberately NOT part of it. */
  ready(): { ok: boolean; reason?: string };
  /** Prometheus exposition. */
  metrics(): Promise<{ contentType: string; body: string }>;
}

/** Prometheus scrapes every 15-60 s and kubelet probes every few seconds: no reason to keep idle connections long. */
const KEEP_ALIVE_MS = 5_000;
const MAX_REQUESTS_PER_CONNECTION = 1_000;
/** A scraper or probe asks one thing at a time. */
const MAX_PIPELINED = 4;
/** Prometheus pairs, a kubelet: no client elsewhere in the cluster needs more connections than this. */
const MAX_PER_ADDRESS = 8;
/** Kept for the kubelet's probes on 127.0.0.1, whatever clients elsewhere hold. */
const LOOPBACK_RESERVE = 8;

/**
 * `/healthz` (the process serves), `/readyz` and `/metrics` on the metrics address. Nothing secret is
 * exposed here. The port is usually reachable from the whole cluster (Prometheus scrapes it), so it is
 * bounded like the mirror port: a connection cap, request, keep-alive and send timeouts.
 */
export function createHealthServer(checks: HealthChecks, limits: ListenerLimits, events?: GuardEvents): Server {
  const scrape = shared(() => checks.metrics());
  const server = createServer({ maxHeaderSize: 8 * 1024, connectionsCheckingInterval: checkingInterval(limits.requestTimeoutMs) }, (req, res) => {
    req.resume();
    const path = (req.url ?? '').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      return;
    }
    if (path === '/readyz') {
      const state = checks.ready();
      res.writeHead(state.ok ? 200 : 503, { 'content-type': 'text/plain' }).end(state.ok ? 'ready\n' : `not ready: ${state.reason ?? ''}\n`);
      return;
    }
    if (path === '/metrics') {
      scrape().then(
        ({ contentType, body }) => res.writeHead(200, { 'content-type': contentType }).end(body),
        () => res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n'),
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  });
  // No tunnels here either; node:http closes a CONNECT without a listener, this answers it first.
  server.on('connect', (_req, socket) => answerAndClose(socket, plain(405, 'CONNECT is not supported\n')));
  guardServer(server, {
    ...limits,
    keepAliveTimeoutMs: KEEP_ALIVE_MS,
    maxRequestsPerSocket: MAX_REQUESTS_PER_CONNECTION,
    maxPipelined: MAX_PIPELINED,
    maxPerAddress: MAX_PER_ADDRESS,
    loopbackReserve: LOOPBACK_RESERVE,
    refusal: plain(503, `too many connections to the metrics port (metrics_max_connections = ${limits.maxConnections})\n`, { 'retry-after': '1' }),
    clientErrorAnswer: (code) => (code === 'ERR_HTTP_REQUEST_TIMEOUT' ? plain(408, 'request not received in time\n') : code === 'HPE_HEADER_OVERFLOW' ? plain(431, 'headers too large\n') : plain(400, 'malformed HTTP request\n')),
    ...(events ? { events } : {}),
  });
  return server;
}

/**
 * `run`, shared while it runs: callers meanwhile get the same promise. Rendering the metrics costs a
 * few milliseconds of the one thread that also serves pulls; scrapes arriving together render once.
 * A scrape after it settled renders afresh (a scrape must never see stale counters).
 */
function shared<T>(run: () => Promise<T>): () => Promise<T> {
  let running: Promise<T> | undefined;
  return () => {
    if (running) return running;
    const current = run();
    running = current;
    const done = (): void => {
      if (running === current) running = undefined;
    };
    current.then(done, done);
    return current;
  };
}

/** A plain-text raw HTTP/1.1 answer that closes the connection. */
function plain(status: number, body: string, headers: Record<string, string> = {}): string {
  return rawResponse(status, { ...headers, 'content-type': 'text/plain' }, body);
}
