import { createHash } from 'node:crypto';
import { mkdir, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, type InProcessAgent, startAgent, startAgentProcess, writeAgentConfig } from './fixtures/agent.ts';
import { type ConnectivityProxy, startConnectivityProxy } from './fixtures/connectivity-proxy.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { type MemoryBlob, makeRandomBlob, pushBlob } from './fixtures/image.ts';
import { freePort } from './fixtures/net.ts';
import { pollUntil } from './fixtures/poll.ts';
import { runCommand } from './fixtures/process.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const REGISTRY = 'registry.corp.example:5000';

function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** GETs a blob; `complete` is false when the connection was cut (never a short 200 counted as success). */
async function fetchBlob(base: string, digest: string): Promise<{ status: number; complete: boolean; body: Buffer }> {
  try {
    const response = await request(`${base}/v2/team/app/blobs/${digest}?ns=${REGISTRY}`);
    const body = Buffer.from(await response.body.arrayBuffer());
    return { status: response.statusCode, complete: true, body };
  } catch {
    return { status: 0, complete: false, body: Buffer.alloc(0) };
  }
}

function expectBlob(result: { status: number; complete: boolean; body: Buffer }, blob: MemoryBlob): void {
  expect(result.status).toBe(200);
  expect(result.complete).toBe(true);
  expect(result.body.length).toBe(blob.bytes.length);
  expect(sha256(result.body)).toBe(blob.digest);
}

/** Every committed file hashes to its name and no temp file is left: the cache is consistent. */
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

