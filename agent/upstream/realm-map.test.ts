import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type ConnectivityProxy, startConnectivityProxy } from '../../test/fixtures/connectivity-proxy.ts';
import { UpstreamClient } from './client.ts';
import { DestinationPolicy } from './destination-policy.ts';
import { UpstreamError } from './errors.ts';
import { ConnectivityProxyRoute } from './routes.ts';
import { rejection } from '../../test/fixtures/thrown.ts';

// realm_map on the connectivity-proxy route, through the Connectivity Proxy double: a registry
// whose challenge names an https realm on the real host; the token server is exposed as an http://
// virtual host. Only a realm the registry named, at the mapped origin, is ever contacted.

const VIRTUAL = 'registry.virtual:5000';
const TOKEN_VIRTUAL = 'auth.virtual:80';
const REALM_ORIGIN = 'https://auth.corp.example';
const MAP = { [REALM_ORIGIN]: 'http://auth.virtual' };
const CREDENTIALS = { username: 'alice', password: 'wonder land' };
const BASIC = `Basic ${Buffer.from(`${CREDENTIALS.username}:${CREDENTIALS.password}`).toString('base64')}`;

interface Seen {
  method: string;
  url: string;
  authorization: string | undefined;
  body: string;
}

let registry: Server;
let tokenServer: Server;
let cp: ConnectivityProxy;
/** The realm the registry announces; tests change it. */
let realm = `${REALM_ORIGIN}/token`;
const tokenRequests: Seen[] = [];
const clients: UpstreamClient[] = [];

async function listen(handler: (req: IncomingMessage, res: ServerResponse, body: string) => void): Promise<Server> {
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk: Buffer) => (body += chunk.toString()));
    req.on('end', () => handler(req, res, body));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

const originOf = (server: Server) => `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

function client(realmMap: Record<string, string> = MAP): UpstreamClient {
  const destinations = new DestinationPolicy({ registry: 'registry.corp.example', upstream: new URL(`http://${VIRTUAL}`), route: 'connectivity-proxy' });
  const route = new ConnectivityProxyRoute({ proxy: new URL(cp.url), locationId: undefined, tokens: undefined, connectTimeoutMs: 5_000, destinations });
  const c = new UpstreamClient({ registry: 'registry.corp.example', base: new URL(`http://${VIRTUAL}`), credentials: CREDENTIALS, route, auth: 'agent', realmMap });
  clients.push(c);
  return c;
}

const failureOf = (promise: Promise<unknown>): Promise<UpstreamError> => rejection(UpstreamError, promise);

beforeAll(async () => {
  tokenServer = await listen((req, res, body) => {
    tokenRequests.push({ method: req.method ?? '', url: req.url ?? '', authorization: req.headers.authorization, body });
    const ok = req.headers.authorization === BASIC || new URLSearchParams(body).get('password') === CREDENTIALS.password;
    res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json' });
    res.end(ok ? '{"token":"tok-1","expires_in":300}' : '{}');
  });
  registry = await listen((req, res) => {
    if (req.headers.authorization === 'Bearer tok-1') {
      res.writeHead(200, { 'content-type': 'text/plain' }).end('ok');
      return;
    }
    res.writeHead(401, { 'www-authenticate': `Bearer realm="${realm}",service="rpa-test",scope="repository:team/app:pull"` }).end();
  });
  cp = await startConnectivityProxy({ virtualHosts: { [VIRTUAL]: originOf(registry), [TOKEN_VIRTUAL]: originOf(tokenServer) } });
});

beforeEach(() => {
  realm = `${REALM_ORIGIN}/token`;
  tokenRequests.length = 0;
  cp.reset();
});

afterAll(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await cp?.stop();
  for (const server of [registry, tokenServer]) {
    server?.closeAllConnections();
    await new Promise((resolve) => server?.close(resolve));
  }
});

