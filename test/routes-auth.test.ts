import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type InProcessAgent, startAgent } from './fixtures/agent.ts';
import { type ConnectivityProxy, type OAuthServer, startConnectivityProxy, startOAuthServer } from './fixtures/connectivity-proxy.ts';
import { type ContainerdHandle, startContainerd } from './fixtures/containerd.ts';
import { type TestImage, makeImage, pushImage } from './fixtures/image.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { type TinyproxyHandle, startTinyproxy } from './fixtures/tinyproxy.ts';
import { type TokenRegistry, startTokenRegistry } from './fixtures/token-registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const REGISTRY = 'registry.corp.example:5000';
const VIRTUAL = 'registry.virtual:5000';
const alice = { username: 'alice', password: 'wonder land' };

function basic(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

async function get(url: string, headers: Record<string, string> = {}) {
  const response = await request(url, { headers });
  const body = Buffer.from(await response.body.arrayBuffer());
  return { status: response.statusCode, headers: response.headers, body, json: () => JSON.parse(body.toString()) as { errors: Array<{ code: string; message: string; detail?: Record<string, unknown> }> } };
}

describe('connectivity-proxy route, passthrough auth, private content in the cache', () => {
  let dir: string;
  let registry: RegistryHandle;
  let cp: ConnectivityProxy;
  let agent: InProcessAgent;
  let containerd: ContainerdHandle;
  let image: TestImage;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-cp');
    await Promise.all([
      startRegistry({ auth: alice }).then((r) => (registry = r)),
      startContainerd().then((c) => (containerd = c)),
      makeImage({ layers: 2, layerBytes: 128 * 1024 }).then((i) => (image = i)),
    ]);
    await pushImage(registry.url, 'team/app', 'v1', image, alice);
    cp = await startConnectivityProxy({ virtualHosts: { [VIRTUAL]: registry.url }, locations: { 'loc-1': 'connected' } });
    agent = await startAgent({
      dir,
      manageHosts: true,
      connectivityProxy: { url: cp.url, locationId: 'loc-1' },
      mirrors: [{ registry: REGISTRY, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy' }],
    });
  });

  afterAll(async () => {
    await agent?.stop();
    await Promise.all([containerd?.stop(), cp?.stop()]);
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('containerd pulls with its pull secret through agent → Connectivity Proxy → registry', async () => {
    const result = await containerd.pull(`${REGISTRY}/team/app:v1`, { hostsDir: join(dir, 'certs.d'), user: `${alice.username}:${alice.password}` });
    expect(result.code, result.stderr).toBe(0);
    const forwarded = cp.requests.filter((r) => r.status === 200);
    expect(forwarded.length).toBeGreaterThan(0);
    for (const r of cp.requests) {
      expect(r.target.startsWith(`http://${VIRTUAL}/v2/`)).toBe(true);
      expect(r.locationId).toBe('loc-1');
    }
    const logs = JSON.stringify(agent.logs);
    expect(logs).not.toContain(alice.password);
    expect(logs).not.toContain(basic(alice.username, alice.password).slice(6));
  });

  it('serves cached private content only to a credential upstream accepts', async () => {
    const layer = image.layers[0]!;
    const url = `${agent.url}/v2/team/app/blobs/${layer.digest}?ns=${REGISTRY}`;
    const anonymous = await get(url);
    expect(anonymous.status).toBe(401);
    expect(String(anonymous.headers['www-authenticate'])).toMatch(/^Basic/);
    expect(anonymous.body.length).toBeLessThan(1000);
    const wrong = await get(url, { authorization: basic(alice.username, 'guess') });
    expect(wrong.status).toBe(401);
    const right = await get(url, { authorization: basic(alice.username, alice.password) });
    expect(right.status).toBe(200);
    expect(sha256(right.body)).toBe(layer.digest);
    expect(agent.requests.at(-1)?.outcome.cache).toBe('hit');
    const manifest = await get(`${agent.url}/v2/team/app/manifests/v1?ns=${REGISTRY}`);
    expect(manifest.status).toBe(401);
  });

  it('while the Cloud Connector is disconnected: serves the accepted credential from cache, refuses the rest', async () => {
    const layer = image.layers[1]!;
    const url = `${agent.url}/v2/team/app/blobs/${layer.digest}?ns=${REGISTRY}`;
    cp.setLocation('loc-1', 'disconnected');
    try {
      const right = await get(url, { authorization: basic(alice.username, alice.password) });
      expect(right.status).toBe(200);
      expect(sha256(right.body)).toBe(layer.digest);
      const none = await get(url);
      expect(none.status).toBe(401);
      expect(String(none.headers['www-authenticate'])).toMatch(/^Basic/);
      const wrong = await get(url, { authorization: basic(alice.username, 'guess') });
      expect(wrong.status).toBe(401);
      expect(wrong.body.includes(right.body.subarray(0, 64))).toBe(false);
      const pulled = await containerd.pull(`${REGISTRY}/team/app:v1`, { hostsDir: join(dir, 'certs.d'), namespace: 'offline', user: `${alice.username}:${alice.password}` });
      expect(pulled.code, pulled.stderr).toBe(0);
      const refused = await containerd.pull(`${REGISTRY}/team/app:v1`, { hostsDir: join(dir, 'certs.d'), namespace: 'offline-anon' });
      expect(refused.code).not.toBe(0);
      // An uncached blob cannot be had: the OCI error names the cause and the fix.
      const missing = await get(`${agent.url}/v2/team/app/blobs/sha256:${'0'.repeat(64)}?ns=${REGISTRY}`, { authorization: basic(alice.username, alice.password) });
      expect(missing.status).toBe(502);
      const error = missing.json().errors[0]!;
      expect(error.code).toBe('UNAVAILABLE');
      expect(error.detail?.['reason']).toBe('cp_no_cloud_connector');
      expect(error.message).toMatch(/Cloud Connector/);
      expect(agent.logs.some((l) => l['msg'] === 'upstream failing' && l['cause'] === 'cp_no_cloud_connector')).toBe(true);
    } finally {
      cp.setLocation('loc-1', 'connected');
    }
  });
});

describe('connectivity-proxy non-trusted mode: OAuth token as Proxy-Authorization, refreshed once on 407', () => {
  let dir: string;
  let registry: RegistryHandle;
  let cp: ConnectivityProxy;
  let oauth: OAuthServer;
  let agent: InProcessAgent;
  const revoked = new Set<string>();
  let refuseAll = false;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-cp-oauth');
    registry = await startRegistry({ auth: alice });
    oauth = await startOAuthServer({ clientId: 'sb-agent', clientSecret: 'client secret!' });
    cp = await startConnectivityProxy({
      virtualHosts: { [VIRTUAL]: registry.url },
      trusted: false,
      isValidToken: (token) => !refuseAll && !revoked.has(token) && oauth.isValidToken(token),
    });
    agent = await startAgent({
      dir,
      connectivityProxy: { url: cp.url, tokenUrl: oauth.url, clientId: 'sb-agent', clientSecret: 'client secret!' },
      mirrors: [{ registry: REGISTRY, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy', username: alice.username, password: alice.password }],
    });
  });

  afterAll(async () => {
    await agent?.stop();
    await Promise.all([cp?.stop(), oauth?.stop()]);
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('sends the cached token, and on 407 fetches a new one exactly once', async () => {
    const image = await makeImage({ layers: 2, layerBytes: 4096 });
    await pushImage(registry.url, 'team/app', 'v1', image, alice);
    const first = await get(`${agent.url}/v2/team/app/blobs/${image.layers[0]!.digest}`);
    expect(first.status).toBe(200);
    expect(oauth.issued).toHaveLength(1);
    expect(cp.requests.every((r) => r.proxyAuthorization === `Bearer ${oauth.issued[0]}`)).toBe(true);
    revoked.add(oauth.issued[0]!);
    const second = await get(`${agent.url}/v2/team/app/blobs/${image.layers[1]!.digest}`);
    expect(second.status).toBe(200);
    expect(sha256(second.body)).toBe(image.layers[1]!.digest);
    expect(oauth.issued).toHaveLength(2);
    expect(cp.requests.filter((r) => r.status === 407)).toHaveLength(1);
    const logs = JSON.stringify(agent.logs);
    for (const token of oauth.issued) expect(logs).not.toContain(token);
    expect(logs).not.toContain('client secret!');
  });

  it('explains a 407 it cannot fix: the OCI error names the token as the cause and the fix', async () => {
    refuseAll = true;
    try {
      const before = cp.requests.length;
      const response = await get(`${agent.url}/v2/team/app/manifests/sha256:${'1'.repeat(64)}`);
      expect(response.status).toBe(502);
      const error = response.json().errors[0]!;
      expect(error.detail?.['reason']).toBe('cp_auth_failed');
      expect(String(error.detail?.['fix'])).toMatch(/token_url|client_id/);
      // One refresh, not a loop.
      expect(cp.requests.slice(before).filter((r) => r.status === 407)).toHaveLength(2);
    } finally {
      refuseAll = false;
    }
  });
});

describe('token auth (realm on another host:port) through the Connectivity Proxy, passthrough', () => {
  let dir: string;
  let tokens: TokenRegistry;
  let cp: ConnectivityProxy;
  let cpHosts: Record<string, string>;
  let cpPort: number;
  let agent: InProcessAgent;
  let containerd: ContainerdHandle;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-token');
    await Promise.all([
      startTokenRegistry({ users: { [alice.username]: alice.password }, publicRepositories: ['pub/app'] }).then((t) => (tokens = t)),
      startContainerd().then((c) => (containerd = c)),
    ]);
    const image = await makeImage({ layers: 2, layerBytes: 64 * 1024 });
    await tokens.push('priv/app', 'v1', image);
    await tokens.push('pub/app', 'v1', image);
    const realm = new URL(tokens.tokenServer.url);
    cpHosts = { [VIRTUAL]: tokens.registry.url, [realm.host]: realm.origin };
    cp = await startConnectivityProxy({ virtualHosts: cpHosts });
    cpPort = cp.port;
    agent = await startAgent({
      dir,
      manageHosts: true,
      connectivityProxy: { url: cp.url },
      mirrors: [{ registry: REGISTRY, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy', repositoryPrefix: 'priv' }],
    });
  });

  afterAll(async () => {
    await agent?.stop();
    await Promise.all([containerd?.stop(), cp?.stop()]);
    await tokens?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('containerd gets its token from the agent, which forwards the OAuth2 POST to the real realm', async () => {
    // repository_prefix = "priv": the image "app" is "priv/app" upstream, and scopes are mapped both ways.
    const result = await containerd.pull(`${REGISTRY}/app:v1`, { hostsDir: join(dir, 'certs.d'), user: `${alice.username}:${alice.password}` });
    expect(result.code, result.stderr).toBe(0);
    const posts = tokens.tokenServer.requests.filter((r) => r.method === 'POST');
    expect(posts.length).toBeGreaterThan(0);
    expect(posts[0]!.form?.['scope']).toBe('repository:priv/app:pull');
    expect(posts[0]!.form?.['username']).toBe(alice.username);
    // The token request went through the Connectivity Proxy like everything else.
    expect(cp.requests.some((r) => r.target.startsWith(tokens.tokenServer.url))).toBe(true);
  });

  it("keeps containerd's fallback working: POST answered 405, then GET with Basic", async () => {
    tokens.tokenServer.setPostMode('405');
    tokens.tokenServer.reset();
    const result = await containerd.pull(`${REGISTRY}/app:v1`, { hostsDir: join(dir, 'certs.d'), namespace: 'fallback', user: `${alice.username}:${alice.password}` });
    expect(result.code, result.stderr).toBe(0);
    const methods = tokens.tokenServer.requests.map((r) => `${r.method} ${r.status}`);
    expect(methods).toContain('POST 405');
    expect(tokens.tokenServer.requests.some((r) => r.method === 'GET' && r.hadBasic && r.status === 200)).toBe(true);
    tokens.tokenServer.setPostMode('supported');
  });

  it('while the tunnel is down, containerd still gets a token (minted by the agent) for a credential the realm accepted', async () => {
    await cp.stop();
    try {
      const offline = await containerd.pull(`${REGISTRY}/app:v1`, { hostsDir: join(dir, 'certs.d'), namespace: 'offline', user: `${alice.username}:${alice.password}` });
      expect(offline.code, offline.stderr).toBe(0);
      const wrong = await containerd.pull(`${REGISTRY}/app:v1`, { hostsDir: join(dir, 'certs.d'), namespace: 'offline-wrong', user: `${alice.username}:nope` });
      expect(wrong.code).not.toBe(0);
    } finally {
      cp = await startConnectivityProxy({ virtualHosts: cpHosts, port: cpPort });
    }
  });

  it('refuses cached private content without credentials, and never contacts a realm it did not learn', async () => {
    const anonymous = await containerd.pull(`${REGISTRY}/app:v1`, { hostsDir: join(dir, 'certs.d'), namespace: 'anon' });
    expect(anonymous.code).not.toBe(0);
    const probe = await get(`${agent.url}/_token/${encodeURIComponent(REGISTRY)}/0123456789abcdef?scope=repository:app:pull`);
    expect(probe.status).toBe(404);
    const other = await get(`${agent.url}/_token/${encodeURIComponent('evil.example.com')}/0123456789abcdef`);
    expect(other.status).toBe(404);
  });
});

describe('http-proxy route through a real tinyproxy', () => {
  let dir: string;
  let registry: RegistryHandle;
  let proxy: TinyproxyHandle;
  let agent: InProcessAgent;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-httpproxy');
    registry = await startRegistry();
    proxy = await startTinyproxy();
    agent = await startAgent({ dir, mirrors: [{ registry: REGISTRY, upstream: registry.url, route: 'http-proxy', httpProxy: proxy.url }] });
  });

  afterAll(async () => {
    await agent?.stop();
    await proxy?.stop();
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('fetches manifests and blobs through the forward proxy', async () => {
    const image = await makeImage({ layers: 1, layerBytes: 300 * 1024 });
    await pushImage(registry.url, 'team/app', 'v1', image);
    const manifest = await get(`${agent.url}/v2/team/app/manifests/v1`);
    expect(manifest.status).toBe(200);
    expect(manifest.body.equals(image.manifest)).toBe(true);
    const blob = await get(`${agent.url}/v2/team/app/blobs/${image.layers[0]!.digest}`);
    expect(sha256(blob.body)).toBe(image.layers[0]!.digest);
    // tinyproxy writes its log line on its own schedule: wait for it rather than read once.
    await pollUntil(async () => (await proxy.requests()).some((r) => r.target.includes(`/v2/team/app/blobs/${image.layers[0]!.digest}`)), {
      timeoutMs: 10_000,
      what: 'tinyproxy logged the blob request',
    });
  });
});
