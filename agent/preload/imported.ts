import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import type { BlobCache } from '../cache/blob-cache.ts';
import type { TagStore } from '../mirror/tag-store.ts';
import type { Digest } from '../oci/digest.ts';
import { MANIFEST_MAX_BYTES } from '../oci/media-types.ts';
import { manifestReferences } from '../oci/references.ts';
import type { PinGroup } from './pins.ts';

/**
 * The content of every imported image (tag records marked imported), as pin groups: the manifest,
 * what it names, and for an index its manifests' content, with the sizes the cache holds. Only used
 * to choose pins (nothing is served from what is read here), so manifests are read without the
 * re-hash a serve does; content not in the cache is left out.
 */
export async function importedContent(tags: TagStore, cache: BlobCache, log: Logger): Promise<PinGroup[]> {
  const groups: PinGroup[] = [];
  for (const { registry, name, tag, record } of await tags.list()) {
    if (record.imported !== true) continue;
    const content = new Map<Digest, number>();
    try {
      await walk(cache, record.digest, content, 0);
    } catch (error) {
      log.warn({ image: `${registry}/${name}:${tag}`, err: (error as Error).message }, 'imported image could not be read for pinning');
    }
    if (content.size > 0) groups.push({ key: `import ${registry}/${name}:${tag}`, content });
  }
  return groups;
}

async function walk(cache: BlobCache, manifest: Digest, content: Map<Digest, number>, depth: number): Promise<void> {
  const size = await cache.sizeOf(manifest);
  if (size === undefined || content.has(manifest)) return;
  content.set(manifest, size);
  if (size > MANIFEST_MAX_BYTES || depth > 2) return;
  const body = await readFile(cache.store.blobPath(manifest));
  for (const reference of manifestReferences(body)) {
    if (reference.kind === 'manifests') {
      await walk(cache, reference.digest, content, depth + 1);
      continue;
    }
    const blobSize = await cache.sizeOf(reference.digest);
    if (blobSize !== undefined) content.set(reference.digest, blobSize);
  }
}
