import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Digest } from '../agent/oci/digest.ts';
import type { PreloadImageState } from '../agent/preload/state.ts';
import { type AgentSetup, type InProcessAgent, startAgent as startAgentIn } from './fixtures/agent.ts';
import { type ContainerdHandle, startContainerd } from './fixtures/containerd.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { type TestImage, makeImage, pushImage, pushManifest } from './fixtures/image.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const REGISTRY = 'registry.corp.example:5000';
const KiB = 1024;
const MiB = 1024 * KiB;
const INDEX = 'application/vnd.oci.image.index.v1+json';

/** Every digest of an image (manifest, config, layers). */
function digestsOf(image: TestImage): Digest[] {
  return [image.manifestDigest, image.config.digest, ...image.layers.map((l) => l.digest)] as Digest[];
}

function sizeOf(image: TestImage): number {
  return image.manifest.length + image.config.bytes.length + image.layers.reduce((n, l) => n + l.bytes.length, 0);
}

function states(agent: InProcessAgent): readonly PreloadImageState[] {
  return agent.runtime.preloadStates(REGISTRY);
}

async function preloaded(agent: InProcessAgent, what: string, done: (s: readonly PreloadImageState[]) => boolean = (s) => s.length > 0 && s.every((e) => e.phase !== 'pending')): Promise<readonly PreloadImageState[]> {
  await pollUntil(() => done(states(agent)), { timeoutMs: 30_000, what: `${what}: ${JSON.stringify(states(agent))}` });
  return states(agent);
}

/** GETs a blob through the agent (a live pull), to the end. */
async function pullBlob(agent: InProcessAgent, repo: string, digest: string): Promise<number> {
  const response = await request(`${agent.url}/v2/${repo}/blobs/${digest}?ns=${REGISTRY}`);
  const body = Buffer.from(await response.body.arrayBuffer());
  expect(response.statusCode).toBe(200);
  return body.length;
}

/** An agent in its own directory (created here). */
async function startAgent(setup: AgentSetup): Promise<InProcessAgent> {
  await mkdir(setup.dir, { recursive: true });
  return startAgentIn(setup);
}

