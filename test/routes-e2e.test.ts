import { createHash } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { getGlobalDispatcher, setGlobalDispatcher } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type InProcessAgent, type TestMirror, agentMain, writeAgentConfig } from './fixtures/agent.ts';
import { type ConfiguredAgent, type MirrorKeys, addMirrorKeys, startConfiguredAgent } from './fixtures/configured-agent.ts';
import type { ConnectivityProxy } from './fixtures/connectivity-proxy.ts';
import { type ContainerdHandle, startContainerd } from './fixtures/containerd.ts';
import { type CpStack, startCpStack } from './fixtures/cp-stack.ts';
import { sha256 } from './fixtures/digest.ts';
import { type OciErrorBody, get } from './fixtures/http-client.ts';
import { type TestImage, makeImage, pushImage } from './fixtures/image.ts';
import { freePort } from './fixtures/net.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type ManagedProcess, startProcess, tailFile } from './fixtures/process.ts';
import { type RealmRegistry, startRealmRegistry } from './fixtures/realm-registry.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { type TinyproxyHandle, startTinyproxy } from './fixtures/tinyproxy.ts';
import { type TlsRegistryHandle, makeTestCa, startTlsRegistry } from './fixtures/tls-registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const REGISTRY = 'registry.corp.example:5000';
const VIRTUAL = 'registry.virtual:5000';
const REPO = 'team/app';
const alice = { username: 'alice', password: 'wonder land' };

/** Status of every `GET <path>` in distribution's access log (combined log format). */
async function registryGets(logFile: string, path: string): Promise<number[]> {
  const text = await readFile(logFile, 'utf8');
  const line = new RegExp(`"GET ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} HTTP/[\\d.]+" (\\d{3}) `);
  return text.split('\n').flatMap((l) => {
    const m = line.exec(l);
    return m?.[1] ? [Number(m[1])] : [];
  });
}

