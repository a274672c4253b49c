import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type InProcessAgent, startAgent } from './fixtures/agent.ts';
import { type ConnectivityProxy, type OAuthServer, startConnectivityProxy } from './fixtures/connectivity-proxy.ts';
import { type ContainerdHandle, startContainerd } from './fixtures/containerd.ts';
import { type CpStack, startCpStack } from './fixtures/cp-stack.ts';
import { sha256 } from './fixtures/digest.ts';
import { get } from './fixtures/http-client.ts';
import { parseBasic, sendJson } from './fixtures/http-server.ts';
import { type TestImage, makeImage, pushImage } from './fixtures/image.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type BasicAuth, type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { type ScriptedRegistry, startScriptedRegistry } from './fixtures/scripted-registry.ts';
import { type TinyproxyHandle, startTinyproxy } from './fixtures/tinyproxy.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';
import { type TokenRegistry, startTokenRegistry } from './fixtures/token-registry.ts';

const REGISTRY = 'registry.corp.example:5000';
const VIRTUAL = 'registry.virtual:5000';
const alice = { username: 'alice', password: 'wonder land' };
const bob = { username: 'bob', password: 'the builder' };

function basic(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

interface TokenPull {
  /** The agent's rewritten challenge. */
  challenge: string;
  /** The agent's token endpoint's answer. */
  tokenStatus: number;
  token: string | undefined;
  /** The content request with that token (0 when no token came back). */
  status: number;
  body: Buffer;
}

/**
 * containerd's token dance, step by step so every answer can be checked: ask the agent without a
 * credential (401 with a challenge naming the agent's token endpoint), fetch a token there (GET
 * with `user`'s Basic credential, like containerd's fallback), then ask again with that token.
 */
async function pullWithToken(url: string, user: BasicAuth): Promise<TokenPull> {
  const first = await get(url);
  expect(first.status).toBe(401);
  const challenge = String(first.headers['www-authenticate']);
  const param = (name: string): string => new RegExp(`${name}="([^"]*)"`).exec(challenge)?.[1] ?? '';
  const tokenUrl = new URL(param('realm'));
  tokenUrl.searchParams.set('service', param('service'));
  tokenUrl.searchParams.set('scope', param('scope'));
  const answer = await get(tokenUrl.href, { authorization: basic(user.username, user.password) });
  const token = answer.status === 200 ? (JSON.parse(answer.body.toString()) as { token?: string }).token : undefined;
  if (token === undefined) return { challenge, tokenStatus: answer.status, token, status: 0, body: Buffer.alloc(0) };
  const content = await get(url, { authorization: `Bearer ${token}` });
  return { challenge, tokenStatus: answer.status, token, status: content.status, body: content.body };
}

describe('connectivity-proxy route, passthrough auth, private content in the cache', () => {
  let dir: string;
  let registry: RegistryHandle;
  let cp: ConnectivityProxy;
  let agent: InProcessAgent;
  let containerd: ContainerdHandle;
  let image: TestImage;
  let stack: CpStack | undefined;

  beforeAll(async () => {
    await Promise.all([
      startRegistry({ auth: alice }).then((r) => (registry = r)),
      startContainerd().then((c) => (containerd = c)),
      makeImage({ layers: 2, layerBytes: 128 * 1024 }).then((i) => (image = i)),
    ]);
    await pushImage(registry.url, 'team/app', 'v1', image, alice);
    ({ dir, cp, agent } = stack = await startCpStack({
      dir: { name: 'rpa-cp' },
      virtualHosts: { [VIRTUAL]: registry.url },
      locations: { 'loc-1': 'connected' },
      locationId: 'loc-1',
      agent: { manageHosts: true, mirrors: [{ registry: REGISTRY, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy' }] },
    }));
  });

  afterAll(async () => {
    await stack?.stop();
    await Promise.all([containerd?.stop(), registry?.stop()]);
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
  let registry: RegistryHandle;
  let cp: ConnectivityProxy;
  let oauth: OAuthServer;
  let agent: InProcessAgent;
  let stack: CpStack | undefined;
  const revoked = new Set<string>();
  let refuseAll = false;

  beforeAll(async () => {
    registry = await startRegistry({ auth: alice });
    stack = await startCpStack({
      dir: { name: 'rpa-cp-oauth' },
      virtualHosts: { [VIRTUAL]: registry.url },
      oauth: { clientId: 'sb-agent', clientSecret: 'client secret!', accept: (token) => !refuseAll && !revoked.has(token) },
      agent: { mirrors: [{ registry: REGISTRY, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy', username: alice.username, password: alice.password }] },
    });
    ({ cp, agent } = stack);
    oauth = stack.oauth!;
  });

  afterAll(async () => {
    await stack?.stop();
    await registry?.stop();
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
  // The same upstream under a second name with a tiny max_stale: offline acceptance runs out.
  const SHORT_STALE = 'short-stale.corp.example:5000';
  const SHORT_STALE_MS = 300;
  let dir: string;
  let tokens: TokenRegistry;
  let cp: ConnectivityProxy;
  let cpHosts: Record<string, string>;
  let cpPort: number;
  let agent: InProcessAgent;
  let containerd: ContainerdHandle;
  let image: TestImage;
  let otherImage: TestImage;
  let stack: CpStack | undefined;

  beforeAll(async () => {
    await Promise.all([
      startTokenRegistry({
        users: { [alice.username]: alice.password, [bob.username]: bob.password },
        publicRepositories: ['pub/app'],
        // Like Docker Hub, the realm answers bob 200 for priv/app too, with an empty grant.
        access: { [bob.username]: ['priv/other/app'] },
      }).then((t) => (tokens = t)),
      startContainerd().then((c) => (containerd = c)),
      makeImage({ layers: 2, layerBytes: 64 * 1024 }).then((i) => (image = i)),
      makeImage({ layers: 1, layerBytes: 16 * 1024 }).then((i) => (otherImage = i)),
    ]);
    await tokens.push('priv/app', 'v1', image);
    await tokens.push('pub/app', 'v1', image);
    await tokens.push('priv/other/app', 'v1', otherImage);
    const realm = new URL(tokens.tokenServer.url);
    cpHosts = { [VIRTUAL]: tokens.registry.url, [realm.host]: realm.origin };
    ({ dir, cp, agent } = stack = await startCpStack({
      dir: { name: 'rpa-token' },
      virtualHosts: cpHosts,
      agent: {
        manageHosts: true,
        mirrors: [
          { registry: REGISTRY, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy', repositoryPrefix: 'priv' },
          { registry: SHORT_STALE, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy', repositoryPrefix: 'priv', maxStale: `${SHORT_STALE_MS}ms` },
        ],
      },
    }));
    cpPort = cp.port;
  });

  afterAll(async () => {
    await stack?.stop();
    // The tests restart the proxy on the same port: `cp` may be another one than the stack's.
    await Promise.all([containerd?.stop(), cp?.stop(), tokens?.stop()]);
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

  it('a realm 200 is not access: cached content goes offline only to credentials upstream accepted for that repository', async () => {
    const layer = image.layers[0]!;
    const privUrl = (registry: string): string => `${agent.url}/v2/app/blobs/${layer.digest}?ns=${registry}`;
    const otherUrl = `${agent.url}/v2/other/app/blobs/${otherImage.layers[0]!.digest}?ns=${REGISTRY}`;
    const neverTheBlob = (body: Buffer): void => {
      expect(body.length).toBeLessThan(1000);
      expect(body.includes(layer.bytes.subarray(0, 64))).toBe(false);
    };

    // Online. alice's token works upstream: her credential counts for "app" from now on.
    const aliceOnline = await pullWithToken(privUrl(REGISTRY), alice);
    expect(aliceOnline.status).toBe(200);
    expect(sha256(aliceOnline.body)).toBe(layer.digest);
    const aliceShortStale = await pullWithToken(privUrl(SHORT_STALE), alice);
    expect(aliceShortStale.status).toBe(200);
    const shortStaleConfirmedBy = Date.now();
    // bob can log in, so the realm answers him 200, with a token granting nothing for priv/app...
    tokens.tokenServer.reset();
    const bobOnline = await pullWithToken(privUrl(REGISTRY), bob);
    expect(bobOnline.tokenStatus).toBe(200);
    expect(tokens.tokenServer.requests.at(-1)?.granted).toEqual([{ type: 'repository', name: 'priv/app', actions: [] }]);
    // ...which upstream refuses: the cached blob is not his.
    expect(bobOnline.status).toBe(401);
    neverTheBlob(bobOnline.body);
    // bob's credential is valid, for another repository.
    const bobOther = await pullWithToken(otherUrl, bob);
    expect(bobOther.status).toBe(200);
    expect(sha256(bobOther.body)).toBe(otherImage.layers[0]!.digest);

    await cp.stop();
    try {
      // Offline: the realm round-trip bob did online does not earn him a token from the agent...
      const bobOffline = await pullWithToken(privUrl(REGISTRY), bob);
      expect(bobOffline.challenge).toContain('scope="repository:app:pull"');
      expect(bobOffline.tokenStatus).not.toBe(200);
      expect(bobOffline.token).toBeUndefined();
      // ...nor does the empty-grant token he got online, nor his password: 401 with the challenge.
      for (const authorization of [`Bearer ${bobOnline.token}`, basic(bob.username, bob.password)]) {
        const refused = await get(privUrl(REGISTRY), { authorization });
        expect(refused.status).toBe(401);
        expect(String(refused.headers['www-authenticate'])).toMatch(/^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/_token\//);
        neverTheBlob(refused.body);
      }
      // Where upstream did accept him, he is served.
      const bobOtherOffline = await pullWithToken(otherUrl, bob);
      expect(bobOtherOffline.token).toMatch(/^rpa-offline\./);
      expect(bobOtherOffline.status).toBe(200);
      // alice, accepted for "app" within max_stale: an offline token, and the blob.
      const aliceOffline = await pullWithToken(privUrl(REGISTRY), alice);
      expect(aliceOffline.token).toMatch(/^rpa-offline\./);
      expect(aliceOffline.status).toBe(200);
      expect(sha256(aliceOffline.body)).toBe(layer.digest);
      // Past max_stale, even alice is refused. Nothing to await here but the clock itself.
      await delay(Math.max(0, shortStaleConfirmedBy + SHORT_STALE_MS + 20 - Date.now()));
      const expired = await pullWithToken(privUrl(SHORT_STALE), alice);
      expect(expired.tokenStatus).not.toBe(200);
      const expiredToken = await get(privUrl(SHORT_STALE), { authorization: `Bearer ${aliceShortStale.token}` });
      expect(expiredToken.status).toBe(401);
      neverTheBlob(expiredToken.body);
    } finally {
      cp = await startConnectivityProxy({ virtualHosts: cpHosts, port: cpPort });
    }
    // Credentials and tokens never reach the log.
    const logs = JSON.stringify(agent.logs);
    for (const secret of [alice.password, bob.password, aliceOnline.token!, bobOnline.token!]) expect(logs).not.toContain(secret);
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

// distribution's htpasswd auth lets every user read every repository, so per-repository Basic
// access (as Harbor, Nexus or Artifactory have it) comes from a scripted upstream here.
describe('Basic auth with per-repository access: a credential valid for another repository', () => {
  const access: Record<string, { password: string; repository: string }> = {
    [alice.username]: { password: alice.password, repository: 'priv/app' },
    [bob.username]: { password: bob.password, repository: 'other/app' },
  };
  const blobs = { 'priv/app': randomBytes(32 * 1024), 'other/app': randomBytes(16 * 1024) };
  let dir: string;
  let upstream: ScriptedRegistry;
  let agent: InProcessAgent;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-basic-acl');
    upstream = await startScriptedRegistry();
    upstream.on('*', /^\/v2\/(priv|other)\/app\/blobs\//, (req, res) => {
      req.resume();
      const repository = /^\/v2\/(.+)\/blobs\//.exec(req.url ?? '')?.[1] as keyof typeof blobs;
      const user = parseBasic(req.headers.authorization);
      const known = user && Object.hasOwn(access, user.username) && access[user.username]!.password === user.password;
      if (!known) return sendJson(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }, { 'www-authenticate': 'Basic realm="acl-registry"' });
      if (access[user.username]!.repository !== repository) return sendJson(res, 403, { errors: [{ code: 'DENIED', message: 'requested access to the resource is denied' }] });
      const bytes = blobs[repository];
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(bytes.length), 'docker-content-digest': sha256(bytes) });
      res.end(req.method === 'HEAD' ? undefined : bytes);
    });
    agent = await startAgent({ dir, mirrors: [{ registry: REGISTRY, upstream: upstream.url }] });
  });

  afterAll(async () => {
    await agent?.stop();
    await upstream?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('serves a cached blob offline only to the credential upstream accepted for its repository', async () => {
    const privUrl = `${agent.url}/v2/priv/app/blobs/${sha256(blobs['priv/app'])}?ns=${REGISTRY}`;
    const otherUrl = `${agent.url}/v2/other/app/blobs/${sha256(blobs['other/app'])}?ns=${REGISTRY}`;
    const asAlice = { authorization: basic(alice.username, alice.password) };
    const asBob = { authorization: basic(bob.username, bob.password) };
    const neverTheBlob = (body: Buffer): void => expect(body.includes(blobs['priv/app'].subarray(0, 64))).toBe(false);

    expect((await get(privUrl)).status).toBe(401);
    const cached = await get(privUrl, asAlice);
    expect(cached.status).toBe(200);
    expect(sha256(cached.body)).toBe(sha256(blobs['priv/app']));
    const bobOnline = await get(privUrl, asBob);
    expect(bobOnline.status).toBe(403);
    neverTheBlob(bobOnline.body);
    expect((await get(otherUrl, asBob)).status).toBe(200);

    await upstream.stop();
    const bobOffline = await get(privUrl, asBob);
    expect(bobOffline.status).toBe(401);
    expect(bobOffline.headers['www-authenticate']).toBe('Basic realm="acl-registry"');
    neverTheBlob(bobOffline.body);
    expect((await get(privUrl)).status).toBe(401);
    expect((await get(otherUrl, asBob)).status).toBe(200);
    const aliceOffline = await get(privUrl, asAlice);
    expect(aliceOffline.status).toBe(200);
    expect(sha256(aliceOffline.body)).toBe(sha256(blobs['priv/app']));
  });
});

describe('Basic auth: access withdrawn upstream', () => {
  const layers = [randomBytes(24 * 1024), randomBytes(8 * 1024)];
  /** Who may read priv/app now; the test takes it away from alice half-way. */
  const allowed = new Set([alice.username]);
  let dir: string;
  let upstream: ScriptedRegistry;
  let agent: InProcessAgent;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-basic-revoked');
    upstream = await startScriptedRegistry();
    upstream.on('*', /^\/v2\/priv\/app\/blobs\//, (req, res) => {
      req.resume();
      const user = parseBasic(req.headers.authorization);
      if (user?.username !== alice.username || user.password !== alice.password) {
        return sendJson(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] }, { 'www-authenticate': 'Basic realm="acl-registry"' });
      }
      if (!allowed.has(user.username)) return sendJson(res, 403, { errors: [{ code: 'DENIED', message: 'requested access to the resource is denied' }] });
      const bytes = layers.find((layer) => (req.url ?? '').includes(sha256(layer)));
      if (!bytes) return sendJson(res, 404, { errors: [{ code: 'BLOB_UNKNOWN', message: 'blob unknown' }] });
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(bytes.length), 'docker-content-digest': sha256(bytes) });
      res.end(req.method === 'HEAD' ? undefined : bytes);
    });
    agent = await startAgent({ dir, mirrors: [{ registry: REGISTRY, upstream: upstream.url }] });
  });

  afterAll(async () => {
    await agent?.stop();
    await upstream?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('a refusal on any path withdraws the remembered access: cached content is refused at once, online and offline', async () => {
    const [cachedLayer, otherLayer] = layers as [Buffer, Buffer];
    const url = (layer: Buffer): string => `${agent.url}/v2/priv/app/blobs/${sha256(layer)}?ns=${REGISTRY}`;
    const asAlice = { authorization: basic(alice.username, alice.password) };
    expect((await get(url(cachedLayer), asAlice)).status).toBe(200);

    // Upstream takes priv/app away from alice; the agent learns it from a blob it had not cached.
    allowed.delete(alice.username);
    expect((await get(url(otherLayer), asAlice)).status).toBe(403);
    // Within the 5 minutes the agent would otherwise trust its memory: asked again, refused.
    const online = await get(url(cachedLayer), asAlice);
    expect(online.status).toBe(403);
    expect(online.body.includes(cachedLayer.subarray(0, 64))).toBe(false);

    await upstream.stop();
    const offline = await get(url(cachedLayer), asAlice);
    expect(offline.status).toBe(401);
    expect(offline.body.includes(cachedLayer.subarray(0, 64))).toBe(false);
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
