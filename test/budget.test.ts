/**
 * Issue 16: the tunnel budget. Agents in this process (so a test can start a download as preload
 * does, `Mirror.blob` at background priority) against the real Debian docker-registry; a counting
 * proxy in front of it shows which blob downloads reached upstream and when, the Connectivity
 * Proxy double carries the route whose budget is shared. Times are only ever bounded from below:
 * a budget may make a pull slower than its bytes allow, never faster.
 */
import { createHash } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Counter, Gauge } from 'prom-client';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BURST_SECONDS } from '../agent/admission/byte-rate.ts';
import type { BlobReadable } from '../agent/cache/blob-reader.ts';
import type { Mirror } from '../agent/mirror/mirror.ts';
import type { Digest } from '../agent/oci/digest.ts';
import { parseRepositoryName } from '../agent/oci/reference.ts';
import { type ConfiguredAgent, startConfiguredAgent } from './fixtures/configured-agent.ts';
import type { TestMirror } from './fixtures/agent.ts';
import { type ConnectivityProxy, startConnectivityProxy } from './fixtures/connectivity-proxy.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { type MemoryBlob, makeRandomBlob, pushBlob } from './fixtures/image.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const MiB = 1024 * 1024;
const REGISTRY = 'registry.corp.example:5000';
const OTHER = 'other.corp.example:5000';
const REPO = 'team/app';
const NAME = parseRepositoryName(REPO);
const RATE_MIB = 20;

let dir: string;
let registry: RegistryHandle;
/** 40 MiB, for the rate of one mirror. */
let large: MemoryBlob;
/** 20 MiB each, one per mirror, for the rate of the tunnel. */
let halves: [MemoryBlob, MemoryBlob];
/** Small blobs for the slot tests. */
let small: MemoryBlob[];

const started: Array<{ stop(): Promise<void> }> = [];
let testIndex = 0;

beforeAll(async () => {
  dir = await makeTempDir('rpa-budget');
  registry = await startRegistry();
  large = makeRandomBlob(40 * MiB);
  halves = [makeRandomBlob(20 * MiB), makeRandomBlob(20 * MiB)];
  small = [makeRandomBlob(2 * MiB), makeRandomBlob(MiB), makeRandomBlob(MiB), makeRandomBlob(MiB)];
  for (const blob of [large, ...halves, ...small]) await pushBlob(registry.url, REPO, blob);
}, 120_000);

afterEach(async () => {
  for (const part of started.splice(0).reverse()) await part.stop();
});

afterAll(async () => {
  await registry?.stop();
  if (dir) await removeTempDir(dir);
});

async function agentWith(mirrors: TestMirror[], connectivityProxy?: { url: string; lines: string[] }): Promise<ConfiguredAgent> {
  testIndex += 1;
  const agentDir = join(dir, `agent-${testIndex}`);
  await mkdir(agentDir);
  const agent = await startConfiguredAgent({ dir: agentDir, mirrors, ...(connectivityProxy ? { connectivityProxy } : {}) });
  started.push(agent);
  return agent;
}

async function counting(): Promise<CountingProxy> {
  const proxy = await startCountingProxy(registry.url);
  started.push(proxy);
  return proxy;
}

async function connectivityProxy(virtualHosts: Record<string, string>): Promise<ConnectivityProxy> {
  const cp = await startConnectivityProxy({ virtualHosts });
  started.push(cp);
  return cp;
}

function mirrorOf(agent: ConfiguredAgent, registryName: string): Mirror {
  const mirror = agent.runtime.mirrors.list().find((m) => m.registry === registryName);
  if (!mirror) throw new Error(`no mirror ${registryName}`);
  return mirror;
}