describe('realm_map (auth = "agent")', () => {
  it('fetches the token at the mapped origin with the realm path and query, through the proxy in http:// absolute form', async () => {
    const response = await client().request('GET', '/v2/team/app/manifests/v1', 'repository:team/app:pull');
    expect(response.status).toBe(200);
    await response.body.dump();
    expect(tokenRequests).toEqual([
      { method: 'GET', url: '/token?service=rpa-test&scope=repository%3Ateam%2Fapp%3Apull', authorization: BASIC, body: '' },
    ]);
    expect(cp.requests.map((r) => `${r.method} ${r.target} ${r.status}`)).toEqual([
      `GET http://${VIRTUAL}/v2/team/app/manifests/v1 401`,
      'GET http://auth.virtual/token?service=rpa-test&scope=repository%3Ateam%2Fapp%3Apull 200',
      `GET http://${VIRTUAL}/v2/team/app/manifests/v1 200`,
    ]);
  });

  it('refuses a realm the map does not name, with a fix that names realm_map and the realm origin; nothing is sent for it', async () => {
    realm = 'https://other.corp.example/token';
    const error = await failureOf(client().request('GET', '/v2/team/app/manifests/v1', 'repository:team/app:pull'));
    expect(error.upstreamCause).toBe('cp_https_refused');
    expect(error.diagnosis?.cause).toContain('token realm https://other.corp.example/token is an https:// URL');
    expect(error.diagnosis?.fix).toContain(`mirror registry.corp.example's realm_map: [mirror.realm_map] "https://other.corp.example" = "http://<virtual-host>:<port>"`);
    expect(cp.requests.map((r) => r.target)).toEqual([`http://${VIRTUAL}/v2/team/app/manifests/v1`]);
    expect(tokenRequests).toEqual([]);
  });

  it('matches whole origins: another port of the same host is not mapped', async () => {
    realm = 'https://auth.corp.example:8443/token';
    const error = await failureOf(client().request('GET', '/v2/team/app/manifests/v1', 'repository:team/app:pull'));
    expect(error.upstreamCause).toBe('cp_https_refused');
    expect(tokenRequests).toEqual([]);
  });
});

describe('realm_map (passthrough token forwarding)', () => {
  it('forwards a GET for the learned realm to the mapped origin, same path and query, with the puller credential', async () => {
    const learned = new URL(`${REALM_ORIGIN}/token?scope=repository%3Ateam%2Fapp%3Apull&service=rpa-test`);
    const response = await client().forwardTokenRequest(learned, 'GET', { authorization: BASIC }, undefined);
    expect(response.status).toBe(200);
    expect(await response.body.json()).toEqual({ token: 'tok-1', expires_in: 300 });
    expect(response.url.href).toBe('http://auth.virtual/token?scope=repository%3Ateam%2Fapp%3Apull&service=rpa-test');
    expect(tokenRequests.map((r) => [r.method, r.url, r.authorization])).toEqual([['GET', '/token?scope=repository%3Ateam%2Fapp%3Apull&service=rpa-test', BASIC]]);
    expect(cp.requests.every((r) => r.target.startsWith('http://auth.virtual/') && r.rejected === undefined)).toBe(true);
  });

  it('forwards the OAuth2 POST form unchanged to the mapped origin', async () => {
    const form = 'grant_type=password&username=alice&password=wonder+land&service=rpa-test&scope=repository%3Ateam%2Fapp%3Apull';
    const response = await client().forwardTokenRequest(new URL(`${REALM_ORIGIN}/token`), 'POST', { 'content-type': 'application/x-www-form-urlencoded' }, Buffer.from(form));
    expect(response.status).toBe(200);
    await response.body.dump();
    expect(tokenRequests).toEqual([{ method: 'POST', url: '/token', authorization: undefined, body: form }]);
  });

  it('without a map the same realm is refused before anything is sent', async () => {
    const error = await failureOf(client({}).forwardTokenRequest(new URL(`${REALM_ORIGIN}/token`), 'GET', {}, undefined));
    expect(error.upstreamCause).toBe('cp_https_refused');
    expect(cp.requests).toEqual([]);
  });
});
