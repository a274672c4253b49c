import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../agent/log.ts';
import { type AgentProcess, type InProcessAgent, startAgent, startAgentProcess, writeAgentConfig } from './fixtures/agent.ts';
import type { OAuthServer } from './fixtures/connectivity-proxy.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { type CpStack, startCpStack } from './fixtures/cp-stack.ts';
import { sha256 } from './fixtures/digest.ts';
import { type TestImage, makeImage, makeRandomBlob, pushBlob, pushImage } from './fixtures/image.ts';
import { parseMetrics } from './fixtures/metrics-text.ts';
import { freePort } from './fixtures/net.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { type ScriptedRegistry, startScriptedRegistry } from './fixtures/scripted-registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';
import { type TokenRegistry, startTokenRegistry } from './fixtures/token-registry.ts';

const REGISTRY = 'registry.corp.example:5000';

function sum(values: Map<string, number>, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const [key, value] of values) {
    if (!(key === name || key.startsWith(`${name}{`))) continue;
    if (Object.entries(labels).every(([k, v]) => key.includes(`${k}="${v}"`))) total += value;
  }
  return total;
}

describe('metrics, health and logs after real traffic', () => {
  let dir: string;
  let registry: RegistryHandle;
  let proxy: CountingProxy;
  let agent: InProcessAgent;

  async function scrape(): Promise<Map<string, number>> {
    const response = await request(`${agent.runtime.healthUrl}/metrics`);
    expect(response.statusCode).toBe(200);
    expect(String(response.headers['content-type'])).toContain('text/plain');
    return parseMetrics(await response.body.text());
  }

  beforeAll(async () => {
    dir = await makeTempDir('rpa-obs');
    registry = await startRegistry();
    proxy = await startCountingProxy(registry.url);
    agent = await startAgent({ dir, cacheMaxBytes: '64MiB', mirrors: [{ registry: REGISTRY, upstream: proxy.url }] });
  });

  afterAll(async () => {
    await agent?.stop();
    await proxy?.stop();
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('/healthz and /readyz answer, and readiness does not depend on upstream', async () => {
    await proxy.setFault({ kind: 'down' });
    try {
      expect((await request(`${agent.runtime.healthUrl}/healthz`)).statusCode).toBe(200);
      expect((await request(`${agent.runtime.healthUrl}/readyz`)).statusCode).toBe(200);
    } finally {
      await proxy.setFault(undefined);
    }
  });

  it('counts requests, cache results, bytes by source, joins and upstream requests', async () => {
    const image = await makeImage({ layers: 1, layerBytes: 100 * 1024 });
    await pushImage(registry.url, 'team/app', 'v1', image);
    const blob = makeRandomBlob(2 * 1024 * 1024);
    await pushBlob(registry.url, 'team/app', blob);
    // Slow enough (about 2 s) that the joiners always arrive while the fill runs, even on a loaded machine.
    await proxy.setFault({ kind: 'throttle', bytesPerSecond: 1024 * 1024, pathIncludes: blob.digest });
    const url = `${agent.url}/v2/team/app/blobs/${blob.digest}`;
    // One miss and two joins while the fill runs, then one hit.
    // Each client on its own connection: one shared pool could queue the joiners behind the first.
    const get = () => request(url, { dispatcher: new Agent() }).then((r) => r.body.arrayBuffer());
    const first = get();
    await pollUntil(() => agent.runtime.cache.stats().inflight === 1, { timeoutMs: 10_000, intervalMs: 5, what: 'fill running' });
    // The throttled fill takes about 2 s: the scrape sees it running.
    expect(sum(await scrape(), 'registry_proxy_fills_inflight')).toBe(1);
    await Promise.all([first, get(), get()]);
    await proxy.setFault(undefined);
    await (await request(url)).body.arrayBuffer();
    await (await request(`${agent.url}/v2/team/app/manifests/v1`)).body.arrayBuffer();

    const m = await scrape();
    expect(sum(m, 'registry_proxy_requests_total', { registry: REGISTRY, kind: 'blob', cache: 'miss', status_class: '2xx' })).toBe(1);
    expect(sum(m, 'registry_proxy_requests_total', { registry: REGISTRY, kind: 'blob', cache: 'joined' })).toBe(2);
    expect(sum(m, 'registry_proxy_requests_total', { registry: REGISTRY, kind: 'blob', cache: 'hit' })).toBe(1);
    expect(sum(m, 'registry_proxy_requests_total', { kind: 'manifest' })).toBe(1);
    expect(sum(m, 'registry_proxy_served_bytes_total', { source: 'cache' })).toBe(blob.bytes.length);
    expect(sum(m, 'registry_proxy_served_bytes_total', { source: 'upstream' })).toBe(3 * blob.bytes.length + image.manifest.length);
    expect(sum(m, 'registry_proxy_fill_joined_total')).toBe(2);
    expect(sum(m, 'registry_proxy_upstream_requests_total', { registry: REGISTRY, route: 'direct', result: '2xx' })).toBe(proxy.count({}));
    // One duration observation per exchange with upstream, answered or not (the start-up probe may
    // have met the proxy down in the first test).
    const exchanges = sum(m, 'registry_proxy_upstream_requests_total', { registry: REGISTRY });
    expect(sum(m, 'registry_proxy_upstream_request_duration_seconds_count', { registry: REGISTRY, route: 'direct' })).toBe(exchanges);
    expect(exchanges).toBeGreaterThanOrEqual(proxy.count({}));
    expect(sum(m, 'registry_proxy_fills_inflight')).toBe(0);
    expect(sum(m, 'registry_proxy_cache_bytes')).toBe(blob.bytes.length + image.manifest.length);
    expect(sum(m, 'registry_proxy_cache_entries')).toBe(2);
    expect(sum(m, 'registry_proxy_cache_max_bytes')).toBe(64 * 1024 * 1024);
    expect(sum(m, 'registry_proxy_request_duration_seconds_count', { kind: 'blob' })).toBe(4);
    expect(sum(m, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    // Bounded labels: no repository, tag or digest anywhere.
    const text = await (await request(`${agent.runtime.healthUrl}/metrics`)).body.text();
    expect(text).not.toContain('team/app');
    expect(text).not.toContain(blob.digest.slice(7, 20));
  });

  it('reports an unreachable upstream by cause and in the probe gauge, and logs it once', async () => {
    // A healthy exchange first, so the state change below starts from "answering".
    await (await request(`${agent.url}/v2/team/app/manifests/v1`)).body.dump();
    const logsBefore = agent.logs.length;
    await proxy.setFault({ kind: 'down' });
    try {
      const missing = await request(`${agent.url}/v2/team/app/blobs/sha256:${'3'.repeat(64)}`);
      expect(missing.statusCode).toBe(503);
      await missing.body.dump();
      const again = await request(`${agent.url}/v2/team/app/blobs/sha256:${'4'.repeat(64)}`);
      await again.body.dump();
      await agent.runtime.probeNow();
      const m = await scrape();
      // The proxy's port is closed: connection refused, its own cause (not DNS failures or resets).
      expect(sum(m, 'registry_proxy_upstream_errors_total', { registry: REGISTRY, cause: 'refused' })).toBeGreaterThanOrEqual(2);
      expect(sum(m, 'registry_proxy_upstream_up', { registry: REGISTRY })).toBe(0);
      // Two failed requests (each retried once) and a probe: one log line for the state change.
      const lines = agent.logs.slice(logsBefore).filter((l) => l['msg'] === 'upstream failing');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatchObject({ registry: REGISTRY, cause: 'refused' });
      expect(String(lines[0]?.['detail'])).toMatch(/refused the connection \(ECONNREFUSED\)/);
    } finally {
      await proxy.setFault(undefined);
    }
    await agent.runtime.probeNow();
    expect(sum(await scrape(), 'registry_proxy_upstream_up', { registry: REGISTRY })).toBe(1);
  });

  it('counts a blob whose upstream bytes do not match its digest, and caches nothing', async () => {
    const blob = makeRandomBlob(256 * 1024);
    await pushBlob(registry.url, 'team/app', blob);
    const before = await scrape();
    await proxy.setFault({ kind: 'corrupt', pathIncludes: blob.digest });
    try {
      // The last byte is withheld until verification: the client never completes a response (the
      // connection is cut mid-body, or before the headers when the fill failed before the first read).
      await expect(request(`${agent.url}/v2/team/app/blobs/${blob.digest}`).then((response) => response.body.arrayBuffer())).rejects.toThrow();
      await pollUntil(async () => sum(await scrape(), 'registry_proxy_digest_mismatches_total', { where: 'upstream' }) > sum(before, 'registry_proxy_digest_mismatches_total', { where: 'upstream' }), {
        timeoutMs: 5_000,
        what: 'mismatch counted',
      });
    } finally {
      await proxy.setFault(undefined);
    }
    const m = await scrape();
    expect(sum(m, 'registry_proxy_digest_mismatches_total', { where: 'upstream' }) - sum(before, 'registry_proxy_digest_mismatches_total', { where: 'upstream' })).toBe(1);
    expect(sum(m, 'registry_proxy_digest_mismatches_total', { where: 'disk' })).toBe(0);
    expect(sum(m, 'registry_proxy_cache_entries')).toBe(sum(before, 'registry_proxy_cache_entries'));
  });

  it('counts an upstream connection cut mid-blob as body_cut, once per cut, and logs the cause once', async () => {
    const blob = makeRandomBlob(1024 * 1024);
    await pushBlob(registry.url, 'team/app', blob);
    const before = sum(await scrape(), 'registry_proxy_upstream_errors_total', { registry: REGISTRY, cause: 'body_cut' });
    // Every request for it is cut after 64 KiB: the agent resumes (bounded) and then gives up.
    await proxy.setFault({ kind: 'cut', pathIncludes: blob.digest, afterBytes: 64 * 1024 });
    try {
      const response = await request(`${agent.url}/v2/team/app/blobs/${blob.digest}`);
      await expect(response.body.arrayBuffer()).rejects.toThrow();
    } finally {
      await proxy.setFault(undefined);
    }
    const cuts = proxy.requests.filter((r) => r.fault === 'cut' && r.aborted && r.path.includes(blob.digest)).length;
    expect(cuts).toBeGreaterThanOrEqual(2);
    const after = sum(await scrape(), 'registry_proxy_upstream_errors_total', { registry: REGISTRY, cause: 'body_cut' });
    expect(after - before).toBe(cuts);
    // Every resumed request answered 206 before its body was cut again: still one state, one line.
    const lines = agent.logs.filter((l) => l['msg'] === 'upstream failing' && l['cause'] === 'body_cut');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ registry: REGISTRY, status: 200 });
    expect(String(lines[0]?.['detail'])).toMatch(/broke off while the response body streamed/);
    // A whole body afterwards ends that state.
    await (await request(`${agent.url}/v2/team/app/blobs/${blob.digest}`)).body.arrayBuffer();
    expect(agent.logs.filter((l) => l['msg'] === 'upstream answering again' && l['previous'] === 'body_cut')).toHaveLength(1);
  });

  it('counts configuration changes and a failed one once', async () => {
    const reloads = async (result: string) => sum(await scrape(), 'registry_proxy_config_reloads_total', { result });
    const [okBefore, errorBefore] = [await reloads('ok'), await reloads('error')];
    const current = agent.runtime.config.mirrors;
    await agent.runtime.setMirrors(current);
    expect(await reloads('ok')).toBe(okBefore + 1);
    // Credentials are read when the mirror is built: an unusable docker config fails the change.
    const badFile = join(dir, 'bad-dockerconfig.json');
    await writeFile(badFile, 'not json');
    const broken = { ...current[0]!, registry: 'other.corp.example:5000', auth: 'agent' as const, dockerConfigFile: badFile };
    await expect(agent.runtime.setMirrors([...current, broken])).rejects.toThrow(/dockerconfigjson/);
    expect(await reloads('error')).toBe(errorBefore + 1);
    expect(await reloads('ok')).toBe(okBefore + 1);
    expect(agent.runtime.mirrors.list().map((m) => m.registry)).toEqual([REGISTRY]);
  });

  it('logs one line per request with registry, kind, status, bytes, duration, cache result and request id', async () => {
    const line = agent.logs.find((l) => l['msg'] === 'request' && l['kind'] === 'blob' && l['cache'] === 'hit');
    expect(line).toMatchObject({ registry: REGISTRY, status: 200, method: 'GET' });
    expect(typeof line?.['reqId']).toBe('string');
    expect(typeof line?.['durationMs']).toBe('number');
    expect(line?.['bytes']).toBeGreaterThan(0);
  });
});

describe('log redaction', () => {
  it('never writes Authorization, Proxy-Authorization, tokens or passwords', () => {
    const lines: string[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        lines.push(chunk.toString());
        callback();
      },
    });
    const log = createLogger('info', sink);
    log.info({ authorization: 'Basic c2VjcmV0OnNlY3JldA==', headers: { authorization: 'Bearer tok-1', 'proxy-authorization': 'Bearer tok-2' } }, 'a');
    log.info({ req: { headers: { authorization: 'Bearer tok-3', 'proxy-authorization': 'Bearer tok-4' } } }, 'b');
    log.info({ password: 'hunter2', token: 'tok-5', access_token: 'tok-6', client_secret: 'cs-1', nested: { password: 'hunter3', token: 'tok-7' } }, 'c');
    const text = lines.join('');
    for (const secret of ['c2VjcmV0OnNlY3JldA==', 'tok-1', 'tok-2', 'tok-3', 'tok-4', 'hunter2', 'tok-5', 'tok-6', 'cs-1', 'hunter3', 'tok-7']) {
      expect(text).not.toContain(secret);
    }
    expect(text).toContain('[redacted]');
  });
});