describe('containerd → agent (auth = "agent") → Connectivity Proxy → htpasswd registry', () => {
  let dir: string;
  let registry: RegistryHandle;
  let cp: ConnectivityProxy;
  let agent: InProcessAgent;
  let containerd: ContainerdHandle;
  let image: TestImage;
  let blobs: string[];
  let stack: CpStack | undefined;

  beforeAll(async () => {
    await Promise.all([
      startRegistry({ auth: alice }).then((r) => (registry = r)),
      startContainerd().then((c) => (containerd = c)),
      makeImage({ layers: 2, layerBytes: 128 * 1024 }).then((i) => (image = i)),
    ]);
    blobs = [image.config.digest, ...image.layers.map((l) => l.digest)];
    await pushImage(registry.url, REPO, 'v1', image, alice);
    ({ dir, cp, agent } = stack = await startCpStack({
      dir: { name: 'rpa-e2e-cp-agent' },
      virtualHosts: { [VIRTUAL]: registry.url },
      locations: { 'loc-1': 'connected' },
      locationId: 'loc-1',
      agent: { manageHosts: true, mirrors: [{ registry: REGISTRY, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy', auth: 'agent', ...alice }] },
    }));
  });

  afterAll(async () => {
    await stack?.stop();
    await Promise.all([containerd?.stop(), registry?.stop()]);
  });

  it('containerd pulls without any credential; each blob crosses the Connectivity Proxy and the registry once', async () => {
    const result = await containerd.pull(`${REGISTRY}/${REPO}:v1`, { hostsDir: join(dir, 'certs.d') });
    expect(result.code, result.stderr).toBe(0);
    // containerd was never challenged: the agent answered everything with its own credential.
    expect(agent.requests.filter((r) => r.status === 401)).toEqual([]);
    for (const r of cp.requests) {
      expect(r.target.startsWith(`http://${VIRTUAL}/v2/`), r.target).toBe(true);
      expect(r.locationId).toBe('loc-1');
    }
    for (const digest of blobs) {
      const path = `/v2/${REPO}/blobs/${digest}`;
      expect(cp.requests.filter((r) => r.method === 'GET' && r.target === `http://${VIRTUAL}${path}` && r.status === 200), digest).toHaveLength(1);
      // The registry's access log is written after the response: wait for the line, then count.
      await pollUntil(async () => (await registryGets(registry.logFile, path)).includes(200), { timeoutMs: 5_000, what: `registry logged ${path}` });
      expect((await registryGets(registry.logFile, path)).filter((s) => s === 200), digest).toHaveLength(1);
    }
    // The registry really demanded the credential: the agent's first, anonymous request was refused.
    expect(cp.requests.some((r) => r.status === 401)).toBe(true);
    expect(JSON.stringify(agent.logs)).not.toContain(alice.password);
  });

  it('a second pull into a fresh namespace is served from the cache: no blob crosses the proxy again', async () => {
    const before = cp.requests.length;
    const result = await containerd.pull(`${REGISTRY}/${REPO}:v1`, { hostsDir: join(dir, 'certs.d'), namespace: 'fresh' });
    expect(result.code, result.stderr).toBe(0);
    expect(cp.requests.slice(before).filter((r) => r.target.includes('/blobs/'))).toEqual([]);
    const blobGets = agent.requests.filter((r) => r.outcome.kind === 'blob' && r.method === 'GET').slice(-blobs.length);
    expect(blobGets.map((r) => r.outcome.cache)).toEqual(blobs.map(() => 'hit'));
  });
});

interface ChildAgent {
  url: string;
  /** Its log (pino JSON lines), for failure messages. */
  logs(): Promise<string>;
  stop(): Promise<void>;
}

/**
 * The compiled agent as a child process: NODE_EXTRA_CA_CERTS is read once at process start, so a
 * private upstream CA can be trusted process-wide only the way a DaemonSet would do it, through the
 * environment. `env` entries that are undefined are removed from the child's environment.
 */
async function startChildAgent(dir: string, mirrors: TestMirror[], env: NodeJS.ProcessEnv, mirrorKeys: MirrorKeys = {}): Promise<ChildAgent> {
  const port = await freePort();
  const config = await writeAgentConfig({ dir, port, mirrors });
  await addMirrorKeys(config, mirrorKeys);
  const logFile = join(dir, 'agent.log');
  const childEnv: NodeJS.ProcessEnv = { ...process.env };
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined) delete childEnv[name];
    else childEnv[name] = value;
  }
  const child: ManagedProcess = await startProcess(process.execPath, [agentMain(), '--config', config], { logFile, env: childEnv });
  await pollUntil(async () => (await tailFile(logFile, 64 * 1024)).includes('"mirror listening"'), {
    timeoutMs: 20_000,
    what: 'child agent listening',
    abort: () => (child.exitInfo() ? 'agent exited' : undefined),
  }).catch(async (error: unknown) => {
    await child.stop();
    throw new Error(`${(error as Error).message}\n--- agent.log ---\n${await tailFile(logFile)}`, { cause: error });
  });
  return { url: `http://127.0.0.1:${port}`, logs: () => tailFile(logFile, 1024 * 1024), stop: async () => void (await child.stop()) };
}

/** `http: TLS handshake error` lines in distribution's log: one per connection whose handshake failed (a client refusing the certificate). */
async function handshakeErrors(logFile: string): Promise<number> {
  return (await readFile(logFile, 'utf8')).split('\n').filter((line) => line.includes('http: TLS handshake error from')).length;
}

describe('https upstream with a private CA: NODE_EXTRA_CA_CERTS, per-mirror ca_file (direct and CONNECT), refused certificates', () => {
  const OTHER_REPO = 'team/other';
  let dir: string;
  let tls: TlsRegistryHandle;
  let proxy: TinyproxyHandle;
  let agent: ChildAgent;
  let image: TestImage;
  let other: TestImage;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-e2e-https-proxy');
    await Promise.all([
      startTlsRegistry().then((r) => (tls = r)),
      startTinyproxy().then((p) => (proxy = p)),
      makeImage({ layers: 2, layerBytes: 200 * 1024 }).then((i) => (image = i)),
      makeImage({ layers: 1, layerBytes: 64 * 1024 }).then((i) => (other = i)),
    ]);
    // pushImage uses undici's global dispatcher; trust the private CA for the push only (this file runs in its own process).
    const previous = getGlobalDispatcher();
    setGlobalDispatcher(tls.dispatcher);
    try {
      await pushImage(tls.url, REPO, 'v1', image);
      await pushImage(tls.url, OTHER_REPO, 'v1', other);
    } finally {
      setGlobalDispatcher(previous);
    }
    agent = await startChildAgent(dir, [{ registry: REGISTRY, upstream: tls.url, route: 'http-proxy', httpProxy: proxy.url }], { NODE_EXTRA_CA_CERTS: tls.caFile });
  });

  afterAll(async () => {
    await agent?.stop();
    await Promise.all([proxy?.stop(), tls?.stop()]);
    if (dir) await removeTempDir(dir);
  });

  it('tunnels with CONNECT, verifies the registry certificate against the trusted CA, serves and caches verified content', async () => {
    const manifest = await get(`${agent.url}/v2/${REPO}/manifests/v1?ns=${REGISTRY}`);
    expect(manifest.status, manifest.status === 200 ? '' : `${manifest.body.toString()}\n${await agent.logs()}`).toBe(200);
    expect(manifest.body.equals(image.manifest)).toBe(true);
    expect(manifest.headers['docker-content-digest']).toBe(image.manifestDigest);
    for (const blob of [image.config, ...image.layers]) {
      const response = await get(`${agent.url}/v2/${REPO}/blobs/${blob.digest}?ns=${REGISTRY}`);
      expect(response.status).toBe(200);
      expect(sha256(response.body)).toBe(blob.digest);
    }
    // Only blobs whose digest matched are renamed into the cache.
    const cached = await readdir(join(dir, 'cache', 'blobs', 'sha256'));
    for (const blob of [image.config, ...image.layers]) expect(cached).toContain(blob.digest.slice('sha256:'.length));
    // The proxy saw tunnels to the registry, never a plain request for an https URL.
    await pollUntil(async () => (await proxy.requests()).some((r) => r.method === 'CONNECT'), { timeoutMs: 10_000, what: 'tinyproxy logged a CONNECT' });
    const seen = await proxy.requests();
    expect(seen.filter((r) => r.method === 'CONNECT').every((r) => r.target === tls.host)).toBe(true);
    expect(seen.filter((r) => r.method !== 'CONNECT')).toEqual([]);
    // And the TLS registry itself served manifest and blobs (through the tunnel).
    await pollUntil(async () => (await registryGets(tls.logFile, `/v2/${REPO}/blobs/${image.layers[1]!.digest}`)).includes(200), {
      timeoutMs: 5_000,
      what: 'TLS registry logged the last blob',
    });
    for (const blob of [image.config, ...image.layers]) {
      expect(await registryGets(tls.logFile, `/v2/${REPO}/blobs/${blob.digest}`), blob.digest).toEqual([200]);
    }
  });

  it('ca_file in the config, no NODE_EXTRA_CA_CERTS: the direct route and the CONNECT tunnel both verify against it', async () => {
    const DIRECT = 'direct-ca.corp.example:5000';
    const PROXIED = 'proxied-ca.corp.example:5000';
    const caDir = await makeTempDir('rpa-e2e-ca-file');
    try {
      // Relative to the config file, like the other file keys.
      await mkdir(join(caDir, 'trust'));
      await copyFile(tls.caFile, join(caDir, 'trust', 'corp-ca.pem'));
      // Counted before the agent starts: its start-up probe may open the tunnel the pulls then reuse.
      const connectsBefore = (await proxy.requests()).filter((r) => r.method === 'CONNECT').length;
      const trusting = await startChildAgent(
        caDir,
        [
          { registry: DIRECT, upstream: tls.url },
          { registry: PROXIED, upstream: tls.url, route: 'http-proxy', httpProxy: proxy.url },
        ],
        { NODE_EXTRA_CA_CERTS: undefined },
        { [DIRECT]: ['ca_file = "trust/corp-ca.pem"'], [PROXIED]: ['ca_file = "trust/corp-ca.pem"'] },
      );
      try {
        // Each mirror pulls its own image, so the second is not served from the first one's cache.
        for (const [registry, repo, img] of [[DIRECT, REPO, image], [PROXIED, OTHER_REPO, other]] as const) {
          const manifest = await get(`${trusting.url}/v2/${repo}/manifests/v1?ns=${registry}`);
          expect(manifest.status, manifest.status === 200 ? '' : `${manifest.body.toString()}\n${await trusting.logs()}`).toBe(200);
          expect(manifest.body.equals(img.manifest)).toBe(true);
          for (const blob of [img.config, ...img.layers]) {
            const response = await get(`${trusting.url}/v2/${repo}/blobs/${blob.digest}?ns=${registry}`);
            expect(response.status).toBe(200);
            expect(sha256(response.body)).toBe(blob.digest);
          }
        }
        const cached = await readdir(join(caDir, 'cache', 'blobs', 'sha256'));
        for (const blob of [image.config, ...image.layers, other.config, ...other.layers]) expect(cached).toContain(blob.digest.slice('sha256:'.length));
        // The proxied mirror's bytes came through new CONNECT tunnels to the registry.
        await pollUntil(async () => (await proxy.requests()).filter((r) => r.method === 'CONNECT').length > connectsBefore, { timeoutMs: 10_000, what: 'tinyproxy logged a new CONNECT' });
        expect((await proxy.requests()).filter((r) => r.method === 'CONNECT').every((r) => r.target === tls.host)).toBe(true);
        await pollUntil(async () => (await registryGets(tls.logFile, `/v2/${OTHER_REPO}/blobs/${other.layers[0]!.digest}`)).includes(200), {
          timeoutMs: 5_000,
          what: 'TLS registry logged the proxied blob',
        });
      } finally {
        await trusting.stop();
      }
    } finally {
      await removeTempDir(caDir);
    }
  });

  it('without a trusted CA: cause tls, one attempt, an OCI error with the ca_file fix, the metric moved, nothing cached', async () => {
    // In this process NODE_EXTRA_CA_CERTS does not name the test CA, and these mirrors have no ca_file.
    const DIRECT = 'direct-untrusted.corp.example:5000';
    const PROXIED = 'proxied-untrusted.corp.example:5000';
    const untrustingDir = await makeTempDir('rpa-e2e-untrusted');
    let untrusting: ConfiguredAgent | undefined;
    try {
      untrusting = await startConfiguredAgent({
        dir: untrustingDir,
        mirrors: [
          { registry: DIRECT, upstream: tls.url },
          { registry: PROXIED, upstream: tls.url, route: 'http-proxy', httpProxy: proxy.url },
        ],
      });
      for (const [registry, route] of [[DIRECT, 'direct'], [PROXIED, 'http-proxy']] as const) {
        const handshakesBefore = await handshakeErrors(tls.logFile);
        const response = await get(`${untrusting.url}/v2/${REPO}/blobs/${image.layers[0]!.digest}?ns=${registry}`);
        expect(response.status, registry).toBe(502);
        const error = response.json().errors[0]!;
        expect(error.code).toBe('UNAVAILABLE');
        expect(error.detail?.['reason']).toBe('tls');
        expect(error.message).toContain(`the TLS certificate of ${tls.host} is not trusted (UNABLE_TO_VERIFY_LEAF_SIGNATURE: unable to verify the first certificate)`);
        const fix = `set ca_file for mirror ${registry} to a PEM file with the CA that issued ${tls.host}'s certificate`;
        expect(String(error.detail?.['fix'])).toContain(fix);
        expect(error.message).toContain(`fix: ${fix}`);
        // One attempt, counted on both sides: the registry saw one refused handshake (a retry would
        // have been made before the answer above, so its line would be there too).
        await pollUntil(async () => (await handshakeErrors(tls.logFile)) > handshakesBefore, { timeoutMs: 5_000, what: `registry logged the refused handshake for ${registry}` });
        expect(await handshakeErrors(tls.logFile)).toBe(handshakesBefore + 1);
        const metrics = await untrusting.metrics();
        expect(metrics.get(`registry_proxy_upstream_errors_total{registry="${registry}",cause="tls"}`)).toBe(1);
        expect(metrics.get(`registry_proxy_upstream_requests_total{registry="${registry}",route="${route}",result="error"}`)).toBe(1);
        const failing = untrusting.logs.filter((l) => l['msg'] === 'upstream failing' && l['registry'] === registry);
        expect(failing).toEqual([expect.objectContaining({ cause: 'tls', fix: error.detail?.['fix'] })]);
      }
      expect(await readdir(join(untrustingDir, 'cache', 'blobs', 'sha256'))).toEqual([]);
    } finally {
      await untrusting?.stop();
      await removeTempDir(untrustingDir);
    }
  });
});

