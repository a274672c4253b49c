import { readFile } from 'node:fs/promises';
import { type IncomingMessage, type ServerResponse, createServer as createHttpServer } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { closeServer, listenLoopback } from '../../test/fixtures/http-server.ts';
import { makeTestCa } from '../../test/fixtures/tls-registry.ts';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import { parseDestinations } from '../config/destinations.ts';
import { UpstreamClient } from './client.ts';
import { DestinationPolicy } from './destination-policy.ts';
import { DirectRoute } from './routes.ts';

// The agent's own credentials (auth = "agent") go to a token realm only over the upstream's scheme
// or a stronger one: an https upstream naming an http:// realm gets asked without them, and the
// admin is told why, once.

const CREDENTIALS = { username: 'agent-user', password: 'agent-secret' };
const BASIC = `Basic ${Buffer.from('agent-user:agent-secret').toString('base64')}`;

interface Seen {
  readonly path: string;
  readonly authorization: string | undefined;
}

let dir: string;
let httpsServer: ReturnType<typeof createHttpsServer>;
let httpServer: ReturnType<typeof createHttpServer>;
let httpsOrigin: string;
let httpOrigin: string;
let caPem: string;
let caFile: string;
/** Which realm the https upstream names in its challenge. */
let realm: string;
const upstreamSeen: Seen[] = [];
const httpTokenSeen: Seen[] = [];
const clients: UpstreamClient[] = [];

/** A token endpoint answering every request with a token bound to nothing; records the Authorization it got. */
function tokenEndpoint(seen: Seen[], req: IncomingMessage, res: ServerResponse): void {
  seen.push({ path: req.url ?? '', authorization: req.headers.authorization });
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ token: 'issued', expires_in: 300 }));
}

function client(): { client: UpstreamClient; warnings: Array<{ fields: object; message: string }> } {
  const warnings: Array<{ fields: object; message: string }> = [];
  const base = new URL(httpsOrigin);
  const policy = new DestinationPolicy({ registry: 'secure.test', upstream: base, route: 'direct', allowed: parseDestinations(['127.0.0.0/8']) });
  const made = new UpstreamClient({
    registry: 'secure.test',
    base,
    credentials: CREDENTIALS,
    auth: 'agent',
    route: new DirectRoute(5_000, { file: caFile, pem: caPem }, policy),
    log: { warn: (fields, message) => warnings.push({ fields, message }) },
  });
  clients.push(made);
  return { client: made, warnings };
}

beforeAll(async () => {
  dir = await makeTempDir('rpa-realm-credentials');
  const ca = await makeTestCa(dir);
  caFile = ca.caFile;
  caPem = await readFile(ca.caFile, 'utf8');
  httpsServer = createHttpsServer({ key: await readFile(ca.keyFile), cert: await readFile(ca.certFile) }, (req, res) => {
    if (req.url?.startsWith('/token')) return tokenEndpoint(upstreamSeen, req, res);
    upstreamSeen.push({ path: req.url ?? '', authorization: req.headers.authorization });
    if (req.headers.authorization === 'Bearer issued') {
      res.end('manifest');
      return;
    }
    res.writeHead(401, { 'www-authenticate': `Bearer realm="${realm}",service="secure.test"` });
    res.end();
  });
  httpsOrigin = `https://127.0.0.1:${await listenLoopback(httpsServer)}`;
  httpServer = createHttpServer((req, res) => tokenEndpoint(httpTokenSeen, req, res));
  httpOrigin = `http://127.0.0.1:${await listenLoopback(httpServer)}`;
});

beforeEach(() => {
  upstreamSeen.length = 0;
  httpTokenSeen.length = 0;
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await Promise.all([httpsServer && closeServer(httpsServer), httpServer && closeServer(httpServer)]);
  if (dir) await removeTempDir(dir);
});

describe('agent credentials and the token realm scheme', () => {
  it('an https upstream never sends them to an http:// realm: asked without them, with one warning saying why', async () => {
    realm = `${httpOrigin}/token`;
    const { client: made, warnings } = client();
    for (const repository of ['team/app', 'team/other']) {
      const response = await made.request('GET', `/v2/${repository}/manifests/1.0`, `repository:${repository}:pull`);
      expect(response.status).toBe(200);
      expect(await response.body.text()).toBe('manifest');
    }
    // Two scopes, two token requests, no credentials on either.
    expect(httpTokenSeen.map((s) => s.authorization)).toEqual([undefined, undefined]);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.message).toMatch(/plain http:\/\/ while the upstream is https:\/\/.*without the agent credentials/);
    expect(warnings[0]?.fields).toMatchObject({ registry: 'secure.test', realm: `${httpOrigin}/token`, upstream: httpsOrigin });
    expect(JSON.stringify(warnings)).not.toContain('agent-secret');
  });

  it('an https realm gets them', async () => {
    realm = `${httpsOrigin}/token`;
    const { client: made, warnings } = client();
    const response = await made.request('GET', '/v2/team/app/manifests/1.0', 'repository:team/app:pull');
    expect(response.status).toBe(200);
    await response.body.dump();
    expect(upstreamSeen.filter((s) => s.path.startsWith('/token')).map((s) => s.authorization)).toEqual([BASIC]);
    expect(warnings).toEqual([]);
  });
});
