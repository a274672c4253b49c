import { mkdir, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, type InProcessAgent, startAgent, startAgentProcess, writeAgentConfig } from './fixtures/agent.ts';
import { type ConnectivityProxy, startConnectivityProxy } from './fixtures/connectivity-proxy.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { sha256 } from './fixtures/digest.ts';
import { type Figures, recordFigures } from './fixtures/figures.ts';
import { type MemoryBlob, makeRandomBlob, pushBlob } from './fixtures/image.ts';
import { peakRssMiB, resetPeakRss, rssMiB } from './fixtures/memory.ts';
import { freePort } from './fixtures/net.ts';
import { type PacedRegistry, type PacedRequest, startPacedRegistry } from './fixtures/paced-registry.ts';
import { pollUntil } from './fixtures/poll.ts';
import { runCommand } from './fixtures/process.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const REGISTRY = 'registry.corp.example:5000';
/**
 * A client that has no answer after this long counts as hung. Far above any honest answer here
 * (the slowest path, a fill with two resumes against 2 s upstream timeouts, ends in a few
 * seconds), far below the test timeout, so a hang is reported as such rather than as a timeout.
 */
const CLIENT_DEADLINE_MS = 10_000;

interface Outcome {
  status: number;
  /** False when the connection was cut (never a short 200 counted as success). */
  complete: boolean;
  body: Buffer;
  ms: number;
  /** No answer within CLIENT_DEADLINE_MS. */
  hung: boolean;
}

/** GETs a blob, giving up (and saying so) after CLIENT_DEADLINE_MS. */
async function fetchBlob(base: string, digest: string): Promise<Outcome> {
  const started = performance.now();
  const signal = AbortSignal.timeout(CLIENT_DEADLINE_MS);
  try {
    const response = await request(`${base}/v2/team/app/blobs/${digest}?ns=${REGISTRY}`, { signal });
    const body = Buffer.from(await response.body.arrayBuffer());
    return { status: response.statusCode, complete: true, body, ms: performance.now() - started, hung: false };
  } catch {
    return { status: 0, complete: false, body: Buffer.alloc(0), ms: performance.now() - started, hung: signal.aborted };
  }
}

function expectBlob(result: Outcome, blob: MemoryBlob): void {
  expect(result.status).toBe(200);
  expect(result.complete).toBe(true);
  expect(result.body.length).toBe(blob.bytes.length);
  expect(sha256(result.body)).toBe(blob.digest);
}

/** Every committed file hashes to its name: the cache is consistent. Returns its bytes. */
async function expectConsistentCache(cacheDir: string): Promise<number> {
  const dir = join(cacheDir, 'blobs', 'sha256');
  let bytes = 0;
  for (const name of await readdir(dir)) {
    const content = await readFile(join(dir, name));
    expect(sha256(content)).toBe(`sha256:${name}`);
    bytes += content.length;
  }
  return bytes;
}

/** What one test did and what its clients got: the figures the README quotes. */
class Tally {
  faults = 0;
  requests = 0;
  servedWhole = 0;
  /** Answered with an error status (an OCI error body). */
  errorAnswers = 0;
  /** Connection cut by the agent: how it refuses bytes it could not verify. */
  cut = 0;
  /** A 200 whose body is short or wrong: must stay 0. */
  partialOrWrong = 0;
  hung = 0;
  slowestMs = 0;

  async fetch(base: string, blob: MemoryBlob): Promise<Outcome> {
    const result = await fetchBlob(base, blob.digest);
    this.requests += 1;
    this.slowestMs = Math.max(this.slowestMs, result.ms);
    if (result.hung) this.hung += 1;
    else if (!result.complete) this.cut += 1;
    else if (result.status !== 200) this.errorAnswers += 1;
    else if (result.body.length === blob.bytes.length && sha256(result.body) === blob.digest) this.servedWhole += 1;
    else this.partialOrWrong += 1;
    return result;
  }