describe('metrics under a small cache and a stalling upstream', () => {
  const STALLING = 'stalling.corp.example:5000';
  let dir: string;
  let registry: RegistryHandle;
  let scripted: ScriptedRegistry;
  let agent: InProcessAgent;

  const scrape = async (): Promise<Map<string, number>> => parseMetrics(await (await request(`${agent.runtime.healthUrl}/metrics`)).body.text());

  beforeAll(async () => {
    dir = await makeTempDir('rpa-obs-small');
    [registry, scripted] = await Promise.all([startRegistry(), startScriptedRegistry()]);
    agent = await startAgent({
      dir,
      cacheMaxBytes: '1MiB',
      // Short, so that a stalled body times out within the test.
      extraToml: 'upstream_idle_timeout = "500ms"',
      mirrors: [
        { registry: REGISTRY, upstream: registry.url },
        { registry: STALLING, upstream: scripted.url },
      ],
    });
  });

  afterAll(async () => {
    await agent?.stop();
    await scripted?.stop();
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('counts evictions and cache entries when blobs no longer fit', async () => {
    const blobs = [makeRandomBlob(400 * 1024), makeRandomBlob(400 * 1024), makeRandomBlob(400 * 1024)];
    for (const blob of blobs) await pushBlob(registry.url, 'team/app', blob);
    for (const blob of blobs) {
      const response = await request(`${agent.url}/v2/team/app/blobs/${blob.digest}?ns=${REGISTRY}`);
      expect(Buffer.from(await response.body.arrayBuffer()).equals(blob.bytes)).toBe(true);
    }
    // Three 400 KiB blobs under 1 MiB: the commit of the third evicts the first.
    await pollUntil(async () => sum(await scrape(), 'registry_proxy_cache_evictions_total') >= 1, { timeoutMs: 5_000, what: 'an eviction' });
    const m = await scrape();
    expect(sum(m, 'registry_proxy_cache_evictions_total')).toBe(1);
    expect(sum(m, 'registry_proxy_cache_entries')).toBe(agent.runtime.cache.stats().entries);
    expect(sum(m, 'registry_proxy_cache_entries')).toBe(2);
    expect(sum(m, 'registry_proxy_cache_bytes')).toBeLessThanOrEqual(1024 * 1024);
  });

  it('counts an upstream that goes silent mid-body as body_timeout, with the cause in the log', async () => {
    const bytes = randomBytes(64 * 1024);
    const digest = sha256(bytes);
    scripted.on('GET', `/v2/team/app/blobs/${digest}`, (req, res) => {
      req.resume();
      // A resume (Range) is refused: one stall, one timeout.
      if (req.headers.range) {
        res.writeHead(503, { 'content-type': 'application/json', 'content-length': '2' });
        res.end('{}');
        return;
      }
      // Headers and the first KiB, then silence; the connection stays open until the test ends.
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(bytes.length) });
      res.write(bytes.subarray(0, 1024));
    });
    const before = sum(await scrape(), 'registry_proxy_upstream_errors_total', { registry: STALLING, cause: 'body_timeout' });
    const response = await request(`${agent.url}/v2/team/app/blobs/${digest}?ns=${STALLING}`);
    expect(response.statusCode).toBe(200);
    // The agent cuts the client's connection rather than complete a short body.
    await expect(response.body.arrayBuffer()).rejects.toThrow();
    const m = await scrape();
    expect(sum(m, 'registry_proxy_upstream_errors_total', { registry: STALLING, cause: 'body_timeout' }) - before).toBe(1);
    expect(sum(m, 'registry_proxy_upstream_errors_total', { registry: STALLING, cause: 'body_cut' })).toBe(0);
    const lines = agent.logs.filter((l) => l['msg'] === 'upstream failing' && l['registry'] === STALLING && l['cause'] === 'body_timeout');
    expect(lines).toHaveLength(1);
    expect(String(lines[0]?.['detail'])).toMatch(/upstream sent nothing for 500 ms \(upstream_idle_timeout\)/);
  });
});

