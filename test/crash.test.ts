import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, startAgentProcess, writeAgentConfig } from './fixtures/agent.ts';
import { type ContainerdHandle, startContainerd } from './fixtures/containerd.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { sha256 } from './fixtures/digest.ts';
import { type TestImage, makeImage, pushImage } from './fixtures/image.ts';
import { freePort } from './fixtures/net.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const REGISTRY = 'registry.corp.example:5000';
const REPO = 'team/app';

describe('5. the agent killed with SIGKILL in the middle of a blob', () => {
  let dir: string;
  let registry: RegistryHandle;
  let proxy: CountingProxy;
  let containerd: ContainerdHandle;
  let image: TestImage;
  let agent: AgentProcess | undefined;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-crash');
    await Promise.all([
      startRegistry().then((r) => (registry = r)),
      startContainerd().then((c) => (containerd = c)),
      // One 16 MiB layer of random bytes (gzip cannot shrink it): slow enough under throttling to be killed mid-way.
      makeImage({ layers: 1, layerBytes: 16 * 1024 * 1024 }).then((i) => (image = i)),
    ]);
    await pushImage(registry.url, REPO, 'v1', image);
    proxy = await startCountingProxy(registry.url);
  });

  afterAll(async () => {
    await agent?.process.stop();
    await containerd?.stop();
    await proxy?.stop();
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('serves no partial blob after restart, and the next containerd pull succeeds', async () => {
    const blob = image.layers[0]!;
    const port = await freePort();
    // The same port across the restart: the hosts.toml written by the first run stays valid.
    const config = await writeAgentConfig({ dir, port, manageHosts: true, mirrors: [{ registry: REGISTRY, upstream: proxy.url }] });
    agent = await startAgentProcess(config, join(dir, 'agent-1.log'), port);
    const url = `${agent.url}/v2/${REPO}/blobs/${blob.digest}?ns=${REGISTRY}`;

    await proxy.setFault({ kind: 'throttle', bytesPerSecond: 2 * 1024 * 1024, pathIncludes: blob.digest });
    const response = await request(url);
    expect(response.statusCode).toBe(200);
    let received = 0;
    const firstBytes = new Promise<void>((resolve) => {
      response.body.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received > 1024 * 1024) resolve();
      });
    });
    const ended = new Promise<boolean>((resolve) => {
      response.body.on('end', () => resolve(true));
      response.body.on('error', () => resolve(false));
    });
    await firstBytes;
    process.kill(agent.process.pid, 'SIGKILL');
    await agent.process.exited;
    // The client saw a cut connection, never a complete (short) body.
    expect(await ended).toBe(false);
    expect(received).toBeLessThan(blob.bytes.length);

    const cacheDir = join(dir, 'cache');
    expect(await readdir(join(cacheDir, 'tmp'))).toHaveLength(1);
    expect(await readdir(join(cacheDir, 'blobs', 'sha256'))).not.toContain(blob.digest.slice(7));

    await proxy.setFault(undefined);
    agent = await startAgentProcess(config, join(dir, 'agent-2.log'), port);
    expect(await readdir(join(cacheDir, 'tmp'))).toEqual([]);
    expect(await agent.logs()).toContain('removed partial downloads left by an earlier run');

    // A real pull through the restarted agent: containerd resolves the tag, fetches the manifest,
    // config and the layer that was cut off, checks every digest itself and unpacks the layer.
    const pulled = await containerd.pull(`${REGISTRY}/${REPO}:v1`, { hostsDir: join(dir, 'certs.d') });
    expect(pulled.code, pulled.stderr + pulled.stdout).toBe(0);
    const listed = await containerd.ctr(['-n', 'default', 'images', 'check']);
    expect(listed.stdout).toMatch(new RegExp(`${REGISTRY}/${REPO}:v1\\s.*complete \\(\\d+/\\d+\\)`));
    // The layer came from upstream once more (the killed fetch was not reused) and is now cached whole.
    const layerGets = proxy.requests.filter((r) => r.method === 'GET' && r.path.includes(`/blobs/${blob.digest}`));
    expect(layerGets).toHaveLength(2);
    expect(layerGets[1]).toMatchObject({ status: 200, bytes: blob.bytes.length, aborted: false });
    expect(await readdir(join(cacheDir, 'blobs', 'sha256'))).toContain(blob.digest.slice(7));

    // A plain GET now comes from the cache: the right bytes, and upstream is not asked again.
    const again = await request(url);
    const body = Buffer.from(await again.body.arrayBuffer());
    expect(again.statusCode).toBe(200);
    expect(sha256(body)).toBe(blob.digest);
    expect(proxy.count({ method: 'GET', pathIncludes: `/blobs/${blob.digest}` })).toBe(2);
  });
});