  figures(): Figures {
    const { faults, requests, servedWhole, errorAnswers, cut, partialOrWrong, hung } = this;
    return { faults, requests, servedWhole, errorAnswers, cut, partialOrWrong, hung, slowestMs: Math.round(this.slowestMs) };
  }
}

/** Sums over the whole suite, reported once at the end. */
const totals = { tests: 0, faults: 0, requests: 0, servedWhole: 0, errorAnswers: 0, cut: 0, partialOrWrong: 0, hung: 0 };

async function report(test: string, tally: Tally, extra: Figures = {}): Promise<void> {
  totals.tests += 1;
  totals.faults += tally.faults;
  totals.requests += tally.requests;
  totals.servedWhole += tally.servedWhole;
  totals.errorAnswers += tally.errorAnswers;
  totals.cut += tally.cut;
  totals.partialOrWrong += tally.partialOrWrong;
  totals.hung += tally.hung;
  await recordFigures('faults', test, { ...tally.figures(), ...extra });
}

/** Fails the test on anything a client must never see. */
function expectNothingLost(tally: Tally): void {
  expect(tally.partialOrWrong).toBe(0);
  expect(tally.hung).toBe(0);
}

/** The metrics endpoint of a child agent, from its "mirror listening" log line. */
async function healthUrlOf(child: AgentProcess): Promise<string> {
  const line = (await child.logs()).split('\n').find((l) => l.includes('"mirror listening"'));
  const health = line ? (JSON.parse(line) as { health?: unknown }).health : undefined;
  if (typeof health !== 'string') throw new Error('no health URL in the agent log');
  return health;
}

async function evictionsSoFar(healthUrl: string): Promise<number> {
  const response = await request(`${healthUrl}/metrics`);
  const text = await response.body.text();
  return Number(/^registry_proxy_cache_evictions_total (\d+)/m.exec(text)?.[1] ?? 0);
}

