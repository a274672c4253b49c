/** Manifest media types a puller may ask for; sent upstream as the Accept header. */
export const MANIFEST_MEDIA_TYPES = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
  'application/vnd.docker.distribution.manifest.v1+json',
] as const;

export const MANIFEST_ACCEPT = MANIFEST_MEDIA_TYPES.join(', ');

/** distribution refuses manifests over 4 MiB; so do we (they are buffered to be verified). */
export const MANIFEST_MAX_BYTES = 4 * 1024 * 1024;

/** Recovers the media type from a manifest body when no header is known (e.g. after restart). */
export function mediaTypeFromBody(body: Buffer): string | undefined {
  try {
    const parsed: unknown = JSON.parse(body.toString('utf8'));
    if (typeof parsed !== 'object' || parsed === null) return undefined;
    const record = parsed as Record<string, unknown>;
    if (typeof record['mediaType'] === 'string') return record['mediaType'];
    if (Array.isArray(record['manifests'])) return 'application/vnd.oci.image.index.v1+json';
    if (record['config'] !== undefined && Array.isArray(record['layers'])) return 'application/vnd.oci.image.manifest.v1+json';
    if (record['schemaVersion'] === 1) return 'application/vnd.docker.distribution.manifest.v1+prettyjws';
    return undefined;
  } catch {
    return undefined;
  }
}
