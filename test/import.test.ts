// `registry-proxy-agent import` as an operator runs it: the compiled CLI (dist/) as a child process,
// on sources the real skopeo wrote from the real distribution registry (an OCI layout, an
// oci-archive, a docker-archive) and on damaged or hostile ones; then a real containerd pulls the
// imported image from an offline agent while the registry is stopped.
import { existsSync } from 'node:fs';
import { cp, mkdir, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzip as gunzipCb } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { request } from 'undici';
import { AGENT_NODE_FLAGS, agentMain, startAgentProcess, writeAgentConfig } from './fixtures/agent.ts';
import { addMirrorKeys, startConfiguredAgent } from './fixtures/configured-agent.ts';
import { startContainerd } from './fixtures/containerd.ts';
import { sha256 } from './fixtures/digest.ts';
import { OCI_MANIFEST, type TestImage, makeImage, pushImage, pushManifest } from './fixtures/image.ts';
import { freePort } from './fixtures/net.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type CommandResult, runCommand, startProcess, tailFile } from './fixtures/process.ts';
import { startRegistry } from './fixtures/registry.ts';
import { makeTar } from './fixtures/tar.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const gunzip = promisify(gunzipCb);
const REGISTRY = 'registry.corp.example:5000';
const REPO = 'team/app';
const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

/** Runs `registry-proxy-agent import ARGS` from dist/, as `npm start -- import …` would. */
function importCli(args: readonly string[]): Promise<CommandResult> {
  return runCommand(process.execPath, [...AGENT_NODE_FLAGS, agentMain(), 'import', ...args], { timeoutMs: 60_000 });
}

function output(result: CommandResult): string {
  return `exit ${result.code}\n--- stdout ---\n${result.stdout}--- stderr ---\n${result.stderr}`;
}

interface Site {
  dir: string;
  config: string;
  cacheDir: string;
  hostsDir: string;
}

let root: string;
let siteCount = 0;

/** A config file for an isolated node: one offline mirror (no upstream is contacted), its cache under `dir`/cache. */
async function site(options: { cacheMaxBytes?: number; registry?: string; extraToml?: string } = {}): Promise<Site> {
  const dir = join(root, `site-${(siteCount += 1)}`);
  await mkdir(dir);
  const registry = options.registry ?? REGISTRY;
  const config = await writeAgentConfig({
    dir,
    manageHosts: true,
    mirrors: [{ registry, upstream: 'http://127.0.0.1:9' }],
    ...(options.cacheMaxBytes === undefined ? {} : { cacheMaxBytes: options.cacheMaxBytes }),
    ...(options.extraToml === undefined ? {} : { extraToml: options.extraToml }),
  });
  await addMirrorKeys(config, { [registry]: ['mode = "offline"'] });
  return { dir, config, cacheDir: join(dir, 'cache'), hostsDir: join(dir, 'certs.d') };
}

async function list(dir: string): Promise<string[]> {
  return existsSync(dir) ? (await readdir(dir)).sort() : [];
}

/** What the cache holds: blob files (each checked to hash to its name), tag records, staging dirs. */
async function cacheContent(cacheDir: string): Promise<{ blobs: string[]; tags: Array<Record<string, unknown>>; staging: string[] }> {
  const blobDir = join(cacheDir, 'blobs', 'sha256');
  const blobs: string[] = [];
  for (const name of await list(blobDir)) {
    expect(sha256(await readFile(join(blobDir, name))), `cache file ${name}`).toBe(`sha256:${name}`);
    blobs.push(`sha256:${name}`);
  }
  const tags: Array<Record<string, unknown>> = [];
  for (const name of await list(join(cacheDir, 'tags'))) tags.push(JSON.parse(await readFile(join(cacheDir, 'tags', name), 'utf8')) as Record<string, unknown>);
  tags.sort((a, b) => String(a['key']).localeCompare(String(b['key'])));
  const staging = (await list(cacheDir)).filter((name) => name.startsWith('import-'));
  return { blobs: blobs.sort(), tags, staging };
}

function pieces(image: TestImage): string[] {
  return [image.manifestDigest, image.config.digest, ...image.layers.map((l) => l.digest)].sort();
}

