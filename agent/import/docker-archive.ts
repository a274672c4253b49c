import { type Digest, isDigest, sha256Of } from '../oci/digest.ts';
import { ImportAborted, ImportError } from './errors.ts';
import { resolveTargets, targetText } from './names.ts';
import { parseJson } from './oci-layout.ts';
import { type ImagePlan, MANIFEST_LIMIT, type PlanOptions, type PlannedContent, type PlannedEntry, addOnce, naming, refusedEntry } from './plan.ts';
import { type ImageSource, readSmall } from './source.ts';

export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json';
/** An uncompressed layer, as a docker-archive holds it. */
export const DOCKER_LAYER_TAR = 'application/vnd.docker.image.rootfs.diff.tar';
/** An image config is a few KiB; history-heavy ones some hundred. */
const CONFIG_LIMIT = 16 * 1024 * 1024;

export interface Descriptor {
  readonly digest: Digest;
  readonly size: number;
}

/**
 * The Docker schema 2 manifest for a docker-archive image: the config and the layers as the archive
 * holds them (uncompressed tars, digest = their sha256 = the config's diff_ids), serialised as
 * skopeo and distribution write manifests (compact JSON, fields in this order).
 */
export function dockerManifest(config: Descriptor, layers: readonly Descriptor[]): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: DOCKER_MANIFEST,
      config: { mediaType: DOCKER_CONFIG, size: config.size, digest: config.digest },
      layers: layers.map((layer) => ({ mediaType: DOCKER_LAYER_TAR, size: layer.size, digest: layer.digest })),
    }),
  );
}

/**
 * The images of a docker-archive (`docker save`, `skopeo copy … docker-archive:FILE:REF`): one per
 * entry of manifest.json. The archive names no digests, so the config is read and hashed, and each
 * layer must hash to the config's `rootfs.diff_ids` (in order), which is also its digest in the
 * manifest built for it. Files named by a digest (`<hex>.json`, `<hex>.tar`, `blobs/sha256/<hex>`)
 * must hold that digest.
 */
export async function planDockerArchive(source: ImageSource, options: PlanOptions): Promise<PlannedEntry[]> {
  const manifestFile = await source.file('manifest.json');
  if (!manifestFile) throw new ImportError(`${source.description}: no manifest.json`);
  const list = parseJson(await readSmall(manifestFile, MANIFEST_LIMIT, `${source.description}: manifest.json`), `${source.description}: manifest.json`);
  if (!Array.isArray(list) || list.length === 0) throw new ImportError(`${source.description}: manifest.json lists no image`);
  if (options.name?.tag !== undefined && list.length > 1) {
    throw new ImportError(`${source.description} holds ${list.length} images; --name with a tag names one: import an archive with one image, or without --name (RepoTags)`);
  }
  const planned: PlannedEntry[] = [];
  for (const [i, entry] of list.entries()) {
    if (options.signal?.aborted) throw new ImportAborted();
    const repoTags = stringList((entry as Record<string, unknown> | null)?.['RepoTags']);
    const label = `manifest.json entry ${i + 1}${repoTags.length === 0 ? '' : ` (${repoTags.join(', ')})`}`;
    try {
      planned.push({ label, plan: await planImage(source, entry, label, repoTags, options) });
    } catch (error) {
      if (!(error instanceof ImportError)) throw error;
      planned.push(refusedEntry(label, error));
    }
  }
  return planned;
}

async function planImage(source: ImageSource, entry: unknown, label: string, repoTags: string[], options: PlanOptions): Promise<ImagePlan> {
  if (typeof entry !== 'object' || entry === null) throw new ImportError(`${label}: not an object`);
  const targets = resolveTargets(label, { references: repoTags }, options.name, options.registries);
  return naming(targets.map(targetText).join(', '), () => planContent(source, entry as Record<string, unknown>, label, targets));
}

async function planContent(source: ImageSource, fields: Record<string, unknown>, label: string, targets: ImagePlan['targets']): Promise<ImagePlan> {
  if (fields['LayerSources'] !== undefined && Object.keys(fields['LayerSources'] as object).length > 0) {
    throw new ImportError(`${label}: foreign layers (LayerSources) are not supported`);
  }
  const configPath = fields['Config'];
  if (typeof configPath !== 'string') throw new ImportError(`${label}: no Config`);
  const configFile = await source.file(configPath);
  if (!configFile) throw new ImportError(`${label}: its config ${configPath} is not in the archive`);
  const configBytes = await readSmall(configFile, CONFIG_LIMIT, `${label}: config ${configPath}`);
  const config: PlannedContent = { digest: sha256Of(configBytes), size: configBytes.length, what: 'config', bytes: configBytes };
  checkNamedDigest(configPath, config.digest, (named) => `${label}: config ${configPath} is corrupt: expected digest ${named} (its name), found ${config.digest} (${configBytes.length} bytes)`);
  const diffIds = diffIdsOf(parseJson(configBytes, `${label}: config ${configPath}`), `${label}: config ${config.digest}`);
  const layerPaths = stringList(fields['Layers']);
  if (!Array.isArray(fields['Layers']) || layerPaths.length !== (fields['Layers'] as unknown[]).length) throw new ImportError(`${label}: Layers is not a list of paths`);
  if (layerPaths.length !== diffIds.length) {
    throw new ImportError(`${label}: ${layerPaths.length} layers, but the config lists ${diffIds.length} (rootfs.diff_ids)`);
  }
  const blobs: PlannedContent[] = [config];
  const layers: Descriptor[] = [];
  for (const [i, path] of layerPaths.entries()) {
    const digest = diffIds[i] as Digest;
    const what = `layer ${i + 1}/${layerPaths.length} (${path})`;
    checkNamedDigest(path, digest, (named) => `${label}: ${what} is named ${named}, but the config says its diff_id is ${digest}`);
    const file = await source.file(path);
    if (!file) throw new ImportError(`${label}: ${what} is not in the archive`);
    layers.push({ digest, size: file.size });
    addOnce(blobs, { digest, size: file.size, what, file });
  }
  const manifest = dockerManifest(config, layers);
  const digest = sha256Of(manifest);
  return {
    label,
    targets,
    root: { digest, mediaType: DOCKER_MANIFEST, size: manifest.length },
    manifests: [{ digest, size: manifest.length, what: 'manifest', bytes: manifest, mediaType: DOCKER_MANIFEST }],
    blobs,
    notes: [],
  };
}

function diffIdsOf(config: unknown, at: string): Digest[] {
  const rootfs = (config as Record<string, unknown> | null)?.['rootfs'];
  const ids = (rootfs as Record<string, unknown> | null | undefined)?.['diff_ids'];
  if (!Array.isArray(ids)) throw new ImportError(`${at} has no rootfs.diff_ids`);
  return ids.map((id, i) => {
    if (typeof id !== 'string' || !isDigest(id)) throw new ImportError(`${at}: rootfs.diff_ids[${i}] ${JSON.stringify(id)} is not a sha256 digest`);
    return id;
  });
}

/** A file named by a digest (`<hex>.json`, `<hex>.tar`, `blobs/sha256/<hex>`) must be meant as that digest. */
function checkNamedDigest(path: string, digest: Digest, mismatch: (named: string) => string): void {
  const match = /^(?:blobs\/sha256\/([a-f0-9]{64})|([a-f0-9]{64})\.(?:json|tar))$/.exec(path);
  const named = match?.[1] ?? match?.[2];
  if (named !== undefined && `sha256:${named}` !== digest) throw new ImportError(mismatch(`sha256:${named}`));
}

function stringList(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
}
