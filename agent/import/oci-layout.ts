import type { Platform } from '../config/types.ts';
import { type Digest, digestHex, sha256Of } from '../oci/digest.ts';
import { platformMatches, platformText } from '../preload/platform.ts';
import { ImportAborted, ImportError } from './errors.ts';
import { resolveTargets, targetText } from './names.ts';
import { type ImagePlan, MANIFEST_LIMIT, type PlanOptions, type PlannedContent, type PlannedEntry, addOnce, descriptorOf, errorText, naming, refusedEntry } from './plan.ts';
import { type ImageSource, readSmall } from './source.ts';

export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const INDEX_TYPES = new Set([OCI_INDEX, DOCKER_LIST]);
const MANIFEST_TYPES = new Set([OCI_MANIFEST, DOCKER_MANIFEST]);
const REF_NAME = 'org.opencontainers.image.ref.name';
/** docker 25+ `docker save` (and containerd's export) put the full name here; ref.name then holds the tag. */
const CONTAINERD_NAME = 'io.containerd.image.name';
/** An index nests at most this deep below the entry (index → index → manifest); deeper is refused. */
const MAX_DEPTH = 2;

/**
 * The images of an OCI image layout (a directory or an oci-archive): one per entry of index.json.
 * For an index, every platform's manifest must be in the layout (refused otherwise, naming what is
 * missing), unless `--platform` names the ones wanted: then only those are needed and imported.
 * Attestation manifests (buildx) are imported when present and skipped when not.
 */
export async function planLayout(source: ImageSource, options: PlanOptions): Promise<PlannedEntry[]> {
  const layoutFile = await source.file('oci-layout');
  if (!layoutFile) throw new ImportError(`${source.description}: no oci-layout file`);
  const layout = parseJson(await readSmall(layoutFile, 64 * 1024, 'oci-layout'), `${source.description}: oci-layout`);
  const version = (layout as Record<string, unknown> | undefined)?.['imageLayoutVersion'];
  if (typeof version !== 'string' || !version.startsWith('1.')) {
    throw new ImportError(`${source.description}: oci-layout has imageLayoutVersion ${JSON.stringify(version)}; only 1.x layouts are supported`);
  }
  const indexFile = await source.file('index.json');
  if (!indexFile) throw new ImportError(`${source.description}: no index.json`);
  const index = parseJson(await readSmall(indexFile, MANIFEST_LIMIT, `${source.description}: index.json`), `${source.description}: index.json`);
  const entries = (index as Record<string, unknown> | undefined)?.['manifests'];
  if (!Array.isArray(entries)) throw new ImportError(`${source.description}: index.json has no manifests list`);
  if (entries.length === 0) throw new ImportError(`${source.description}: index.json lists no image`);
  if (options.name?.tag !== undefined && entries.length > 1) {
    throw new ImportError(
      `${source.description} holds ${entries.length} images; --name with a tag names one: give --name ${options.name.registry}/${options.name.repository} (tags from each entry's ref.name), or import a layout with one image`,
    );
  }
  const planned: PlannedEntry[] = [];
  for (const [i, entry] of entries.entries()) {
    const annotations = annotationsOf(entry);
    const refName = annotations[REF_NAME];
    const label = `index.json entry ${i + 1}${refName === undefined ? '' : ` (ref.name ${JSON.stringify(refName)})`}`;
    try {
      planned.push({ label, plan: await planEntry(source, entry, label, annotations, options) });
    } catch (error) {
      if (!(error instanceof ImportError)) throw error;
      planned.push(refusedEntry(label, error));
    }
  }
  return planned;
}

async function planEntry(source: ImageSource, entry: unknown, label: string, annotations: Record<string, string>, options: PlanOptions): Promise<ImagePlan> {
  const root = descriptorOf(entry, label);
  const containerdName = annotations[CONTAINERD_NAME];
  const targets = resolveTargets(
    label,
    { ...(annotations[REF_NAME] === undefined ? {} : { refName: annotations[REF_NAME] }), references: containerdName === undefined ? [] : [containerdName] },
    options.name,
    options.registries,
  );
  const manifests: PlannedContent[] = [];
  const blobs: PlannedContent[] = [];
  const notes: string[] = [];
  const rootManifest = await naming(targets.map(targetText).join(', '), () => walk(source, root, 'manifest', 0, { manifests, blobs, notes, platforms: options.platforms, walked: new Set(), signal: options.signal }));
  return { label, targets, root: { digest: root.digest, size: root.size, mediaType: rootManifest.mediaType }, manifests, blobs, notes };
}