/** Faults injected, counted for the README's figures. */
const figures = { faults: 0, lostOrPartial: 0 };

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
    console.log(`fault suite: ${figures.faults} faults injected, ${figures.lostOrPartial} partial or wrong blobs served`);
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

    it('upstream connection cut mid-blob: resumed with a Range request, verified whole, one fill', async () => {
      const blob = makeRandomBlob(6 * 1024 * 1024);
      await pushBlob(registry.url, 'team/app', blob);
      // Every request for it is cut after 4 MiB: the first breaks off, the resumed one (2 MiB left) completes.
      await proxy.setFault({ kind: 'cut', pathIncludes: blob.digest, afterBytes: 4 * 1024 * 1024 });
      figures.faults += 1;
      try {
        const results = await Promise.all(Array.from({ length: 3 }, () => fetchBlob(agent.url, blob.digest)));
        for (const result of results) expectBlob(result, blob);
      } finally {
        await proxy.setFault(undefined);
      }
      expect(proxy.count({ method: 'GET', pathIncludes: blob.digest })).toBe(2);
      // The cut lands near 4 MiB (bytes in flight are lost with the connection); the resume starts where the file ends.
      const resumed = agent.logs.find((l) => l['msg'] === 'resuming a blob download that broke off');
      expect(Number(resumed?.['offset'])).toBeGreaterThan(0);
      expect(Number(resumed?.['offset'])).toBeLessThanOrEqual(4 * 1024 * 1024);
      expect(await readdir(join(agentDir, 'cache', 'blobs', 'sha256'))).toContain(blob.digest.slice(7));
    });

    it('upstream cut mid-blob for good: every waiting client gets an error, not a short 200; nothing cached; a retry works', async () => {
      const blob = makeRandomBlob(6 * 1024 * 1024);
      await pushBlob(registry.url, 'team/app', blob);
      await proxy.setFault({ kind: 'cut', pathIncludes: blob.digest, afterBytes: 1024 * 1024 });
      figures.faults += 1;
      try {
        const results = await Promise.all(Array.from({ length: 5 }, () => fetchBlob(agent.url, blob.digest)));
        for (const result of results) {
          if (result.complete && result.status === 200) figures.lostOrPartial += 1;
          expect(result.complete && result.status === 200).toBe(false);
        }
        // One fill: the first request and its two bounded resumes.
        expect(proxy.count({ method: 'GET', pathIncludes: blob.digest })).toBe(3);
      } finally {
        await proxy.setFault(undefined);
      }
      expect(await readdir(join(agentDir, 'cache', 'blobs', 'sha256'))).not.toContain(blob.digest.slice(7));
      expect(await readdir(join(agentDir, 'cache', 'tmp'))).toEqual([]);
      expectBlob(await fetchBlob(agent.url, blob.digest), blob);
      await expectConsistentCache(join(agentDir, 'cache'));
    });

    it('cache directory deleted while running: detected, refetched, the cache comes back', async () => {
      const blob = makeRandomBlob(1024 * 1024);
      await pushBlob(registry.url, 'team/app', blob);
      expectBlob(await fetchBlob(agent.url, blob.digest), blob);
      const before = proxy.count({ method: 'GET', pathIncludes: blob.digest });
      await rm(join(agentDir, 'cache'), { recursive: true, force: true });
      figures.faults += 1;
      expectBlob(await fetchBlob(agent.url, blob.digest), blob);
      expect(proxy.count({ method: 'GET', pathIncludes: blob.digest })).toBe(before + 1);
      await pollUntil(async () => (await readdir(join(agentDir, 'cache', 'blobs', 'sha256')).catch((): string[] => [])).includes(blob.digest.slice(7)), {
        timeoutMs: 5_000,
        what: 'the blob cached again',
      });
      expectBlob(await fetchBlob(agent.url, blob.digest), blob);
      expect(proxy.count({ method: 'GET', pathIncludes: blob.digest })).toBe(before + 1);
    });

    it('a cached file corrupted on disk while running is never served', async () => {
      const blob = makeRandomBlob(512 * 1024);
      await pushBlob(registry.url, 'team/app', blob);
      expectBlob(await fetchBlob(agent.url, blob.digest), blob);
      const file = join(agentDir, 'cache', 'blobs', 'sha256', blob.digest.slice(7));
      const handle = await open(file, 'r+');
      await handle.write(Buffer.from('corrupted!'), 0, 10, 1000);
      await handle.close();
      figures.faults += 1;
      const before = proxy.count({ method: 'GET', pathIncludes: blob.digest });
      const served = await fetchBlob(agent.url, blob.digest);
      if (served.status === 200 && sha256(served.body) !== blob.digest) figures.lostOrPartial += 1;
      expectBlob(served, blob);
      expect(proxy.count({ method: 'GET', pathIncludes: blob.digest })).toBe(before + 1);
      expect(agent.logs.some((l) => l['msg'] === 'cached blob failed verification: removed, will refetch')).toBe(true);
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
      const big = makeRandomBlob(20 * 1024 * 1024);
      const a = makeRandomBlob(5 * 1024 * 1024);
      const b = makeRandomBlob(5 * 1024 * 1024);
      for (const blob of [big, a, b]) await pushBlob(registry.url, 'team/app', blob);
      figures.faults += 2;
      // Larger than the free space: relayed from the first byte.
      expectBlob(await fetchBlob(agent.url, big.digest), big);
      // Two that each fit but not together: one hits ENOSPC mid-write and switches to relaying.
      const [ra, rb] = await Promise.all([fetchBlob(agent.url, a.digest), fetchBlob(agent.url, b.digest)]);
      expectBlob(ra, a);
      expectBlob(rb, b);
      const bypassed = (await agent.runtime.metrics.cacheBypassed.get()).values[0]?.value ?? 0;
      // One relayed from the start (no room), one switched mid-write on ENOSPC.
      const reasons = agent.logs.filter((l) => l['msg'] === 'streaming without caching').map((l) => String(l['err']));
      expect(reasons.some((r) => r.includes('not enough free disk space'))).toBe(true);
      expect(reasons.some((r) => r.includes('ENOSPC'))).toBe(true);
      expect(bypassed).toBeGreaterThanOrEqual(2);
      expect(await readdir(join(cacheDir, 'blobs', 'sha256'))).not.toContain(big.digest.slice(7));
      expect(await readdir(join(cacheDir, 'tmp'))).toEqual([]);
      await expectConsistentCache(cacheDir);

      const grown = await runCommand('mount', ['-o', 'remount,size=64m', cacheDir]);
      expect(grown.code, grown.stderr).toBe(0);
      expectBlob(await fetchBlob(agent.url, big.digest), big);
      await pollUntil(async () => (await readdir(join(cacheDir, 'blobs', 'sha256'))).includes(big.digest.slice(7)), { timeoutMs: 5_000, what: 'big blob cached' });
      const upstreamGets = proxy.count({ method: 'GET', pathIncludes: big.digest });
      expectBlob(await fetchBlob(agent.url, big.digest), big);
      expect(proxy.count({ method: 'GET', pathIncludes: big.digest })).toBe(upstreamGets);
      await expectConsistentCache(cacheDir);
    });
  });

  describe('Connectivity Proxy flapping between 503 and 200', () => {
    let agent: InProcessAgent;
    let cp: ConnectivityProxy;

    beforeAll(async () => {
      const agentDir = join(dir, 'flap');
      await mkdir(agentDir);
      cp = await startConnectivityProxy({ virtualHosts: { 'registry.virtual:5000': registry.url }, locations: { flappy: 'connected' } });
      agent = await startAgent({
        dir: agentDir,
        connectivityProxy: { url: cp.url, locationId: 'flappy' },
        mirrors: [{ registry: REGISTRY, upstream: 'http://registry.virtual:5000', route: 'connectivity-proxy' }],
      });
    });

    afterAll(async () => {
      await agent?.stop();
      await cp?.stop();
    });

    it('never serves a partial blob; every blob is eventually served whole', async () => {
      const blobs = Array.from({ length: 8 }, () => makeRandomBlob(768 * 1024));
      for (const blob of blobs) await pushBlob(registry.url, 'team/app', blob);
      let connected = true;
      const flapper = setInterval(() => {
        connected = !connected;
        cp.setLocation('flappy', connected ? 'connected' : 'disconnected');
        figures.faults += 1;
      }, 40);
      const served = new Set<string>();
      try {
        for (let round = 0; round < 30 && served.size < blobs.length; round += 1) {
          const results = await Promise.all(blobs.map((blob) => fetchBlob(agent.url, blob.digest).then((r) => ({ blob, r }))));
          for (const { blob, r } of results) {
            if (r.complete && r.status === 200) {
              if (sha256(r.body) !== blob.digest) figures.lostOrPartial += 1;
              expect(sha256(r.body)).toBe(blob.digest);
              served.add(blob.digest);
            } else if (r.complete) {
              expect([502, 503]).toContain(r.status);
            }
          }
        }
      } finally {
        clearInterval(flapper);
        cp.setLocation('flappy', 'connected');
      }
      for (const blob of blobs) expectBlob(await fetchBlob(agent.url, blob.digest), blob);
      await expectConsistentCache(join(dir, 'flap', 'cache'));
    });
  });

  describe('SIGKILL during eviction', () => {
    let child: AgentProcess | undefined;

    afterAll(async () => {
      await child?.process.stop();
    });

    it('restarts into a consistent cache under its limit, and the next pulls succeed', async () => {
      const agentDir = join(dir, 'evict-kill');
      await mkdir(agentDir);
      const port = await freePort();
      const config = await writeAgentConfig({ dir: agentDir, port, cacheMaxBytes: '4MiB', mirrors: [{ registry: REGISTRY, upstream: proxy.url }] });
      child = await startAgentProcess(config, join(agentDir, 'agent-1.log'), port);
      const blobs = Array.from({ length: 24 }, () => makeRandomBlob(512 * 1024));
      for (const blob of blobs) await pushBlob(registry.url, 'team/app', blob);
      // Every GET past the first eight evicts; kill the agent while they run.
      const running = Promise.all(blobs.map((blob) => fetchBlob(child!.url, blob.digest)));
      await proxy.waitFor((reqs) => reqs.filter((r) => r.done && blobs.some((b) => r.path.includes(b.digest))).length >= 12, 10_000);
      process.kill(child.process.pid, 'SIGKILL');
      figures.faults += 1;
      const results = await running;
      for (const [i, result] of results.entries()) {
        if (result.complete && result.status === 200) {
          if (sha256(result.body) !== blobs[i]!.digest) figures.lostOrPartial += 1;
          expect(sha256(result.body)).toBe(blobs[i]!.digest);
        }
      }
      await child.process.exited;
      child = await startAgentProcess(config, join(agentDir, 'agent-2.log'), port);
      await pollUntil(async () => (await child!.logs()).includes('cache index rebuilt'), { timeoutMs: 10_000, what: 'index rebuilt' });
      const cacheDir = join(agentDir, 'cache');
      expect(await readdir(join(cacheDir, 'tmp'))).toEqual([]);
      await pollUntil(async () => (await expectConsistentCache(cacheDir)) <= 4 * 1024 * 1024, { timeoutMs: 5_000, what: 'cache under its limit' });
      for (const blob of blobs.slice(0, 6)) expectBlob(await fetchBlob(child.url, blob.digest), blob);
      const stats = await Promise.all((await readdir(join(cacheDir, 'blobs', 'sha256'))).map((f) => stat(join(cacheDir, 'blobs', 'sha256', f))));
      expect(stats.reduce((sum, s) => sum + s.size, 0)).toBeLessThanOrEqual(4 * 1024 * 1024);
    });
  });
});
