import { type Digest, isDigest } from './digest.ts';

/** Content a manifest names: its config and layers (blobs), or the manifests of an index. */
export interface ManifestReference {
  readonly kind: 'blobs' | 'manifests';
  readonly digest: Digest;
}

/**
 * The digests an image manifest or index refers to (OCI and Docker schema 2 alike), as content the
 * registry holds: foreign (non-distributable) layers, which registries do not hold or check, are left
 * out. Anything that is not such a manifest (or not JSON) refers to nothing. Only well-formed
 * digests are returned.
 */
export function manifestReferences(body: Buffer): ManifestReference[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return [];
  }
  if (typeof parsed !== 'object' || parsed === null) return [];
  const fields = parsed as Record<string, unknown>;
  const found: ManifestReference[] = [];
  const add = (kind: ManifestReference['kind'], descriptor: unknown): void => {
    if (typeof descriptor !== 'object' || descriptor === null) return;
    const fields = descriptor as Record<string, unknown>;
    // A foreign (non-distributable) layer is not in the registry at all: naming one proves nothing.
    if (fields['urls'] !== undefined || /foreign|nondistributable/.test(String(fields['mediaType'] ?? ''))) return;
    const digest = fields['digest'];
    if (typeof digest === 'string' && isDigest(digest)) found.push({ kind, digest });
  };
  add('blobs', fields['config']);
  for (const layer of Array.isArray(fields['layers']) ? fields['layers'] : []) add('blobs', layer);
  for (const child of Array.isArray(fields['manifests']) ? fields['manifests'] : []) add('manifests', child);
  return found;
}
