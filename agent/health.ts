import { type Server, createServer } from 'node:http';

export interface HealthChecks {
  /** Listener up and cache index usable. Upstream reachability is deliberately NOT part of it. */
  ready(): { ok: boolean; reason?: string };
  /** Prometheus exposition. */
  metrics(): Promise<{ contentType: string; body: string }>;
}

/** `/healthz` (the process serves), `/readyz` and `/metrics` on the metrics address. Nothing secret is exposed here. */
export function createHealthServer(checks: HealthChecks): Server {
  return createServer((req, res) => {
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
      checks.metrics().then(
        ({ contentType, body }) => res.writeHead(200, { 'content-type': contentType }).end(body),
        () => res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable\n'),
      );
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  });
}