interface Walk {
  readonly manifests: PlannedContent[];
  readonly blobs: PlannedContent[];
  readonly notes: string[];
  readonly platforms: readonly Platform[];
  /**
   * Manifests and indexes read so far: each is read, verified and followed once however often
   * indexes name it (an index naming one index a thousand times costs one read).
   */
  readonly walked: Set<Digest>;
  readonly signal: AbortSignal | undefined;
}

/** Reads, verifies and follows one manifest or index; its content is added to `into`, children before it. */
async function walk(
  source: ImageSource,
  descriptor: { digest: Digest; size: number; mediaType: string | undefined },
  what: string,
  depth: number,
  into: Walk,
): Promise<{ mediaType: string }> {
  if (into.signal?.aborted) throw new ImportAborted();
  const bytes = await readManifest(source, descriptor, what);
  const body = parseJson(bytes, `${what} ${descriptor.digest}`) as Record<string, unknown>;
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ImportError(`${what} ${descriptor.digest} is not a JSON object`);
  const declared = typeof body['mediaType'] === 'string' ? body['mediaType'] : undefined;
  if (descriptor.mediaType !== undefined && declared !== undefined && declared !== descriptor.mediaType) {
    throw new ImportError(`${what} ${descriptor.digest}: its descriptor says ${descriptor.mediaType}, the manifest says ${declared}`);
  }
  const isIndex = Array.isArray(body['manifests']);
  const mediaType = descriptor.mediaType ?? declared ?? (isIndex ? OCI_INDEX : OCI_MANIFEST);
  if (body['schemaVersion'] !== 2) throw new ImportError(`${what} ${descriptor.digest}: schemaVersion ${JSON.stringify(body['schemaVersion'])} is not supported (only schema 2 / OCI manifests)`);
  if (isIndex) {
    if (!INDEX_TYPES.has(mediaType)) throw new ImportError(`${what} ${descriptor.digest}: an index with media type ${mediaType}`);
    if (depth >= MAX_DEPTH) throw new ImportError(`${what} ${descriptor.digest}: indexes nested more than ${MAX_DEPTH} deep are not supported`);
    await walkIndex(source, descriptor.digest, body['manifests'] as unknown[], depth, into);
  } else {
    if (!MANIFEST_TYPES.has(mediaType)) throw new ImportError(`${what} ${descriptor.digest}: media type ${mediaType} is not an image manifest or index`);
    if (!Array.isArray(body['layers'])) throw new ImportError(`${what} ${descriptor.digest}: no layers list`);
    const config = descriptorOf(body['config'], `${what} ${descriptor.digest}: config`);
    await addBlob(source, into.blobs, config, `config of ${what}`);
    const layers = body['layers'] as unknown[];
    for (const [i, layer] of layers.entries()) {
      const at = `layer ${i + 1}/${layers.length} of ${what}`;
      const parsed = descriptorOf(layer, `${what} ${descriptor.digest}: ${at}`);
      // Foreign (non-distributable) layers are fetched from their URLs, never held by a registry or a layout.
      if (parsed.fields['urls'] !== undefined || /foreign|nondistributable/.test(parsed.mediaType ?? '')) {
        into.notes.push(`${at} ${parsed.digest} is a foreign layer: not imported`);
        continue;
      }
      await addBlob(source, into.blobs, parsed, at);
    }
  }
  addOnce(into.manifests, { digest: descriptor.digest, size: descriptor.size, what, bytes, mediaType });
  into.walked.add(descriptor.digest);
  return { mediaType };
}