describe('preload: images kept in the cache, pinned, before anyone pulls them', () => {
  let dir: string;
  let registry: RegistryHandle;
  let upstream: CountingProxy;
  let containerd: ContainerdHandle;
  let agent: InProcessAgent | undefined;
  let app: TestImage;

  beforeAll(async () => {
    dir = await makeTempDir('preload');
    [registry, containerd] = await Promise.all([startRegistry(), startContainerd()]);
    upstream = await startCountingProxy(registry.url);
    app = await makeImage({ layers: 2, layerBytes: 256 * KiB });
    await pushImage(registry.url, 'team/app', '1.2', app);
  }, 60_000);

  afterEach(async () => {
    await agent?.stop();
    agent = undefined;
    await upstream.setFault(undefined);
  });

  afterAll(async () => {
    await Promise.all([containerd?.stop(), upstream?.stop()]);
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('real containerd: a preloaded image pulls on a fresh namespace with the upstream stopped', async () => {
    const agentDir = join(dir, 'containerd');
    agent = await startAgent({ dir: agentDir, manageHosts: true, mirrors: [{ registry: REGISTRY, upstream: upstream.url, lines: ['preload = ["team/app:1.2"]'] }] });
    const [entry] = await preloaded(agent, 'preload of team/app:1.2');
    expect(entry).toMatchObject({ image: 'team/app:1.2', phase: 'ready', digest: app.manifestDigest, pinned: true, bytes: sizeOf(app) });
    for (const digest of digestsOf(app)) expect(agent.runtime.cache.isCached(digest)).toBe(true);
    const fetchedBeforePull = upstream.requests.length;

    await upstream.setFault({ kind: 'down' });
    const pull = await containerd.pull(`${REGISTRY}/team/app:1.2`, { hostsDir: join(agentDir, 'certs.d'), namespace: 'fresh-after-preload' });
    expect(pull.code, pull.stderr).toBe(0);
    // Nothing reached upstream for the pull: it was down, and everything came from the cache.
    expect(upstream.requests.length).toBe(fetchedBeforePull);
  }, 90_000);

  it('preloaded blobs survive LRU pressure that evicts everything unpinned; a list change unpins', async () => {
    const agentDir = join(dir, 'pressure');
    // The cache holds about four such images; the filler pushes ten through it.
    const filler = await Promise.all(Array.from({ length: 10 }, () => makeImage({ layers: 1, layerBytes: 512 * KiB })));
    await Promise.all(filler.map((image, i) => pushImage(registry.url, `team/filler-${i}`, 'x', image)));
    agent = await startAgent({ dir: agentDir, cacheMaxBytes: 2 * MiB + 512 * KiB, mirrors: [{ registry: REGISTRY, upstream: upstream.url, auth: 'passthrough', lines: ['preload = ["team/app:1.2"]'] }] });
    await preloaded(agent, 'preload before pressure');
    for (const [i, image] of filler.entries()) await pullBlob(agent, `team/filler-${i}`, image.layers[0]!.digest);
    const stats = agent.runtime.cache.stats();
    expect(stats.evictions).toBeGreaterThan(3);
    // Every early filler blob was evicted; every preloaded one is still there.
    expect(agent.runtime.cache.isCached(filler[0]!.layers[0]!.digest as Digest)).toBe(false);
    for (const digest of digestsOf(app)) expect(agent.runtime.cache.isCached(digest), digest).toBe(true);
    expect(stats.pinned).toBe(sizeOf(app));

    // The list without the image: it becomes evictable and the next pressure takes it.
    await agent.runtime.setMirrors(agent.runtime.config.mirrors.map((m) => ({ ...m, preload: [] })));
    await pollUntil(() => agent!.runtime.cache.stats().pinned === 0, { timeoutMs: 5_000, what: 'unpinned after the list change' });
    for (const [i, image] of filler.entries()) await pullBlob(agent, `team/filler-${i}`, image.layers[0]!.digest);
    expect(agent.runtime.cache.isCached(app.layers[0]!.digest as Digest)).toBe(false);
  }, 90_000);

  it('a changed list keeps what it still lists ready and pinned: no unpinned window while it re-resolves', async () => {
    await pushImage(registry.url, 'team/extra', '1', await makeImage({ layers: 1, layerBytes: 64 * KiB }));
    agent = await startAgent({ dir: join(dir, 'relist'), mirrors: [{ registry: REGISTRY, upstream: upstream.url, lines: ['preload = ["team/app:1.2"]'] }] });
    await preloaded(agent, 'first list');
    const config = agent.runtime.config.mirrors[0]!;
    const extra = { image: 'team/extra:1', repository: 'team/extra', tag: '1' };
    await agent.runtime.setMirrors([{ ...config, preload: [...config.preload, extra] }]);
    let seen: { phase: string | undefined; pinned: number } | undefined;
    await pollUntil(() => {
      if (states(agent!).length !== 2) return false;
      // Checked in the same turn the new list appears, before it could re-resolve anything.
      seen = { phase: states(agent!)[0]?.phase, pinned: agent!.runtime.cache.stats().pinned };
      return true;
    }, { timeoutMs: 5_000, what: 'the new list applied' });
    expect(seen).toEqual({ phase: 'ready', pinned: sizeOf(app) });
    await preloaded(agent, 'second list', (s) => s.every((e) => e.phase === 'ready'));
  }, 60_000);

  it('an image beyond pin_max_bytes is cached but not pinned, and says so', async () => {
    const big = await makeImage({ layers: 1, layerBytes: 1 * MiB });
    await pushImage(registry.url, 'team/big', '1', big);
    agent = await startAgent({
      dir: join(dir, 'budget'),
      extraToml: `pin_max_bytes = ${sizeOf(app) + 4 * KiB}`,
      mirrors: [{ registry: REGISTRY, upstream: upstream.url, lines: ['preload = ["team/app:1.2", "team/big:1"]'] }],
    });
    const [first, second] = await preloaded(agent, 'two images, one over the pin budget');
    expect(first).toMatchObject({ phase: 'ready', pinned: true });
    expect(first?.error).toBeUndefined();
    expect(second).toMatchObject({ phase: 'ready', pinned: false, error: expect.stringContaining('pin budget exceeded') });
    expect(agent.runtime.cache.isCached(big.layers[0]!.digest as Digest)).toBe(true);
    expect(agent.runtime.cache.stats().pinned).toBe(sizeOf(app));
    expect(agent.logs.some((l) => l['msg'] === 'pin budget exceeded: these images are cached but not pinned (evictable)')).toBe(true);
  }, 60_000);

  it('a moved tag is preloaded again; the old image stays pinned until the new one is in', async () => {
    const v1 = await makeImage({ layers: 1, layerBytes: 128 * KiB });
    const v2 = await makeImage({ layers: 1, layerBytes: 128 * KiB });
    await pushImage(registry.url, 'team/moving', 'stable', v1);
    agent = await startAgent({ dir: join(dir, 'moving'), mirrors: [{ registry: REGISTRY, upstream: upstream.url, lines: ['preload = ["team/moving:stable"]', 'preload_interval = "10s"'] }] });
    await preloaded(agent, 'v1', (s) => s[0]?.digest === v1.manifestDigest && s[0]?.phase === 'ready');
    await pushImage(registry.url, 'team/moving', 'stable', v2);
    await agent.runtime.preloader.runNow();
    const [entry] = states(agent);
    expect(entry).toMatchObject({ phase: 'ready', digest: v2.manifestDigest, pinned: true });
    for (const digest of digestsOf(v2)) expect(agent.runtime.cache.isCached(digest)).toBe(true);
    expect(agent.runtime.cache.stats().pinned).toBe(sizeOf(v2));
  }, 60_000);

  it('an index: the node platform by default, or the platforms listed', async () => {
    const amd64 = await makeImage({ layers: 1, layerBytes: 64 * KiB });
    const arm64 = await makeImage({ layers: 1, layerBytes: 64 * KiB });
    await pushImage(registry.url, 'team/multi', 'amd64', amd64);
    await pushImage(registry.url, 'team/multi', 'arm64', arm64);
    const index = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: INDEX,
      manifests: [
        { mediaType: amd64.manifestMediaType, digest: amd64.manifestDigest, size: amd64.manifest.length, platform: { os: 'linux', architecture: 'amd64' } },
        { mediaType: arm64.manifestMediaType, digest: arm64.manifestDigest, size: arm64.manifest.length, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      ],
    }));
    await pushManifest(registry.url, 'team/multi', '1', index, INDEX);
    const node = process.arch === 'arm64' ? arm64 : amd64;
    const other = node === amd64 ? arm64 : amd64;
    agent = await startAgent({
      dir: join(dir, 'index'),
      mirrors: [{ registry: REGISTRY, upstream: upstream.url, lines: [`preload = ["team/multi:1", { image = "team/multi:amd64" }]`] }],
    });
    const [multi] = await preloaded(agent, 'index for the node platform');
    expect(multi).toMatchObject({ phase: 'ready', bytes: index.length + sizeOf(node) });
    expect(agent.runtime.cache.isCached(node.layers[0]!.digest as Digest)).toBe(true);
    expect(agent.runtime.cache.isCached(other.layers[0]!.digest as Digest)).toBe(false);
    await agent.stop();

    agent = await startAgent({
      dir: join(dir, 'index-listed'),
      mirrors: [{ registry: REGISTRY, upstream: upstream.url, lines: [`preload = [{ image = "team/multi:1", platforms = ["linux/arm64", "linux/amd64"] }, { image = "team/multi:1@sha256:${'0'.repeat(64)}", platforms = ["linux/s390x"] }]`] }],
    });
    const [both, missing] = await preloaded(agent, 'index for listed platforms');
    expect(both).toMatchObject({ phase: 'ready', bytes: index.length + sizeOf(amd64) + sizeOf(arm64) });
    expect(missing).toMatchObject({ phase: 'failed', error: expect.stringMatching(/manifest unknown|unknown/) });
  }, 60_000);

  it('a failing preload reports its error and recovers on the next attempt', async () => {
    await upstream.setFault({ kind: 'down' });
    agent = await startAgent({ dir: join(dir, 'failing'), mirrors: [{ registry: REGISTRY, upstream: upstream.url, lines: ['preload = ["team/app:1.2"]'] }] });
    const [failed] = await preloaded(agent, 'failed while upstream is down');
    expect(failed?.phase).toBe('failed');
    expect(failed?.error).toBeTruthy();
    expect(agent.logs.some((l) => l['msg'] === 'preload failed: retrying later')).toBe(true);
    await upstream.setFault(undefined);
    await agent.runtime.preloader.runNow();
    expect(states(agent)[0]).toMatchObject({ phase: 'ready', pinned: true });
    expect(states(agent)[0]?.error).toBeUndefined();
  }, 60_000);
});
