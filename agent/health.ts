import { type Server, createServer } from 'node:http';

export interface HealthChecks {
  /** Listener up and cache index usable. Upstream reachability is deliberately NOT part of it. */
  ready(): { ok: boolean; reason?: string };
}

/** `/healthz` (the process serves) and `/readyz` on the metrics address. */
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
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  });
}