describe('fault suite', () => {
  let dir: string;
  let registry: RegistryHandle;
  let proxy: CountingProxy;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-faults');
    registry = await startRegistry();
    proxy = await startCountingProxy(registry.url);
  });

  afterAll(async () => {
    await proxy?.stop();
    await registry?.stop();
    if (dir) await removeTempDir(dir);
    await recordFigures('faults', 'total', totals);
  });

  describe('with an in-process agent', () => {
    let agent: InProcessAgent;
    let agentDir: string;

    beforeAll(async () => {
      agentDir = join(dir, 'inproc');
      await mkdir(agentDir);
      agent = await startAgent({ dir: agentDir, mirrors: [{ registry: REGISTRY, upstream: proxy.url }] });
    });

    afterAll(async () => {
      await agent?.stop();
    });

    /** Upstream connections the counting proxy cut for this blob. */
    const cutsOf = (blob: MemoryBlob): number => proxy.requests.filter((r) => r.fault === 'cut' && r.aborted && r.path.includes(blob.digest)).length;

    it('upstream connection cut mid-blob: resumed with a Range request, verified whole, one fill', async () => {
      const tally = new Tally();
      const blob = makeRandomBlob(6 * 1024 * 1024);
      await pushBlob(registry.url, 'team/app', blob);
      // Every request for it is cut after 4 MiB: the first breaks off, the resumed one (2 MiB left) completes.
      await proxy.setFault({ kind: 'cut', pathIncludes: blob.digest, afterBytes: 4 * 1024 * 1024 });
      let results: Outcome[];
      try {
        results = await Promise.all(Array.from({ length: 3 }, () => tally.fetch(agent.url, blob)));
      } finally {
        await proxy.setFault(undefined);
      }
      tally.faults = cutsOf(blob);
      const upstreamGets = proxy.count({ method: 'GET', pathIncludes: blob.digest });
      await report('upstream cut once, resumed', tally, { upstreamGets });
      for (const result of results) expectBlob(result, blob);
      expect(tally.faults).toBe(1);
      expect(upstreamGets).toBe(2);
      // The cut lands near 4 MiB (bytes in flight are lost with the connection); the resume starts where the file ends.
      const resumed = agent.logs.find((l) => l['msg'] === 'resuming a blob download that broke off');
      expect(Number(resumed?.['offset'])).toBeGreaterThan(0);
      expect(Number(resumed?.['offset'])).toBeLessThanOrEqual(4 * 1024 * 1024);
      expect(await readdir(join(agentDir, 'cache', 'blobs', 'sha256'))).toContain(blob.digest.slice(7));
      await expectConsistentCache(join(agentDir, 'cache'));
      expectNothingLost(tally);
    });

    it('upstream cut mid-blob for good: every waiting client gets an error, not a short 200; nothing cached; a retry works', async () => {
      const tally = new Tally();
      const blob = makeRandomBlob(6 * 1024 * 1024);
      await pushBlob(registry.url, 'team/app', blob);
      await proxy.setFault({ kind: 'cut', pathIncludes: blob.digest, afterBytes: 1024 * 1024 });
      let results: Outcome[];
      let upstreamGets: number;
      try {
        results = await Promise.all(Array.from({ length: 5 }, () => tally.fetch(agent.url, blob)));
        upstreamGets = proxy.count({ method: 'GET', pathIncludes: blob.digest });
      } finally {
        await proxy.setFault(undefined);
      }
      tally.faults = cutsOf(blob);
      const failedClients = results.filter((r) => !(r.complete && r.status === 200)).length;
      const cachedAfterFailure = (await readdir(join(agentDir, 'cache', 'blobs', 'sha256'))).includes(blob.digest.slice(7));
      const retry = await tally.fetch(agent.url, blob);
      await report('upstream cut for good', tally, { upstreamGets, failedClients });
      expect(failedClients).toBe(5);
      // One fill: the first request and its two bounded resumes, each cut.
      expect(upstreamGets).toBe(3);
      expect(tally.faults).toBe(3);
      expect(cachedAfterFailure).toBe(false);
      expect(await readdir(join(agentDir, 'cache', 'tmp'))).toEqual([]);
      expectBlob(retry, blob);
      await expectConsistentCache(join(agentDir, 'cache'));
      expectNothingLost(tally);
    });

    it('cache directory deleted while running: detected, refetched, the cache comes back consistent', async () => {
      const tally = new Tally();
      const blob = makeRandomBlob(1024 * 1024);
      await pushBlob(registry.url, 'team/app', blob);
      expectBlob(await tally.fetch(agent.url, blob), blob);
      const before = proxy.count({ method: 'GET', pathIncludes: blob.digest });
      await rm(join(agentDir, 'cache'), { recursive: true, force: true });
      tally.faults += 1;
      expectBlob(await tally.fetch(agent.url, blob), blob);
      const refetched = proxy.count({ method: 'GET', pathIncludes: blob.digest }) - before;
      await pollUntil(async () => (await readdir(join(agentDir, 'cache', 'blobs', 'sha256')).catch((): string[] => [])).includes(blob.digest.slice(7)), {
        timeoutMs: 5_000,
        what: 'the blob cached again',
      });
      expectBlob(await tally.fetch(agent.url, blob), blob);
      const cachedBytes = await expectConsistentCache(join(agentDir, 'cache'));
      await report('cache directory deleted', tally, { upstreamRefetches: refetched, cachedBytesAfter: cachedBytes });
      expect(refetched).toBe(1);
      // Served from the recreated cache: no further upstream request.
      expect(proxy.count({ method: 'GET', pathIncludes: blob.digest })).toBe(before + 1);
      expect(await readdir(join(agentDir, 'cache', 'tmp'))).toEqual([]);
      expect(cachedBytes).toBe(blob.bytes.length);
      expectNothingLost(tally);
    });

    it('a cached file corrupted on disk while running is never served; the cache is consistent after', async () => {
      const tally = new Tally();
      const blob = makeRandomBlob(512 * 1024);
      await pushBlob(registry.url, 'team/app', blob);
      expectBlob(await tally.fetch(agent.url, blob), blob);
      const file = join(agentDir, 'cache', 'blobs', 'sha256', blob.digest.slice(7));
      const handle = await open(file, 'r+');
      await handle.write(Buffer.from('corrupted!'), 0, 10, 1000);
      await handle.close();
      tally.faults += 1;
      const before = proxy.count({ method: 'GET', pathIncludes: blob.digest });
      const served = await tally.fetch(agent.url, blob);
      const refetched = proxy.count({ method: 'GET', pathIncludes: blob.digest }) - before;
      // The refetched copy replaces the corrupted one once its fill commits.
      await pollUntil(async () => sha256(await readFile(file)) === blob.digest, { timeoutMs: 5_000, what: 'the refetched copy committed' });
      await expectConsistentCache(join(agentDir, 'cache'));
      await report('cached file corrupted', tally, { upstreamRefetches: refetched });
      expectBlob(served, blob);
      expect(refetched).toBe(1);
      expect(agent.logs.some((l) => l['msg'] === 'cached blob failed verification: removed, will refetch')).toBe(true);
      expectNothingLost(tally);
    });
  });

  describe('disk full (a 9 MiB tmpfs as cache_dir)', () => {
    let agent: InProcessAgent;
    let agentDir: string;
    let cacheDir: string;

    beforeAll(async () => {
      agentDir = join(dir, 'tmpfs');
      cacheDir = join(agentDir, 'cache');
      await mkdir(cacheDir, { recursive: true });
      const mounted = await runCommand('mount', ['-t', 'tmpfs', '-o', 'size=9m', 'tmpfs', cacheDir]);
      expect(mounted.code, `mounting a tmpfs needs root: ${mounted.stderr}`).toBe(0);
      agent = await startAgent({ dir: agentDir, mirrors: [{ registry: REGISTRY, upstream: proxy.url }] });
    });

    afterAll(async () => {
      await agent?.stop();
      await runCommand('umount', [cacheDir]);
    });

    it('streams without caching when the disk is full, and caches again once space returns', async () => {
      const tally = new Tally();
      const big = makeRandomBlob(20 * 1024 * 1024);
      const a = makeRandomBlob(5 * 1024 * 1024);
      const b = makeRandomBlob(5 * 1024 * 1024);
      for (const blob of [big, a, b]) await pushBlob(registry.url, 'team/app', blob);
      // Larger than the free space: relayed from the first byte.
      expectBlob(await tally.fetch(agent.url, big), big);
      // Two that each fit but not together. Paced, so both start before either has written much:
      // the bytes the first announced count against the second's free-space check, which relays
      // from the start instead of running into ENOSPC mid-write.
      await proxy.setFault({ kind: 'throttle', bytesPerSecond: 16 * 1024 * 1024, pathIncludes: '/blobs/' });
      const [ra, rb] = await Promise.all([tally.fetch(agent.url, a), tally.fetch(agent.url, b)]).finally(() => proxy.setFault(undefined));
      expectBlob(ra!, a);
      expectBlob(rb!, b);
      const bypassed = (await agent.runtime.metrics.cacheBypassed.get()).values[0]?.value ?? 0;
      tally.faults = bypassed;
      // The big one and one of the two relayed from the start (no room), the other cached; no ENOSPC.
      const reasons = agent.logs.filter((l) => l['msg'] === 'streaming without caching').map((l) => String(l['err']));
      expect(reasons.filter((r) => r.includes('not enough free disk space'))).toHaveLength(2);
      expect(reasons.some((r) => r.includes('ENOSPC'))).toBe(false);
      const cachedOfTwo = (await readdir(join(cacheDir, 'blobs', 'sha256'))).filter((name) => [a, b].some((blob) => blob.digest.slice(7) === name));
      expect(cachedOfTwo).toHaveLength(1);
      expect(bypassed).toBeGreaterThanOrEqual(2);
      expect(await readdir(join(cacheDir, 'blobs', 'sha256'))).not.toContain(big.digest.slice(7));
      expect(await readdir(join(cacheDir, 'tmp'))).toEqual([]);
      await expectConsistentCache(cacheDir);

      const grown = await runCommand('mount', ['-o', 'remount,size=64m', cacheDir]);
      expect(grown.code, grown.stderr).toBe(0);
      expectBlob(await tally.fetch(agent.url, big), big);
      await pollUntil(async () => (await readdir(join(cacheDir, 'blobs', 'sha256'))).includes(big.digest.slice(7)), { timeoutMs: 5_000, what: 'big blob cached' });
      const upstreamGets = proxy.count({ method: 'GET', pathIncludes: big.digest });
      expectBlob(await tally.fetch(agent.url, big), big);
      await report('disk full', tally, { relayedWithoutCaching: bypassed });
      expect(proxy.count({ method: 'GET', pathIncludes: big.digest })).toBe(upstreamGets);
      await expectConsistentCache(cacheDir);
      expectNothingLost(tally);
    });
  });

  describe('Connectivity Proxy flapping between 503 and 200', () => {
    let child: AgentProcess | undefined;
    let cp: ConnectivityProxy;
    let agentDir: string;

    beforeAll(async () => {
      agentDir = join(dir, 'flap');
      await mkdir(agentDir);
      cp = await startConnectivityProxy({ virtualHosts: { 'registry.virtual:5000': registry.url }, locations: { flappy: 'connected' } });
      const port = await freePort();
      const config = await writeAgentConfig({
        dir: agentDir,
        port,
        // Short upstream timeouts: a request that reached a closing tunnel cannot keep a client waiting long.
        extraToml: 'upstream_response_timeout = "2s"\nupstream_idle_timeout = "2s"',
        connectivityProxy: { url: cp.url, locationId: 'flappy' },
        mirrors: [{ registry: REGISTRY, upstream: 'http://registry.virtual:5000', route: 'connectivity-proxy' }],
      });
      // A child process, so its memory is the agent's alone.
      child = await startAgentProcess(config, join(agentDir, 'agent.log'), port);
    });

    afterAll(async () => {
      await child?.process.stop();
      await cp?.stop();
    });

    it('never serves a partial blob, answers every client in bounded time, memory stays bounded; afterwards every blob is served whole and the cache is consistent', async () => {
      const agent = child!;
      const tally = new Tally();
      const blobs = Array.from({ length: 8 }, () => makeRandomBlob(768 * 1024));
      for (const blob of blobs) await pushBlob(registry.url, 'team/app', blob);
      const rssBefore = await rssMiB(agent.process.pid);
      await resetPeakRss(agent.process.pid);
      let connected = true;
      // The fault injector: flips the Cloud Connector's state every 40 ms while the clients run.
      const flapper = setInterval(() => {
        connected = !connected;
        cp.setLocation('flappy', connected ? 'connected' : 'disconnected');
        tally.faults += 1;
      }, 40);
      const served = new Set<string>();
      const unexpectedStatuses: number[] = [];
      // A fixed number of rounds, each asking again for every blob not yet served, so that every
      // request goes upstream through the flapping tunnel (a served blob would be a cache hit).
      const ROUNDS = 12;
      try {
        for (let round = 0; round < ROUNDS; round += 1) {
          const pending = blobs.filter((blob) => !served.has(blob.digest));
          const results = await Promise.all(pending.map((blob) => tally.fetch(agent.url, blob).then((r) => ({ blob, r }))));
          for (const { blob, r } of results) {
            if (r.complete && r.status === 200 && sha256(r.body) === blob.digest) served.add(blob.digest);
            else if (r.complete && r.status !== 200 && ![502, 503].includes(r.status)) unexpectedStatuses.push(r.status);
          }
        }
      } finally {
        clearInterval(flapper);
        cp.setLocation('flappy', 'connected');
      }
      const peak = await peakRssMiB(agent.process.pid);
      const whileFlapping = tally.figures();
      // Connected for good: every blob is served whole, each from one more fill at most.
      for (const blob of blobs) expectBlob(await tally.fetch(agent.url, blob), blob);
      const cacheDir = join(agentDir, 'cache');
      const cachedBytes = await expectConsistentCache(cacheDir);
      const leftoverTemp = await readdir(join(cacheDir, 'tmp'));
      await report('connectivity proxy flapping', tally, {
        rounds: ROUNDS,
        requestsWhileFlapping: whileFlapping['requests'] ?? 0,
        servedWholeWhileFlapping: whileFlapping['servedWhole'] ?? 0,
        cp503NoConnector: cp.requests.filter((r) => r.rejected === 'location').length,
        cpTunnelsClosed: cp.requests.filter((r) => r.rejected === 'tunnel-closed').length,
        rssBeforeMiB: Math.round(rssBefore),
        peakRssMiB: Math.round(peak),
        cachedBytes,
      });
      // While flapping, a client gets the blob whole, a 502/503 OCI error, or a cut connection: nothing else.
      expect(unexpectedStatuses).toEqual([]);
      expect(cachedBytes).toBe(blobs.reduce((sum, b) => sum + b.bytes.length, 0));
      expect(leftoverTemp).toEqual([]);
      // Bounded, not flat: measured 20-50 MiB above idle, mostly heap growth from the requests.
      // Holding on to the bytes of the failed fills (~100 of 768 KiB) would push it past the bound.
      expect(peak - rssBefore).toBeLessThan(96);
      expectNothingLost(tally);
    });
  });

  describe('SIGKILL during eviction', () => {
    let child: AgentProcess | undefined;
    let paced: PacedRegistry;

    beforeAll(async () => {
      paced = await startPacedRegistry();
    });

    afterAll(async () => {
      await child?.process.stop();
      await paced?.stop();
    });

    it('killed after evictions started and while more were due: restarts consistent, under its limit, and the next pulls succeed', async () => {
      const tally = new Tally();
      const agentDir = join(dir, 'evict-kill');
      await mkdir(agentDir);
      const port = await freePort();
      // Enough download slots for every held fill to be open at once (slots are not under test here).
      const config = await writeAgentConfig({ dir: agentDir, port, cacheMaxBytes: '4MiB', extraToml: 'max_fills_per_mirror = 32', mirrors: [{ registry: REGISTRY, upstream: paced.url }] });
      child = await startAgentProcess(config, join(agentDir, 'agent-1.log'), port);
      const health = await healthUrlOf(child);
      const half = 256 * 1024;
      // 4 MiB hold eight of these, fills included: a fill claims its room when it starts, evicting
      // the least recently used blobs. Nine are cached one after the other (the ninth evicts), then
      // fifteen start at once, held half-sent: those that get room evict a cached blob each (a
      // burst of evictions), the rest are relayed. Seven are released together, eight stay held
      // until after the kill (fills open; those that got room with half-written temp files).
      const blobs = Array.from({ length: 24 }, () => makeRandomBlob(512 * 1024));
      const first = blobs.slice(0, 9);
      const burst = blobs.slice(9, 16);
      const tail = blobs.slice(16);
      for (const blob of first) paced.serve(blob);
      for (const blob of [...burst, ...tail]) paced.serve(blob, { holdAfterBytes: half });
      const firstResults: Outcome[] = [];
      for (const blob of first) firstResults.push(await tally.fetch(child.url, blob));
      const running = Promise.all([...burst, ...tail].map((blob) => tally.fetch(child!.url, blob))).then((held) => [...firstResults, ...held]);

      // Every held fill is open with half its bytes in the agent (its temp file, or relay memory).
      const held = [...burst, ...tail];
      await paced.waitFor((reqs: readonly PacedRequest[]) => held.every((b) => reqs.some((r) => r.digest === b.digest && r.bytes >= half)));
      await pollUntil(async () => (await evictionsSoFar(health)) >= 1, { timeoutMs: 10_000, what: 'the first eviction' });
      for (const blob of burst) paced.release(blob.digest);
      // Kill as soon as the first blob of the burst is committed. How much more of the burst is
      // committed by then varies; what does not: blobs were evicted to make room for fills, and the
      // tail's eight fills are open (those that got room with half-written temp files).
      let evictionsBeforeKill = 0;
      const committedBurst = async (): Promise<boolean> => {
        const names = await readdir(join(agentDir, 'cache', 'blobs', 'sha256'));
        return burst.some((b) => names.includes(b.digest.slice(7)));
      };
      await pollUntil(async () => (evictionsBeforeKill = await evictionsSoFar(health)) >= 2 && (await committedBurst()), {
        timeoutMs: 10_000,
        intervalMs: 5,
        what: 'the burst committing',
      });
      const fillsOpenAtKill = paced.requests.filter((r) => !r.done).length;
      process.kill(child.process.pid, 'SIGKILL');
      tally.faults += 1;
      await child.process.exited;
      const results = await running;
      for (const blob of tail) paced.release(blob.digest);

      child = await startAgentProcess(config, join(agentDir, 'agent-2.log'), port);
      await pollUntil(async () => (await child!.logs()).includes('cache index rebuilt'), { timeoutMs: 10_000, what: 'index rebuilt' });
      const cacheDir = join(agentDir, 'cache');
      const leftoverTemp = await readdir(join(cacheDir, 'tmp'));
      await pollUntil(async () => (await expectConsistentCache(cacheDir)) <= 4 * 1024 * 1024, { timeoutMs: 5_000, what: 'cache under its limit' });
      const survived = (await readdir(join(cacheDir, 'blobs', 'sha256'))).length;
      const upstreamBefore = paced.requests.length;
      // Pulls after the restart: some of each group (the tail's were cut by the kill).
      const after = [...first.slice(0, 2), ...burst.slice(0, 2), ...tail.slice(0, 2)];
      const afterResults = [];
      for (const blob of after) afterResults.push(await tally.fetch(child.url, blob));
      const stats = await Promise.all((await readdir(join(cacheDir, 'blobs', 'sha256'))).map((f) => stat(join(cacheDir, 'blobs', 'sha256', f))));
      const cachedBytes = stats.reduce((sum, s) => sum + s.size, 0);
      await report('SIGKILL during eviction', tally, {
        evictionsBeforeKill,
        fillsOpenAtKill,
        clientsCutByKill: results.filter((r) => !r.complete).length,
        blobsCachedAfterRestart: survived,
        refetchedAfterRestart: paced.requests.length - upstreamBefore,
        cachedBytes,
      });
      // The kill landed mid-way: at least the eight held fills (whose commits would evict) were open.
      expect(fillsOpenAtKill).toBeGreaterThanOrEqual(tail.length);
      // A fill open at the kill never reached its client whole: the last byte is withheld until verified.
      for (const [i, blob] of blobs.entries()) {
        const result = results[i]!;
        if (result.complete && result.status === 200) expect(sha256(result.body)).toBe(blob.digest);
        if (tail.includes(blob)) expect(result.complete && result.status === 200).toBe(false);
      }
      expect(leftoverTemp).toEqual([]);
      for (const [i, blob] of after.entries()) expectBlob(afterResults[i]!, blob);
      expect(cachedBytes).toBeLessThanOrEqual(4 * 1024 * 1024);
      await expectConsistentCache(cacheDir);
      expectNothingLost(tally);
    });
  });
});