function tagRecord(tag: string, digest: string, mediaType: string, size: number): Record<string, unknown> {
  return { key: `${REGISTRY}/${REPO}:${tag}`, digest, mediaType, size, checkedAt: expect.any(Number), imported: true };
}

async function mediaType(cacheDir: string, digest: string): Promise<string> {
  return (await readFile(join(cacheDir, 'media-types', 'sha256', digest.slice(7)), 'utf8')).trim();
}

describe('registry-proxy-agent import', () => {
  let one: TestImage;
  let two: TestImage;
  /** skopeo's outputs: `oci:layout:1`, `oci:two:1` + `oci:two:2`, `oci-archive:oci.tar:1`, `docker-archive:docker.tar:<REGISTRY>/team/app:1`. */
  let layout: string;
  let twoImages: string;
  let ociArchive: string;
  let dockerArchive: string;
  /** `skopeo copy --all` of an index: linux/amd64 → image one, linux/arm64 → image two. */
  let multi: string;
  let index: Buffer;

  beforeAll(async () => {
    root = await makeTempDir('rpa-import');
    const registry = await startRegistry();
    try {
      [one, two] = await Promise.all([makeImage({ layers: 2, layerBytes: 96 * 1024 }), makeImage({ layers: 2, layerBytes: 64 * 1024 })]);
      await pushImage(registry.url, REPO, '1', one);
      await pushImage(registry.url, REPO, '2', two);
      index = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: OCI_INDEX,
          manifests: [
            { mediaType: OCI_MANIFEST, digest: one.manifestDigest, size: one.manifest.length, platform: { os: 'linux', architecture: 'amd64' } },
            { mediaType: OCI_MANIFEST, digest: two.manifestDigest, size: two.manifest.length, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
          ],
        }),
      );
      await pushManifest(registry.url, REPO, 'multi', index, OCI_INDEX);
      multi = join(root, 'multi');
      layout = join(root, 'layout');
      twoImages = join(root, 'two');
      ociArchive = join(root, 'oci.tar');
      dockerArchive = join(root, 'docker.tar');
      const copies: Array<[string, string, ...string[]]> = [
        ['multi', `oci:${multi}:multi`, '--all'],
        ['1', `oci:${layout}:1`],
        ['1', `oci:${twoImages}:1`],
        ['2', `oci:${twoImages}:2`],
        ['1', `oci-archive:${ociArchive}:1`],
        ['1', `docker-archive:${dockerArchive}:${REGISTRY}/${REPO}:1`],
      ];
      // One after the other: two copies into one layout must not race on its index.json.
      for (const [tag, destination, ...flags] of copies) {
        const result = await runCommand('skopeo', ['--insecure-policy', 'copy', ...flags, '--src-tls-verify=false', '--retry-times=0', `docker://${registry.host}/${REPO}:${tag}`, destination], {
          timeoutMs: 60_000,
        });
        expect(result.code, `skopeo copy to ${destination}:\n${result.stderr}`).toBe(0);
      }
    } finally {
      // Everything below runs with the registry gone: imports are for sites that cannot reach it.
      await registry.stop();
    }
  });

  afterAll(async () => {
    if (root) await removeTempDir(root);
  });

  it('1. a skopeo OCI layout imported with --name is pulled by containerd from an offline agent, the registry stopped', async () => {
    const node = await site();
    const imported = await importCli(['--config', node.config, '--name', `${REGISTRY}/${REPO}`, layout]);
    expect(imported.code, output(imported)).toBe(0);
    expect(imported.stdout).toContain(`imported ${REGISTRY}/${REPO}:1 (${one.manifestDigest}, 4 pieces`);
    expect(imported.stdout).toMatch(/1 image imported, 0 refused/);
    expect(imported.stdout).toMatch(/A running agent indexes the imported images after SIGHUP .* or a restart/);
    // Not a TTY here: one line per verified piece.
    expect(imported.stderr).toContain(`importing ${REGISTRY}/${REPO}:1: 4 pieces`);
    expect(imported.stderr.match(/verified \(copied\)/g)).toHaveLength(4);
    // The docker-archive too, under a tag of its own: its manifest names uncompressed layers (the Docker .tar layer type).
    const fromDocker = await importCli(['--config', node.config, '--name', `${REGISTRY}/${REPO}:docker`, dockerArchive]);
    expect(fromDocker.code, output(fromDocker)).toBe(0);
    // And an index (every platform), under its ref.name: containerd picks the linux/amd64 manifest.
    const fromIndex = await importCli(['--config', node.config, '--name', `${REGISTRY}/${REPO}`, multi]);
    expect(fromIndex.code, output(fromIndex)).toBe(0);
    expect((await cacheContent(node.cacheDir)).staging).toEqual([]);

    const containerd = await startContainerd();
    const agent = await startConfiguredAgent({ dir: node.dir, manageHosts: true, mirrors: [{ registry: REGISTRY, upstream: 'http://127.0.0.1:9' }] }, { [REGISTRY]: ['mode = "offline"'] });
    try {
      for (const tag of ['1', 'docker', 'multi']) {
        const pulled = await containerd.pull(`${REGISTRY}/${REPO}:${tag}`, { hostsDir: node.hostsDir, namespace: `import-${tag}` });
        expect(pulled.code, `ctr pull ${tag}:\n${pulled.stderr}${pulled.stdout}\n--- agent ---\n${agent.logs.slice(-20).map((l) => JSON.stringify(l)).join('\n')}`).toBe(0);
      }
      const images = await containerd.ctr(['-n', 'import-1', 'images', 'ls']);
      expect(images.stdout).toContain(one.manifestDigest);
      expect((await containerd.ctr(['-n', 'import-multi', 'images', 'ls'])).stdout).toContain(sha256(index));
      // Every blob came from the cache, through the offline mirror.
      const blobs = agent.requests.filter((r) => r.outcome.kind === 'blob' && r.method === 'GET');
      expect(blobs.length).toBeGreaterThanOrEqual(9);
      expect(blobs.every((r) => r.outcome.registry === REGISTRY && r.status === 200 && r.outcome.cache === 'hit')).toBe(true);
    } finally {
      await Promise.all([agent.stop(), containerd.stop()]);
    }
  });

  it('2. a docker-archive and an oci-archive (skopeo), and a GNU tar pax archive of a layout, land in the cache with the right digests', async () => {
    // docker-archive, named by its RepoTags: the config as is, the layers as the uncompressed tars (digest = diff_id).
    // pin_max_bytes below the image: imported, with a warning that it may be evicted.
    const docker = await site({ extraToml: 'pin_max_bytes = 10000' });
    const fromDocker = await importCli(['--config', docker.config, dockerArchive]);
    expect(fromDocker.code, output(fromDocker)).toBe(0);
    expect(fromDocker.stderr).toMatch(/warning: imported images hold [\d.]+ KiB, more than pin_max_bytes \(9\.8 KiB\)/);
    const tars = await Promise.all(one.layers.map((l) => gunzip(l.bytes)));
    const expectedManifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: DOCKER_MANIFEST,
        config: { mediaType: 'application/vnd.docker.container.image.v1+json', size: one.config.bytes.length, digest: one.config.digest },
        layers: tars.map((tar) => ({ mediaType: 'application/vnd.docker.image.rootfs.diff.tar', size: tar.length, digest: sha256(tar) })),
      }),
    );
    expect(tars.map((t) => sha256(t))).toEqual(one.layers.map((l) => l.diffId));
    const dockerCache = await cacheContent(docker.cacheDir);
    expect(dockerCache.blobs).toEqual([sha256(expectedManifest), one.config.digest, ...one.layers.map((l) => l.diffId)].sort());
    expect(await readFile(join(docker.cacheDir, 'blobs', 'sha256', sha256(expectedManifest).slice(7)))).toEqual(expectedManifest);
    expect(await mediaType(docker.cacheDir, sha256(expectedManifest))).toBe(DOCKER_MANIFEST);
    expect(dockerCache.tags).toEqual([tagRecord('1', sha256(expectedManifest), DOCKER_MANIFEST, expectedManifest.length)]);
    expect(dockerCache.staging).toEqual([]);

    // oci-archive: the registry's bytes exactly (skopeo keeps them), the tag from ref.name.
    const oci = await site();
    const fromOci = await importCli(['--config', oci.config, '--name', `${REGISTRY}/${REPO}`, ociArchive]);
    expect(fromOci.code, output(fromOci)).toBe(0);
    const ociCache = await cacheContent(oci.cacheDir);
    expect(ociCache.blobs).toEqual(pieces(one));
    expect(await readFile(join(oci.cacheDir, 'blobs', 'sha256', one.manifestDigest.slice(7)))).toEqual(one.manifest);
    expect(await mediaType(oci.cacheDir, one.manifestDigest)).toBe(OCI_MANIFEST);
    expect(ociCache.tags).toEqual([tagRecord('1', one.manifestDigest, OCI_MANIFEST, one.manifest.length)]);

    // The same layout packed by GNU tar in pax format: "./" names, pax extended headers.
    const paxArchive = join(root, 'pax.tar');
    const tarred = await runCommand('tar', ['--format=pax', '-cf', paxArchive, '-C', layout, './oci-layout', './index.json', './blobs'], { timeoutMs: 30_000 });
    expect(tarred.code, tarred.stderr).toBe(0);
    const pax = await site();
    const fromPax = await importCli(['--config', pax.config, '--name', `${REGISTRY}/${REPO}:pax`, paxArchive]);
    expect(fromPax.code, output(fromPax)).toBe(0);
    expect((await cacheContent(pax.cacheDir)).blobs).toEqual(pieces(one));
  });

  it('3. a corrupted layer refuses its image, naming the digest; nothing of it stays; the good image beside it imports', async () => {
    const corrupt = join(root, 'corrupt');
    await cp(twoImages, corrupt, { recursive: true });
    const layer = one.layers[1]!;
    const file = join(corrupt, 'blobs', 'sha256', layer.digest.slice(7));
    const bytes = await readFile(file);
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    await writeFile(file, bytes);

    const node = await site();
    const result = await importCli(['--config', node.config, '--name', `${REGISTRY}/${REPO}`, corrupt]);
    expect(result.code, output(result)).toBe(1);
    expect(result.stderr).toMatch(
      new RegExp(
        `${REGISTRY}/${REPO}:1: refused: layer 2/2 of manifest ${layer.digest} is corrupt: expected ${layer.bytes.length} bytes with digest ${layer.digest}, found ${layer.bytes.length} bytes with digest sha256:[0-9a-f]{64}; nothing of this image was written to the cache`,
      ),
    );
    expect(result.stdout).toContain(`imported ${REGISTRY}/${REPO}:2 (${two.manifestDigest}`);
    expect(result.stdout).toMatch(/1 image imported, 1 refused/);
    const content = await cacheContent(node.cacheDir);
    // Only the good image: not image 1's manifest, config or its intact first layer.
    expect(content.blobs).toEqual(pieces(two));
    expect(await list(join(node.cacheDir, 'media-types', 'sha256'))).toEqual([two.manifestDigest.slice(7)]);
    expect(content.tags).toEqual([tagRecord('2', two.manifestDigest, OCI_MANIFEST, two.manifest.length)]);
    expect(content.staging).toEqual([]);

    // Blobs that were in the cache before stay: image 1 imported whole first, then its corrupted copy under another tag is refused.
    const again = await site();
    expect((await importCli(['--config', again.config, '--name', `${REGISTRY}/${REPO}`, layout])).code).toBe(0);
    const corruptOne = join(root, 'corrupt-one');
    await cp(layout, corruptOne, { recursive: true });
    await writeFile(join(corruptOne, 'blobs', 'sha256', layer.digest.slice(7)), bytes);
    const second = await importCli(['--config', again.config, '--name', `${REGISTRY}/${REPO}:other`, corruptOne]);
    expect(second.code, output(second)).toBe(1);
    expect(second.stderr).toContain(`layer 2/2 of manifest ${layer.digest} is corrupt`);
    const after = await cacheContent(again.cacheDir);
    expect(after.blobs).toEqual(pieces(one));
    expect(after.tags).toEqual([tagRecord('1', one.manifestDigest, OCI_MANIFEST, one.manifest.length)]);
    expect(after.staging).toEqual([]);

    // A layer of the wrong size is refused before it is read.
    const short = join(root, 'short');
    await cp(layout, short, { recursive: true });
    await truncate(join(short, 'blobs', 'sha256', layer.digest.slice(7)), 100);
    const third = await importCli(['--config', again.config, '--name', `${REGISTRY}/${REPO}:short`, short]);
    expect(third.code, output(third)).toBe(1);
    expect(third.stderr).toContain(`layer 2/2 of manifest ${layer.digest} is corrupt: expected ${layer.bytes.length} bytes, the source holds 100`);
  });

  it('4. an interrupted import (SIGINT) writes nothing and removes its staging directory', async () => {
    // One 512 MiB layer (a sparse file; its digest does not matter: the import is stopped while it is copied).
    const big = join(root, 'big');
    await mkdir(join(big, 'blobs', 'sha256'), { recursive: true });
    const config = Buffer.from('{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}');
    const layerDigest = `sha256:${'0'.repeat(64)}`;
    const layerSize = 512 * 1024 * 1024;
    await writeFile(join(big, 'blobs', 'sha256', sha256(config).slice(7)), config);
    await writeFile(join(big, 'blobs', 'sha256', '0'.repeat(64)), '');
    await truncate(join(big, 'blobs', 'sha256', '0'.repeat(64)), layerSize);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layerSize }],
      }),
    );
    await writeFile(join(big, 'blobs', 'sha256', sha256(manifest).slice(7)), manifest);
    await writeFile(join(big, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    await writeFile(join(big, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: OCI_MANIFEST, digest: sha256(manifest), size: manifest.length }] }));

    const node = await site({ cacheMaxBytes: 2 * layerSize });
    const logFile = join(node.dir, 'import.log');
    const child = await startProcess(process.execPath, [...AGENT_NODE_FLAGS, agentMain(), 'import', '--config', node.config, '--name', `${REGISTRY}/${REPO}:big`, big], { logFile });
    await pollUntil(async () => (await tailFile(logFile)).includes('verified (copied)'), {
      what: 'the config verified',
      timeoutMs: 20_000,
      intervalMs: 5,
      abort: () => (child.exitInfo() ? 'import exited' : undefined),
    });
    process.kill(child.pid, 'SIGINT');
    const exit = await child.exited;
    const log = await tailFile(logFile);
    expect(exit.code, log).toBe(130);
    expect(log).toMatch(/SIGINT: stopping/);
    expect(log).toMatch(/interrupted: nothing of this image was written to the cache/);
    expect(await cacheContent(node.cacheDir)).toEqual({ blobs: [], tags: [], staging: [] });
  });

  it('5. an image index needs every platform\'s manifest in SOURCE, unless --platform names the ones wanted', async () => {
    const partial = join(root, 'partial');
    await cp(multi, partial, { recursive: true });
    // The arm64 manifest is missing (its blobs may stay: nothing names them then).
    await rm(join(partial, 'blobs', 'sha256', two.manifestDigest.slice(7)));
    const node = await site();
    const refusedAll = await importCli(['--config', node.config, '--name', `${REGISTRY}/${REPO}`, partial]);
    expect(refusedAll.code, output(refusedAll)).toBe(1);
    expect(refusedAll.stderr).toContain(
      `${REGISTRY}/${REPO}:multi (index.json entry 1 (ref.name "multi")): refused: index ${sha256(index)}: the manifest for linux/arm64/v8 (${two.manifestDigest}) is not in the source; copy every platform (skopeo copy --all) or import the platforms that are there with --platform OS/ARCH`,
    );
    expect(await cacheContent(node.cacheDir)).toEqual({ blobs: [], tags: [], staging: [] });

    const amd64 = await importCli(['--config', node.config, '--name', `${REGISTRY}/${REPO}`, '--platform', 'linux/amd64', partial]);
    expect(amd64.code, output(amd64)).toBe(0);
    expect(amd64.stdout).toContain('linux/arm64/v8 left out (not asked for with --platform)');
    const content = await cacheContent(node.cacheDir);
    expect(content.blobs).toEqual([sha256(index), ...pieces(one)].sort());
    expect(content.tags).toEqual([tagRecord('multi', sha256(index), OCI_INDEX, index.length)]);
    expect(await mediaType(node.cacheDir, sha256(index))).toBe(OCI_INDEX);

    const none = await importCli(['--config', node.config, '--name', `${REGISTRY}/${REPO}:s390x`, '--platform', 'linux/s390x', partial]);
    expect(none.code, output(none)).toBe(1);
    expect(none.stderr).toContain(`index ${sha256(index)} has no manifest for linux/s390x (it has linux/amd64, linux/arm64/v8)`);
  });

  it('6. a running agent serves an import after SIGHUP', async () => {
    const node = await site();
    const port = await freePort();
    const config = await writeAgentConfig({ dir: node.dir, port, mirrors: [{ registry: REGISTRY, upstream: 'http://127.0.0.1:9' }] });
    await addMirrorKeys(config, { [REGISTRY]: ['mode = "offline"'] });
    const agent = await startAgentProcess(config, join(node.dir, 'agent.log'), port);
    const manifest = async (): Promise<{ status: number; digest: unknown }> => {
      const response = await request(`${agent.url}/v2/${REPO}/manifests/1?ns=${REGISTRY}`, { headers: { accept: OCI_MANIFEST } });
      await response.body.dump();
      return { status: response.statusCode, digest: response.headers['docker-content-digest'] };
    };
    try {
      expect((await manifest()).status).toBe(404);
      const imported = await importCli(['--config', config, '--name', `${REGISTRY}/${REPO}`, layout]);
      expect(imported.code, output(imported)).toBe(0);
      process.kill(agent.process.pid, 'SIGHUP');
      await pollUntil(async () => (await manifest()).status === 200, { what: 'the imported tag served after SIGHUP', timeoutMs: 10_000, intervalMs: 50 });
      expect(await manifest()).toEqual({ status: 200, digest: one.manifestDigest });
      const blob = await request(`${agent.url}/v2/${REPO}/blobs/${one.layers[0]!.digest}?ns=${REGISTRY}`);
      expect(sha256(Buffer.from(await blob.body.arrayBuffer()))).toBe(one.layers[0]!.digest);
    } finally {
      await agent.process.stop();
    }
  });

  describe('7. bad inputs get clear errors and write nothing', () => {
    async function refused(args: readonly string[], message: RegExp | string, options: { code?: number; node?: Site } = {}): Promise<void> {
      const node = options.node ?? (await site());
      const result = await importCli(['--config', node.config, ...args]);
      expect(result.code, output(result)).toBe(options.code ?? 1);
      if (typeof message === 'string') expect(result.stderr).toContain(message);
      else expect(result.stderr).toMatch(message);
      expect(await cacheContent(node.cacheDir)).toEqual({ blobs: [], tags: [], staging: [] });
    }

    it('a path that is not a layout or an archive', async () => {
      const plain = join(root, 'plain');
      await mkdir(plain, { recursive: true });
      await writeFile(join(plain, 'README'), 'not an image');
      await refused([plain], `${plain}: not an OCI image layout (it has no oci-layout file)`);
      await refused([join(plain, 'README')], /README: not a tar archive \(12 bytes, shorter than a tar header\)/);
      await writeFile(join(plain, 'notes.txt'), 'not an image\n'.repeat(100));
      await refused([join(plain, 'notes.txt')], /notes\.txt: not a tar archive \(its first block is not a tar header\)/);
      await refused([join(root, 'missing')], `${join(root, 'missing')}: no such file or directory`);
      await refused([`oci:${layout}:1`], `(give the path without skopeo's "oci:" prefix and tag: ${layout})`);
      const gzipped = join(root, 'image.tar.gz');
      await writeFile(gzipped, Buffer.from([0x1f, 0x8b, 8, 0, 0, 0]));
      await refused([gzipped], 'gzip-compressed; decompress it first');
      await refused([], /import needs a SOURCE/, { code: 2 });
    });

    it('a registry that is not configured', async () => {
      await refused(['--name', `other.example:5000/${REPO}:1`, layout], `registry other.example:5000 is not a configured [[mirror]] of`);
      await refused(['--name', `other.example:5000/${REPO}:1`, layout], '(configured: registry.corp.example:5000)');
      // RepoTags naming a registry this site does not mirror.
      await refused([dockerArchive], `${REGISTRY}/${REPO}:1: registry ${REGISTRY} is not a configured [[mirror]]`, { node: await site({ registry: 'docker.io' }) });
    });

    it('a layout entry named only by a tag, without --name', async () => {
      await refused([layout], 'its ref.name "1" is only a tag; give the registry and repository with --name REGISTRY/REPOSITORY');
      // --name with a tag for a layout of two images.
      await refused(['--name', `${REGISTRY}/${REPO}:1`, twoImages], /holds 2 images; --name with a tag names one/);
    });

    it('a truncated tar', async () => {
      const cut = join(root, 'cut.tar');
      await cp(ociArchive, cut);
      const size = (await readFile(cut)).length;
      await truncate(cut, Math.floor(size / 2));
      await refused(['--name', `${REGISTRY}/${REPO}`, cut], /cut\.tar: truncated: entry "blobs\/sha256\/[0-9a-f]{64}" needs \d+ bytes at offset \d+, but the archive ends at \d+/);
      // Cut at an entry boundary: the end-of-archive marker is missing.
      const atBoundary = join(root, 'boundary.tar');
      await writeFile(atBoundary, makeTar([{ name: 'oci-layout', data: Buffer.from('{"imageLayoutVersion":"1.0.0"}') }]).subarray(0, 1024));
      await refused([atBoundary], 'truncated: the archive ends at 1024 bytes without its end-of-archive marker');
    });

    it('tar entries with ".." or an absolute path (nothing is ever written outside staging)', async () => {
      const layoutFiles = [
        { name: 'oci-layout', data: Buffer.from('{"imageLayoutVersion":"1.0.0"}') },
        { name: 'index.json', data: Buffer.from('{"schemaVersion":2,"manifests":[]}') },
      ];
      const climbing = join(root, 'climbing', 'archive.tar');
      await mkdir(join(root, 'climbing'));
      await writeFile(climbing, makeTar([...layoutFiles, { name: '../../evil', data: Buffer.from('x') }]));
      await refused(['--name', `${REGISTRY}/${REPO}:1`, climbing], 'refused: entry "../../evil" has a ".." component');
      const absolute = join(root, 'absolute.tar');
      const target = join(root, 'absolute-evil');
      await writeFile(absolute, makeTar([...layoutFiles, { name: target, data: Buffer.from('x') }]));
      await refused(['--name', `${REGISTRY}/${REPO}:1`, absolute], `refused: entry "${target}" has an absolute path`);
      expect(existsSync(join(root, 'evil'))).toBe(false);
      expect(existsSync(target)).toBe(false);
    });

    it('a manifest larger than 4 MiB', async () => {
      const huge = join(root, 'huge');
      await mkdir(join(huge, 'blobs', 'sha256'), { recursive: true });
      const config = Buffer.from('{}');
      const manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: OCI_MANIFEST,
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(config), size: config.length },
          layers: [],
          annotations: { padding: 'x'.repeat(4 * 1024 * 1024) },
        }),
      );
      await writeFile(join(huge, 'blobs', 'sha256', sha256(config).slice(7)), config);
      await writeFile(join(huge, 'blobs', 'sha256', sha256(manifest).slice(7)), manifest);
      await writeFile(join(huge, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
      await writeFile(join(huge, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: OCI_MANIFEST, digest: sha256(manifest), size: manifest.length }] }));
      await refused(['--name', `${REGISTRY}/${REPO}:1`, huge], `manifest ${sha256(manifest)} is ${manifest.length} bytes: manifests over 4194304 bytes (4 MiB) are refused`);
    });

    it('an image that does not fit on the cache\'s file system (a 128 KiB tmpfs)', async () => {
      const node = await site();
      await mkdir(node.cacheDir);
      const mounted = await runCommand('mount', ['-t', 'tmpfs', '-o', 'size=128k', 'tmpfs', node.cacheDir]);
      expect(mounted.code, `mounting a tmpfs needs root: ${mounted.stderr}`).toBe(0);
      try {
        await refused(['--name', `${REGISTRY}/${REPO}`, layout], /not enough free space on the cache's file system: [\d.]+ KiB to write, [\d.]+ KiB free of 128\.0 KiB, and the agent keeps 5% of it/, { node });
      } finally {
        await runCommand('umount', [node.cacheDir]);
      }
    });

    it('an image that does not fit under cache_max_bytes', async () => {
      await refused(['--name', `${REGISTRY}/${REPO}`, layout], /not enough room under cache_max_bytes \(97\.7 KiB\): the image is [\d.]+ KiB, [\d.]+ KiB of it not in the cache yet/, {
        node: await site({ cacheMaxBytes: 100_000 }),
      });
    });
  });
});
