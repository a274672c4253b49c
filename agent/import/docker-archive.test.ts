import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import type { Digest } from '../oci/digest.ts';
import { DOCKER_CONFIG, DOCKER_LAYER_TAR, DOCKER_MANIFEST, dockerManifest, planDockerArchive } from './docker-archive.ts';
import type { ImageName } from './names.ts';
import type { ImagePlan, PlannedEntry } from './plan.ts';
import type { ImageSource } from './source.ts';

const REGISTRY = 'registry.corp.example:5000';

function sha256(data: Buffer | string): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}` as Digest;
}

function memorySource(files: Record<string, Buffer | string>): ImageSource {
  return {
    format: 'docker-archive',
    description: 'docker-archive test.tar',
    file: async (path) => {
      const data = files[path.replace(/^\.\//, '')];
      if (data === undefined) return undefined;
      const bytes = Buffer.from(data);
      return { size: bytes.length, open: () => Readable.from([bytes]) };
    },
    close: async () => undefined,
  };
}

/** An archive as `skopeo copy … docker-archive:FILE:REF` writes it: `<hex>.json` config, `<hex>.tar` layers, manifest.json. */
function archive(options: { repoTags?: string[]; layers?: string[]; diffIds?: string[]; layerNames?: string[] } = {}) {
  const layers = (options.layers ?? ['layer one', 'layer two']).map((text) => Buffer.from(text));
  const diffIds = options.diffIds ?? layers.map((l) => sha256(l));
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: diffIds } }));
  const configName = `${sha256(config).slice(7)}.json`;
  const layerNames = options.layerNames ?? layers.map((l) => `${sha256(l).slice(7)}.tar`);
  const files: Record<string, Buffer | string> = { [configName]: config };
  for (const [i, name] of layerNames.entries()) files[name] = layers[i] as Buffer;
  files['manifest.json'] = JSON.stringify([{ Config: configName, RepoTags: options.repoTags ?? [`${REGISTRY}/team/app:1`], Layers: layerNames }]);
  return { files, config, layers };
}

async function plan(files: Record<string, Buffer | string>, name?: ImageName, registries = [REGISTRY]): Promise<PlannedEntry[]> {
  return planDockerArchive(memorySource(files), { ...(name ? { name } : {}), platforms: [], registries: { names: registries, source: '/etc/agent.toml' } });
}

function planOf(entry: PlannedEntry | undefined): ImagePlan {
  if (!entry || !('plan' in entry)) throw new Error(`no plan: ${JSON.stringify(entry)}`);
  return entry.plan;
}

describe('docker-archive → Docker schema 2 manifest', () => {
  it('serialises the manifest as skopeo and distribution do: compact, fields in order, uncompressed layer type', () => {
    const config = { digest: `sha256:${'1'.repeat(64)}` as Digest, size: 536 };
    const layers = [
      { digest: `sha256:${'2'.repeat(64)}` as Digest, size: 11776 },
      { digest: `sha256:${'3'.repeat(64)}` as Digest, size: 2048 },
    ];
    expect(dockerManifest(config, layers).toString()).toBe(
      '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",' +
        `"config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":536,"digest":"sha256:${'1'.repeat(64)}"},` +
        `"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","size":11776,"digest":"sha256:${'2'.repeat(64)}"},` +
        `{"mediaType":"application/vnd.docker.image.rootfs.diff.tar","size":2048,"digest":"sha256:${'3'.repeat(64)}"}]}`,
    );
  });

  it('plans the config, the layers by their diff_ids and the built manifest, named by RepoTags', async () => {
    const { files, config, layers } = archive({ repoTags: [`${REGISTRY}/team/app:1`, `${REGISTRY}/team/app:latest`] });
    const result = planOf((await plan(files))[0]);
    const manifest = dockerManifest(
      { digest: sha256(config), size: config.length },
      layers.map((l) => ({ digest: sha256(l), size: l.length })),
    );
    expect(result.targets).toEqual([
      { registry: REGISTRY, repository: 'team/app', tag: '1' },
      { registry: REGISTRY, repository: 'team/app', tag: 'latest' },
    ]);
    expect(result.root).toEqual({ digest: sha256(manifest), mediaType: DOCKER_MANIFEST, size: manifest.length });
    expect(result.manifests.map((m) => [m.digest, m.mediaType, m.bytes?.equals(manifest)])).toEqual([[sha256(manifest), DOCKER_MANIFEST, true]]);
    expect(result.blobs.map((b) => [b.what, b.digest, b.size])).toEqual([
      ['config', sha256(config), config.length],
      [`layer 1/2 (${sha256(layers[0] as Buffer).slice(7)}.tar)`, sha256(layers[0] as Buffer), (layers[0] as Buffer).length],
      [`layer 2/2 (${sha256(layers[1] as Buffer).slice(7)}.tar)`, sha256(layers[1] as Buffer), (layers[1] as Buffer).length],
    ]);
    const parsed = JSON.parse(manifest.toString()) as { config: { mediaType: string }; layers: Array<{ mediaType: string }> };
    expect(parsed.config.mediaType).toBe(DOCKER_CONFIG);
    expect(parsed.layers.every((l) => l.mediaType === DOCKER_LAYER_TAR)).toBe(true);
  });

  it('reads docker save archives: <id>/layer.tar paths, familiar RepoTags (docker.io/library), --name without a tag', async () => {
    const { files } = archive({ repoTags: ['alpine:3.20'], layerNames: ['aaa/layer.tar', 'bbb/layer.tar'] });
    expect(planOf((await plan(files, undefined, ['docker.io']))[0]).targets).toEqual([{ registry: 'docker.io', repository: 'library/alpine', tag: '3.20' }]);
    expect(planOf((await plan(files, { registry: REGISTRY, repository: 'mirror/alpine' }))[0]).targets).toEqual([{ registry: REGISTRY, repository: 'mirror/alpine', tag: '3.20' }]);
    expect(planOf((await plan(files, { registry: REGISTRY, repository: 'x', tag: 'y' }))[0]).targets).toEqual([{ registry: REGISTRY, repository: 'x', tag: 'y' }]);
  });

  it('refuses inconsistent archives and names that are not configured mirrors', async () => {
    const refusal = async (files: Record<string, Buffer | string>, registries?: string[]): Promise<string> => {
      const [entry] = await plan(files, undefined, registries);
      return entry && 'error' in entry ? entry.error : 'planned';
    };
    expect(await refusal(archive().files, ['docker.io'])).toMatch(/registry registry\.corp\.example:5000 is not a configured \[\[mirror\]\] of \/etc\/agent\.toml \(configured: docker\.io\)/);
    expect(await refusal(archive({ diffIds: [sha256('layer one')] }).files)).toMatch(/2 layers, but the config lists 1/);
    const renamed = archive({ layerNames: [`${'f'.repeat(64)}.tar`, 'b/layer.tar'] });
    expect(await refusal(renamed.files)).toMatch(new RegExp(`layer 1/2 .* is named sha256:${'f'.repeat(64)}, but the config says its diff_id is ${sha256('layer one')}`));
    const corruptConfig = archive();
    const configName = Object.keys(corruptConfig.files).find((n) => n.endsWith('.json') && n !== 'manifest.json') as string;
    corruptConfig.files[configName] = Buffer.from(`${String(corruptConfig.files[configName])} `);
    expect(await refusal(corruptConfig.files)).toMatch(/config .* is corrupt: expected digest sha256:[0-9a-f]{64} \(its name\), found sha256:/);
    const missing = archive();
    delete missing.files[Object.keys(missing.files).find((n) => n.endsWith('.tar')) as string];
    expect(await refusal(missing.files)).toMatch(/layer 1\/2 .* is not in the archive/);
    expect(await refusal(archive({ repoTags: [] }).files)).toMatch(/has no name .* --name REGISTRY\/REPOSITORY:TAG/);
  });
});