describe('token metrics and no secrets on /metrics after authenticated pulls', () => {
  const AGENT_AUTH = 'agent-auth.corp.example:5000';
  const PASSTHROUGH = 'passthrough.corp.example:5000';
  const THROUGH_CP = 'through-cp.corp.example:5000';
  const VIRTUAL = 'registry.virtual:5000';
  const PASSWORD = 'pw-4f1c9e7a-secret';
  const CLIENT_SECRET = 'cs-8d2b6a05-secret';
  let tokens: TokenRegistry;
  let oauth: OAuthServer;
  let agent: InProcessAgent;
  let image: TestImage;
  let stack: CpStack | undefined;

  beforeAll(async () => {
    [tokens, image] = await Promise.all([startTokenRegistry({ users: { alice: PASSWORD } }), makeImage({ layers: 1, layerBytes: 4096 })]);
    await tokens.push('team/app', 'v1', image);
    const realm = new URL(tokens.tokenServer.url);
    stack = await startCpStack({
      dir: { name: 'rpa-obs-auth' },
      // The token realm is reached through the Connectivity Proxy too, as one more virtual host.
      virtualHosts: { [VIRTUAL]: tokens.registry.url, [realm.host]: realm.origin },
      oauth: { clientId: 'sb-agent', clientSecret: CLIENT_SECRET },
      agent: {
        mirrors: [
          // The token server listens on another loopback port than the registry: listed, as an admin would.
          { registry: AGENT_AUTH, upstream: tokens.registry.url, username: 'alice', password: PASSWORD, allowedDestinations: [realm.host] },
          { registry: PASSTHROUGH, upstream: tokens.registry.url, allowedDestinations: [realm.host] },
          { registry: THROUGH_CP, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy', username: 'alice', password: PASSWORD },
        ],
      },
    });
    agent = stack.agent;
    oauth = stack.oauth!;
  });

  afterAll(async () => {
    await stack?.stop();
    await tokens?.stop();
  });

  it('counts tokens by who they are for, once each, and /metrics holds no password, token or client secret', async () => {
    const manifest = (registry: string, headers: Record<string, string> = {}) => request(`${agent.url}/v2/team/app/manifests/v1?ns=${registry}`, { headers });
    // The agent's own credential, directly and through the Connectivity Proxy (OAuth token as Proxy-Authorization).
    for (const registry of [AGENT_AUTH, THROUGH_CP]) {
      const response = await manifest(registry);
      expect(response.statusCode).toBe(200);
      await response.body.dump();
    }
    // Passthrough: the puller answers the challenge through the agent's token endpoint.
    const challenged = await manifest(PASSTHROUGH);
    expect(challenged.statusCode).toBe(401);
    await challenged.body.dump();
    const challenge = String(challenged.headers['www-authenticate']);
    const param = (name: string) => new RegExp(`${name}="([^"]*)"`).exec(challenge)?.[1] ?? '';
    const realm = new URL(param('realm'));
    realm.searchParams.set('service', param('service'));
    realm.searchParams.set('scope', param('scope'));
    const basic = `Basic ${Buffer.from(`alice:${PASSWORD}`).toString('base64')}`;
    const tokenResponse = await request(realm, { headers: { authorization: basic } });
    expect(tokenResponse.statusCode).toBe(200);
    const pullerToken = ((await tokenResponse.body.json()) as { token: string }).token;
    const pulled = await manifest(PASSTHROUGH, { authorization: `Bearer ${pullerToken}` });
    expect(pulled.statusCode).toBe(200);
    await pulled.body.dump();

    const text = await (await request(`${agent.runtime.healthUrl}/metrics`)).body.text();
    const m = parseMetrics(text);
    const forAgent = sum(m, 'registry_proxy_token_requests_total', { for: 'agent', status_class: '2xx' });
    const forPuller = sum(m, 'registry_proxy_token_requests_total', { for: 'puller', status_class: '2xx' });
    expect(sum(m, 'registry_proxy_token_requests_total', { registry: AGENT_AUTH, for: 'agent' })).toBeGreaterThanOrEqual(1);
    expect(sum(m, 'registry_proxy_token_requests_total', { registry: THROUGH_CP, for: 'agent' })).toBeGreaterThanOrEqual(1);
    expect(sum(m, 'registry_proxy_token_requests_total', { registry: PASSTHROUGH, for: 'puller' })).toBe(1);
    // Every token the realm issued is counted exactly once: a forwarded one is the puller's, not also the agent's.
    expect(forAgent + forPuller).toBe(tokens.tokenServer.requests.filter((r) => r.status === 200).length);
    expect(oauth.issued.length).toBeGreaterThanOrEqual(1);

    const secrets = [PASSWORD, Buffer.from(`alice:${PASSWORD}`).toString('base64'), CLIENT_SECRET, pullerToken, ...oauth.issued];
    for (const secret of secrets) expect(text).not.toContain(secret);
    // No JWT of any kind (the agent's own registry tokens are never shown to the test), no auth scheme.
    expect(text).not.toMatch(/eyJ[\w-]{10,}|Bearer |Basic /);
    const logs = JSON.stringify(agent.logs);
    for (const secret of secrets) expect(logs).not.toContain(secret);
  });
});

describe('SIGHUP reload counted once (agent process from dist/)', () => {
  let dir: string;
  let child: AgentProcess | undefined;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-obs-sighup');
  });

  afterAll(async () => {
    await child?.process.stop();
    if (dir) await removeTempDir(dir);
  });

  it('a reload that fails in setMirrors, or on a bad file, counts one error each; a good one counts ok', async () => {
    const port = await freePort();
    const closed = await freePort();
    const config = await writeAgentConfig({ dir, port, mirrors: [{ registry: REGISTRY, upstream: `http://127.0.0.1:${closed}` }] });
    const good = await readFile(config, 'utf8');
    child = await startAgentProcess(config, join(dir, 'agent.log'), port);
    const running = child;
    const line = (await running.logs()).split('\n').find((l) => l.includes('"mirror listening"'));
    const health = String((JSON.parse(line ?? '{}') as { health?: unknown }).health);
    const reloads = async (result: string) => sum(parseMetrics(await (await request(`${health}/metrics`)).body.text()), 'registry_proxy_config_reloads_total', { result });
    const failures = async () => (await running.logs()).split('\n').filter((l) => l.includes('configuration reload failed')).length;
    const hangUp = async (expectedFailures: number) => {
      process.kill(running.process.pid, 'SIGHUP');
      await pollUntil(async () => (await failures()) === expectedFailures, { timeoutMs: 10_000, what: `${expectedFailures} failed reload(s) logged` });
    };

    // Loads fine (the file exists), fails when the mirror is built: its docker config is no JSON.
    const badDockerConfig = join(dir, 'dockerconfig.json');
    await writeFile(badDockerConfig, 'not json');
    await writeFile(config, `${good}\n[[mirror]]\nregistry = "other.corp.example:5000"\nupstream = "http://127.0.0.1:${closed}"\ndocker_config_file = "${badDockerConfig}"\n`);
    await hangUp(1);
    expect(await reloads('error')).toBe(1);

    // Does not load at all.
    await writeFile(config, `${good}\nnot toml [\n`);
    await hangUp(2);
    expect(await reloads('error')).toBe(2);

    await writeFile(config, good);
    process.kill(running.process.pid, 'SIGHUP');
    await pollUntil(async () => (await reloads('ok')) === 1, { timeoutMs: 10_000, what: 'a good reload counted' });
    expect(await reloads('error')).toBe(2);
  });
});