/** GETs a blob through the agent's mirror port; resolves with its digest as received. */
async function pull(agent: ConfiguredAgent, ns: string, digest: string): Promise<string> {
  const response = await request(`${agent.url}/v2/${REPO}/blobs/${digest}?ns=${ns}`);
  expect(response.statusCode).toBe(200);
  const hash = createHash('sha256');
  for await (const chunk of response.body) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

async function readAll(reader: BlobReadable): Promise<string> {
  const hash = createHash('sha256');
  try {
    for await (const chunk of reader.read(0)) hash.update(chunk);
  } finally {
    reader.close();
  }
  return `sha256:${hash.digest('hex')}`;
}

/** A counter's or gauge's value for exactly these labels (0 when the series does not exist). */
async function valueOf(metric: Counter<string> | Gauge<string>, labels: Record<string, string>): Promise<number> {
  const { values } = await metric.get();
  const match = values.find((v) => Object.entries(labels).every(([key, value]) => v.labels[key] === value) && Object.keys(v.labels).length === Object.keys(labels).length);
  return match?.value ?? 0;
}

/** The seconds `run` took (performance.now: the clock the budgets use too). */
async function timed(run: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await run();
  return (performance.now() - start) / 1000;
}

/** The fewest seconds `mib` MiB can take through a rate of RATE_MIB MiB/s that starts with a full bucket. */
function leastSeconds(mib: number): number {
  return (mib - RATE_MIB * BURST_SECONDS) / RATE_MIB;
}

describe('max_bytes_per_second of a mirror', () => {
  it(`a 40 MiB blob through a mirror with max_bytes_per_second = "${RATE_MIB}MiB" takes at least (40 MiB − burst) / ${RATE_MIB} MiB/s`, async () => {
    const agent = await agentWith([{ registry: REGISTRY, upstream: registry.url, lines: [`max_bytes_per_second = "${RATE_MIB}MiB"`] }]);
    let digest = '';
    const seconds = await timed(async () => (digest = await pull(agent, REGISTRY, large.digest)));
    expect(digest).toBe(large.digest);
    // 35 MiB past the quarter second of burst at 20 MiB/s: 1.75 s.
    expect(seconds).toBeGreaterThanOrEqual(leastSeconds(40));
    const { metrics } = agent.runtime;
    // Chunks that found the bytes in the bucket passed without waiting: most did wait.
    expect(await valueOf(metrics.budgetThrottledBytes, { budget: REGISTRY, priority: 'live' })).toBeGreaterThan(20 * MiB);
    expect(await valueOf(metrics.budgetWaitSeconds, { budget: REGISTRY, priority: 'live', kind: 'bytes' })).toBeGreaterThan(leastSeconds(40) / 2);
    expect(await valueOf(metrics.budgetWaits, { budget: REGISTRY, priority: 'live', kind: 'slot' })).toBe(0);
  }, 60_000);
});

describe('download slots by priority (max_fetches)', () => {
  it('a live pull started while preload holds and waits gets the last slot at once; a pull joining a waiting preload raises it', async () => {
    const upstream = await counting();
    const [held, waiting, live] = small as [MemoryBlob, MemoryBlob, MemoryBlob];
    // The first preload download crawls (512 KiB/s for 2 MiB): it holds its slot through the test.
    await upstream.setFault({ kind: 'throttle', bytesPerSecond: MiB / 2, pathIncludes: held.digest });
    const agent = await agentWith([{ registry: REGISTRY, upstream: upstream.url, lines: ['max_fetches = 2'] }]);
    const mirror = mirrorOf(agent, REGISTRY);
    const { metrics } = agent.runtime;

    // Preload, as the preloader calls it: two blobs at background priority. Of two slots,
    // background takes one; the second preload waits although a slot is free.
    const preloadHeld = await mirror.blob(NAME, held.digest as Digest, { priority: 'background' });
    const preloadWaiting = mirror.blob(NAME, waiting.digest as Digest, { priority: 'background' });
    preloadWaiting.catch(() => undefined);
    await pollUntil(async () => (await valueOf(metrics.fillsWaiting, { registry: REGISTRY })) === 1, { what: 'the second preload waiting for a slot', timeoutMs: 10_000, intervalMs: 10 });

    // A pull of a third blob takes the free slot at once.
    expect(await pull(agent, REGISTRY, live.digest)).toBe(live.digest);
    const gets = (blob: MemoryBlob) => upstream.requests.filter((r) => r.method === 'GET' && r.path.includes(blob.digest));
    expect(gets(waiting)).toHaveLength(0);
    expect(gets(held).map((r) => r.done)).toEqual([false]);

    // A pull of the blob preload waits for joins that download and raises it: it starts now, while
    // the first preload still holds its slot.
    expect(await pull(agent, REGISTRY, waiting.digest)).toBe(waiting.digest);
    expect(gets(waiting)).toHaveLength(1);
    expect(gets(held).map((r) => r.done)).toEqual([false]);
    expect(await readAll(await preloadWaiting)).toBe(waiting.digest);
    // It waited as background and passed as live.
    expect(await valueOf(metrics.budgetWaits, { budget: REGISTRY, priority: 'live', kind: 'slot' })).toBe(1);
    expect(await valueOf(metrics.budgetWaits, { budget: REGISTRY, priority: 'background', kind: 'slot' })).toBe(0);

    expect(await readAll(preloadHeld)).toBe(held.digest);
  }, 60_000);
});

describe('the Connectivity Proxy budget, shared by every mirror on the route', () => {
  /** Two mirrors on the route, each its own virtual host of the Cloud Connector; no budget of their own. */
  const routeMirrors: TestMirror[] = [
    { registry: REGISTRY, upstream: 'http://one.virtual:5000', route: 'connectivity-proxy' },
    { registry: OTHER, upstream: 'http://two.virtual:5000', route: 'connectivity-proxy' },
  ];

  it(`max_bytes_per_second = "${RATE_MIB}MiB" holds for two mirrors together: 2 × 20 MiB take at least (40 MiB − burst) / ${RATE_MIB} MiB/s`, async () => {
    const cp = await connectivityProxy({ 'one.virtual:5000': registry.url, 'two.virtual:5000': registry.url });
    const agent = await agentWith(routeMirrors, { url: cp.url, lines: [`max_bytes_per_second = "${RATE_MIB}MiB"`] });
    const [a, b] = halves;
    let digests: string[] = [];
    const seconds = await timed(async () => (digests = await Promise.all([pull(agent, REGISTRY, a.digest), pull(agent, OTHER, b.digest)])));
    expect(digests).toEqual([a.digest, b.digest]);
    // Each mirror alone would be allowed 20 MiB in (20 − 5) / 20 = 0.75 s: together they share 20 MiB/s.
    expect(seconds).toBeGreaterThanOrEqual(leastSeconds(40));
    const { metrics } = agent.runtime;
    expect(await valueOf(metrics.budgetThrottledBytes, { budget: 'connectivity-proxy', priority: 'live' })).toBeGreaterThan(20 * MiB);
    // Neither mirror has a rate of its own.
    expect(await valueOf(metrics.budgetThrottledBytes, { budget: REGISTRY, priority: 'live' })).toBe(0);
    expect(await valueOf(metrics.budgetThrottledBytes, { budget: OTHER, priority: 'live' })).toBe(0);
  }, 60_000);

  it('max_fetches = 1 holds for two mirrors together: the second mirror\'s download starts once the first ended', async () => {
    const upstream = await counting();
    const cp = await connectivityProxy({ 'one.virtual:5000': upstream.url, 'two.virtual:5000': upstream.url });
    const [first, second] = small as [MemoryBlob, MemoryBlob];
    await upstream.setFault({ kind: 'throttle', bytesPerSecond: 4 * MiB, pathIncludes: first.digest });
    const agent = await agentWith(routeMirrors, { url: cp.url, lines: ['max_fetches = 1'] });
    const pulls = [pull(agent, REGISTRY, first.digest)];
    await upstream.waitFor((requests) => requests.some((r) => r.method === 'GET' && r.path.includes(first.digest)));
    pulls.push(pull(agent, OTHER, second.digest));
    await upstream.waitFor((requests) => requests.some((r) => r.method === 'GET' && r.path.includes(second.digest)));
    // When the second mirror's GET reached upstream, every byte of the first mirror's download had
    // been sent (the proxy's response may still be in its last pacing pause: the agent had them all).
    expect(upstream.requests.filter((r) => r.method === 'GET' && r.path.includes(first.digest)).map((r) => r.bytes)).toEqual([first.bytes.length]);
    expect(await Promise.all(pulls)).toEqual([first.digest, second.digest]);
    const { metrics } = agent.runtime;
    expect(await valueOf(metrics.budgetWaits, { budget: 'connectivity-proxy', priority: 'live', kind: 'slot' })).toBe(1);
    // The mirrors' own slots (8 each by default) never made anyone wait.
    expect(await valueOf(metrics.budgetWaits, { budget: OTHER, priority: 'live', kind: 'slot' })).toBe(0);
  }, 60_000);
});
