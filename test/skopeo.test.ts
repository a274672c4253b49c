// The real skopeo copying an image through the agent, talking to it as if it were the registry: one
// mirror configured, so requests without `?ns=` are that mirror's. Upstream is the real distribution
// registry behind a counting proxy, so every blob the agent fetched is counted on the far side.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type InProcessAgent, startAgent } from './fixtures/agent.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { sha256 } from './fixtures/digest.ts';
import { type TestImage, makeImage, pushImage } from './fixtures/image.ts';
import { runCommand } from './fixtures/process.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const auth = { username: 'puller', password: 'correct horse' };
const REGISTRY = 'registry.corp.example:5000';
const REPO = 'team/app';

/** `skopeo copy` from the agent (plain http: tls-verify off lets skopeo fall back to it) to `destination`. */
async function skopeoCopy(agent: InProcessAgent, destination: string): Promise<void> {
  const result = await runCommand(
    'skopeo',
    ['--insecure-policy', 'copy', '--src-tls-verify=false', '--src-no-creds', '--retry-times=0', `docker://${agent.host}/${REPO}:v1`, destination],
    { timeoutMs: 60_000 },
  );
  expect(result.code, `skopeo copy to ${destination}:\n${result.stderr}${result.stdout}`).toBe(0);
}

/** Every file of `dir` hashes to the name it has (`<hex>`); returns their digests. */
async function expectContentAddressed(dir: string, names: readonly string[]): Promise<string[]> {
  const digests: string[] = [];
  for (const name of names) {
    const digest = sha256(await readFile(join(dir, name)));
    expect(digest, join(dir, name)).toBe(`sha256:${name}`);
    digests.push(digest);
  }
  return digests;
}

describe('skopeo copy through the agent (single mirror, no ?ns=)', () => {
  let dir: string;
  let registry: RegistryHandle;
  let proxy: CountingProxy;
  let agent: InProcessAgent;
  let image: TestImage;
  let blobs: string[];

  beforeAll(async () => {
    dir = await makeTempDir('rpa-skopeo');
    [registry, image] = await Promise.all([startRegistry({ auth }), makeImage({ layers: 3, layerBytes: 192 * 1024 })]);
    blobs = [image.config.digest, ...image.layers.map((l) => l.digest)];
    await pushImage(registry.url, REPO, 'v1', image, auth);
    proxy = await startCountingProxy(registry.url);
    agent = await startAgent({ dir, mirrors: [{ registry: REGISTRY, upstream: proxy.url, username: auth.username, password: auth.password }] });
  });

  afterAll(async () => {
    await Promise.all([agent?.stop(), proxy?.stop()]);
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  /** The agent's access-log lines for `GET` of this image's blobs, by digest. */
  function blobGets(): Map<string, Array<Record<string, unknown>>> {
    const byDigest = new Map<string, Array<Record<string, unknown>>>(blobs.map((d) => [d, []]));
    for (const line of agent.logs) {
      if (line['msg'] !== 'request' || line['method'] !== 'GET') continue;
      const digest = /^\/v2\/team\/app\/blobs\/(sha256:[a-f0-9]{64})$/.exec(String(line['path']))?.[1];
      if (digest !== undefined) byDigest.get(digest)?.push(line);
    }
    return byDigest;
  }

  it('oci: layout — every blob hashes to the image\'s digests; the agent served each, fetched from upstream once', async () => {
    const layout = join(dir, 'oci-layout');
    await skopeoCopy(agent, `oci:${layout}:v1`);

    const blobDir = join(layout, 'blobs', 'sha256');
    const stored = await expectContentAddressed(blobDir, await readdir(blobDir));
    // The layout holds exactly the image: its manifest, config and layers, byte for byte.
    expect(stored.sort()).toEqual([image.manifestDigest, ...blobs].sort());
    for (const blob of [image.config, ...image.layers]) expect((await readFile(join(blobDir, blob.digest.slice(7)))).equals(blob.bytes)).toBe(true);
    const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
    expect(index.manifests.map((m) => m.digest)).toEqual([image.manifestDigest]);

    // The agent answered every blob itself, under the one mirror, without ?ns=, fetching each from upstream once.
    for (const [digest, lines] of blobGets()) {
      expect(lines.map((l) => [l['status'], l['registry'], l['cache']]), digest).toEqual([[200, REGISTRY, 'miss']]);
      expect(proxy.count({ method: 'GET', pathIncludes: `/blobs/${digest}` }), digest).toBe(1);
    }
    expect(agent.logs.some((l) => l['msg'] === 'request' && l['kind'] === 'manifest' && l['status'] === 200 && l['path'] === `/v2/${REPO}/manifests/v1`)).toBe(true);
  });

  it('dir: — a second copy is served from the cache: the same bytes, upstream not asked for any blob again', async () => {
    const target = join(dir, 'dir-copy');
    await skopeoCopy(agent, `dir:${target}`);

    // dir: keeps each blob in a file named by its hex digest, the manifest in manifest.json.
    const names = (await readdir(target)).filter((name) => /^[a-f0-9]{64}$/.test(name));
    expect((await expectContentAddressed(target, names)).sort()).toEqual([...blobs].sort());
    expect(sha256(await readFile(join(target, 'manifest.json')))).toBe(image.manifestDigest);

    for (const [digest, lines] of blobGets()) {
      expect(lines.map((l) => [l['status'], l['cache']]), digest).toEqual([
        [200, 'miss'],
        [200, 'hit'],
      ]);
      expect(proxy.count({ method: 'GET', pathIncludes: `/blobs/${digest}` }), digest).toBe(1);
    }
  });
});
