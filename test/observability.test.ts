import { Writable } from 'node:stream';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../agent/log.ts';
import { type InProcessAgent, startAgent } from './fixtures/agent.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { makeImage, makeRandomBlob, pushBlob, pushImage } from './fixtures/image.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const REGISTRY = 'registry.corp.example:5000';

/** Parses the Prometheus text format into `name{labels}` → value. */
function parseMetrics(text: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const at = line.lastIndexOf(' ');
    values.set(line.slice(0, at), Number(line.slice(at + 1)));
  }
  return values;
}

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
    expect(sum(m, 'registry_proxy_cache_bytes')).toBe(blob.bytes.length + image.manifest.length);
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
      expect(sum(m, 'registry_proxy_upstream_errors_total', { registry: REGISTRY, cause: 'unreachable' })).toBeGreaterThanOrEqual(2);
      expect(sum(m, 'registry_proxy_upstream_up', { registry: REGISTRY })).toBe(0);
      // Two failed requests (each retried once) and a probe: one log line for the state change.
      expect(agent.logs.slice(logsBefore).filter((l) => l['msg'] === 'upstream failing')).toHaveLength(1);
    } finally {
      await proxy.setFault(undefined);
    }
    await agent.runtime.probeNow();
    expect(sum(await scrape(), 'registry_proxy_upstream_up', { registry: REGISTRY })).toBe(1);
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