async function walkIndex(source: ImageSource, digest: Digest, children: readonly unknown[], depth: number, into: Walk): Promise<void> {
  const wanted = into.platforms;
  const chosen: Array<{ child: ReturnType<typeof descriptorOf>; name: string; optional: boolean }> = [];
  const available: string[] = [];
  for (const [i, child] of children.entries()) {
    const parsed = descriptorOf(child, `index ${digest}: manifest ${i + 1}`);
    const platform = parsed.fields['platform'];
    const name = platform === undefined ? `manifest ${i + 1}` : platformName(platform);
    const attestation = annotationsOf(child)['vnd.docker.reference.type'] === 'attestation-manifest';
    if (!attestation) available.push(name);
    if (attestation) chosen.push({ child: parsed, name: `attestation ${i + 1}`, optional: true });
    else if (wanted.length === 0 || wanted.some((p) => platformMatches(p, platform))) chosen.push({ child: parsed, name, optional: false });
    else into.notes.push(`${name} left out (not asked for with --platform)`);
  }
  if (wanted.length > 0 && !chosen.some((c) => !c.optional)) {
    throw new ImportError(`index ${digest} has no manifest for ${wanted.map(platformText).join(', ')} (it has ${available.join(', ') || 'none'})`);
  }
  for (const { child, name, optional } of chosen) {
    if (into.walked.has(child.digest)) continue;
    if (!(await source.file(blobPath(child.digest)))) {
      if (optional) {
        into.notes.push(`${name} ${child.digest} is not in the source: not imported`);
        continue;
      }
      throw new ImportError(
        `index ${digest}: the manifest for ${name} (${child.digest}) is not in the source; copy every platform (skopeo copy --all) or import the platforms that are there with --platform OS/ARCH`,
      );
    }
    await walk(source, child, `manifest ${name}`, depth + 1, into);
  }
}

function platformName(platform: unknown): string {
  if (typeof platform !== 'object' || platform === null) return 'unknown platform';
  const { os, architecture, variant } = platform as Record<string, unknown>;
  return `${String(os)}/${String(architecture)}${typeof variant === 'string' && variant !== '' ? `/${variant}` : ''}`;
}

export function blobPath(digest: Digest): string {
  return `blobs/sha256/${digestHex(digest)}`;
}

async function addBlob(source: ImageSource, blobs: PlannedContent[], descriptor: { digest: Digest; size: number }, what: string): Promise<void> {
  const file = await source.file(blobPath(descriptor.digest));
  if (!file) throw new ImportError(`${what} ${descriptor.digest} is not in the source (no ${blobPath(descriptor.digest)})`);
  addOnce(blobs, { digest: descriptor.digest, size: descriptor.size, what, file });
}

/** A manifest's bytes, checked against its descriptor (size first, then digest) and the 4 MiB limit. */
async function readManifest(source: ImageSource, descriptor: { digest: Digest; size: number }, what: string): Promise<Buffer> {
  const { digest, size } = descriptor;
  if (size > MANIFEST_LIMIT) throw new ImportError(`${what} ${digest} is ${size} bytes: manifests over ${MANIFEST_LIMIT} bytes (4 MiB) are refused, as registries refuse them`);
  const file = await source.file(blobPath(digest));
  if (!file) throw new ImportError(`${what} ${digest} is not in the source (no ${blobPath(digest)})`);
  if (file.size > MANIFEST_LIMIT) throw new ImportError(`${what} ${digest} is ${file.size} bytes: manifests over ${MANIFEST_LIMIT} bytes (4 MiB) are refused, as registries refuse them`);
  const bytes = await readSmall(file, MANIFEST_LIMIT, `${what} ${digest}`);
  const actual = sha256Of(bytes);
  if (bytes.length !== size || actual !== digest) {
    throw new ImportError(`${what} ${digest} is corrupt: expected ${size} bytes with digest ${digest}, found ${bytes.length} bytes with digest ${actual}`);
  }
  return bytes;
}

function annotationsOf(entry: unknown): Record<string, string> {
  const annotations = typeof entry === 'object' && entry !== null ? (entry as Record<string, unknown>)['annotations'] : undefined;
  if (typeof annotations !== 'object' || annotations === null) return {};
  const found: Record<string, string> = {};
  for (const [key, value] of Object.entries(annotations)) if (typeof value === 'string') found[key] = value;
  return found;
}

export function parseJson(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new ImportError(`${what} is not valid JSON (${errorText(error)})`);
  }
}