describe('Connectivity Proxy with a token registry whose realm is https', () => {
  const REALM = 'https://auth.corp.example/token';
  const AGENT_AUTH = 'agent-auth.corp.example:5000';
  const PASSTHROUGH = 'passthrough.corp.example:5000';
  let dir: string;
  let registry: RegistryHandle;
  let cp: ConnectivityProxy;
  let agent: InProcessAgent;
  let stack: CpStack | undefined;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-e2e-https-realm');
    // The registry only names the realm in its challenge and checks token signatures against this bundle.
    const ca = await makeTestCa(dir);
    registry = await startRegistry({ tokenAuth: { realm: REALM, service: 'rpa-test-registry', issuer: 'rpa-test-issuer', rootCertBundle: ca.caFile } });
    ({ cp, agent } = stack = await startCpStack({
      dir,
      virtualHosts: { [VIRTUAL]: registry.url },
      agent: {
        mirrors: [
          { registry: AGENT_AUTH, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy', auth: 'agent', ...alice },
          { registry: PASSTHROUGH, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy' },
        ],
      },
    }));
  });

  afterAll(async () => {
    await stack?.stop();
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  function expectHttpsRealmError(error: OciErrorBody['errors'][number]): void {
    expect(error.code).toBe('UNAVAILABLE');
    expect(error.detail?.['reason']).toBe('cp_https_refused');
    expect(error.message).toMatch(/only forwards plain http:\/\//);
    expect(String(error.detail?.['fix'])).toMatch(/http:\/\/<virtual-host>:<port>/);
    // Names the realm, and a fix about the realm (not the upstream, which already is http://): realm_map.
    expect(error.message).toContain(`token realm ${REALM}`);
    expect(String(error.detail?.['fix'])).toMatch(/token realm/);
    expect(String(error.detail?.['fix'])).toContain(`realm_map: [mirror.realm_map] "https://auth.corp.example" = "http://<virtual-host>:<port>"`);
    // The realm was refused by the agent before anything was sent: the proxy never saw it.
    expect(cp.requests.filter((r) => !r.target.startsWith(`http://${VIRTUAL}/`))).toEqual([]);
  }

  it('auth = "agent": the token fetch is refused with an OCI error naming the https restriction and the fix', async () => {
    const response = await get(`${agent.url}/v2/${REPO}/manifests/v1?ns=${AGENT_AUTH}`);
    expect(response.status).toBe(502);
    expectHttpsRealmError(response.json().errors[0]!);
    // The registry's challenge did come back through the proxy: the failure is the realm, not the upstream.
    expect(cp.requests.some((r) => r.target === `http://${VIRTUAL}/v2/${REPO}/manifests/v1` && r.status === 401)).toBe(true);
  });

  it('passthrough: the puller is sent to the agent for its token, and that request fails with the same explanation', async () => {
    const challenged = await get(`${agent.url}/v2/${REPO}/manifests/v1?ns=${PASSTHROUGH}`);
    expect(challenged.status).toBe(401);
    const realm = /realm="([^"]+)"/.exec(String(challenged.headers['www-authenticate']))?.[1];
    expect(realm?.startsWith(`${agent.url}/_token/`)).toBe(true);
    const token = await get(`${realm}?scope=repository:${REPO}:pull&service=rpa-test-registry`, {
      authorization: `Basic ${Buffer.from(`${alice.username}:${alice.password}`).toString('base64')}`,
    });
    expect(token.status).toBe(502);
    expectHttpsRealmError(token.json().errors[0]!);
  });
});

describe('Connectivity Proxy with a token registry whose https realm is mapped by realm_map', () => {
  const REALM = 'https://auth.corp.example/token';
  const TOKEN_VIRTUAL = 'auth.virtual:80';
  const AGENT_AUTH = 'mapped-agent.corp.example:5000';
  const PASSTHROUGH = 'mapped-passthrough.corp.example:5000';
  const OTHER_REPO = 'team/other';
  const REALM_MAP = [`realm_map = { "https://auth.corp.example" = "http://${TOKEN_VIRTUAL}" }`];
  let dir: string;
  let realmRegistry: RealmRegistry;
  let cp: ConnectivityProxy;
  let agent: ConfiguredAgent;
  let containerd: ContainerdHandle;
  let image: TestImage;
  let other: TestImage;
  let stack: CpStack<ConfiguredAgent> | undefined;

  beforeAll(async () => {
    await Promise.all([
      startRealmRegistry({ realm: REALM, users: { [alice.username]: alice.password } }).then((r) => (realmRegistry = r)),
      startContainerd().then((c) => (containerd = c)),
      makeImage({ layers: 2, layerBytes: 64 * 1024 }).then((i) => (image = i)),
      makeImage({ layers: 1, layerBytes: 64 * 1024 }).then((i) => (other = i)),
    ]);
    // One image per mirror: the second pull must not be served from the first one's cache.
    await realmRegistry.push(REPO, 'v1', image);
    await realmRegistry.push(OTHER_REPO, 'v1', other);
    // The Cloud Connector exposes the registry and, as its own virtual host, the token server.
    ({ dir, cp, agent } = stack = await startCpStack({
      dir: { name: 'rpa-e2e-realm-map' },
      virtualHosts: { [VIRTUAL]: realmRegistry.registry.url, [TOKEN_VIRTUAL]: realmRegistry.tokenOrigin },
      agent: {
        manageHosts: true,
        mirrors: [
          { registry: AGENT_AUTH, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy', auth: 'agent', ...alice },
          { registry: PASSTHROUGH, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy' },
        ],
      },
      start: (setup) => startConfiguredAgent(setup, { [AGENT_AUTH]: REALM_MAP, [PASSTHROUGH]: REALM_MAP }),
    }));
  });

  afterAll(async () => {
    await stack?.stop();
    await Promise.all([containerd?.stop(), realmRegistry?.stop()]);
  });

  /** Everything the agent sent through the proxy was an http:// absolute-form request to an exposed virtual host, and none was refused. */
  function expectOnlyVirtualHosts(): void {
    expect(cp.requests.length).toBeGreaterThan(0);
    for (const r of cp.requests) {
      expect(r.target, r.target).toMatch(new RegExp(`^http://(${VIRTUAL.replaceAll('.', '\\.')}|auth\\.virtual)/`));
      expect(r.rejected, r.target).toBeUndefined();
    }
  }

  it('auth = "agent": containerd pulls without a credential; the agent fetches its tokens at the mapped virtual host', async () => {
    cp.reset();
    realmRegistry.tokenServer.reset();
    const result = await containerd.pull(`${AGENT_AUTH}/${REPO}:v1`, { hostsDir: join(dir, 'certs.d') });
    expect(result.code, result.stderr).toBe(0);
    expectOnlyVirtualHosts();
    expect(cp.requests.filter((r) => r.target.startsWith('http://auth.virtual/token?') && r.status === 200).length).toBeGreaterThan(0);
    // The real token server issued them, to the agent's own credential; containerd was never challenged.
    const issued = realmRegistry.tokenServer.requests.filter((r) => r.status === 200);
    expect(issued.length).toBeGreaterThan(0);
    expect(issued.every((r) => r.user === alice.username && r.hadBasic)).toBe(true);
    expect(agent.requests.filter((r) => r.status === 401)).toEqual([]);
    for (const blob of [image.config, ...image.layers]) {
      expect(cp.requests.filter((r) => r.method === 'GET' && r.target === `http://${VIRTUAL}/v2/${REPO}/blobs/${blob.digest}` && r.status === 200), blob.digest).toHaveLength(1);
    }
  });

  it('passthrough: the challenge keeps the original realm (learned under its own id); containerd gets its token through the mapped virtual host', async () => {
    const challenged = await get(`${agent.url}/v2/${OTHER_REPO}/manifests/v1?ns=${PASSTHROUGH}`);
    expect(challenged.status).toBe(401);
    const realm = /realm="([^"]+)"/.exec(String(challenged.headers['www-authenticate']))?.[1] ?? '';
    const id = createHash('sha256').update(REALM).digest('hex').slice(0, 16);
    expect(realm).toBe(`${agent.url}/_token/${encodeURIComponent(PASSTHROUGH)}/${id}`);
    cp.reset();
    realmRegistry.tokenServer.reset();
    const result = await containerd.pull(`${PASSTHROUGH}/${OTHER_REPO}:v1`, {
      hostsDir: join(dir, 'certs.d'),
      namespace: 'passthrough',
      user: `${alice.username}:${alice.password}`,
    });
    expect(result.code, result.stderr).toBe(0);
    expectOnlyVirtualHosts();
    // containerd asked the agent for its token; the agent forwarded it to the mapped origin, path kept.
    expect(agent.requests.some((r) => r.outcome.kind === 'token' && r.status === 200)).toBe(true);
    const tokenHops = cp.requests.filter((r) => r.target.startsWith('http://auth.virtual/'));
    expect(tokenHops.length).toBeGreaterThan(0);
    expect(tokenHops.every((r) => /^http:\/\/auth\.virtual\/token(\?|$)/.test(r.target))).toBe(true);
    const issued = realmRegistry.tokenServer.requests.filter((r) => r.status === 200);
    expect(issued.length).toBeGreaterThan(0);
    expect(issued.every((r) => r.user === alice.username)).toBe(true);
    for (const blob of [other.config, ...other.layers]) {
      expect(cp.requests.filter((r) => r.method === 'GET' && r.target === `http://${VIRTUAL}/v2/${OTHER_REPO}/blobs/${blob.digest}` && r.status === 200), blob.digest).toHaveLength(1);
    }
  });
});
