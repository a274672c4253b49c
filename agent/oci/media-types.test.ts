import { describe, expect, it } from 'vitest';
import { MANIFEST_ACCEPT, MANIFEST_MAX_BYTES, MANIFEST_MEDIA_TYPES, mediaTypeFromBody } from './media-types.ts';

const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
const DOCKER_V2 = 'application/vnd.docker.distribution.manifest.v2+json';
const DOCKER_V1_SIGNED = 'application/vnd.docker.distribution.manifest.v1+prettyjws';

const layer = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${'a'.repeat(64)}`, size: 1 };
const config = { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${'b'.repeat(64)}`, size: 2 };

function body(value: unknown): Buffer {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value));
}

describe('mediaTypeFromBody', () => {
  it.each<[string, unknown, string | undefined]>([
    ['explicit OCI index', { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] }, OCI_INDEX],
    ['explicit Docker manifest list', { schemaVersion: 2, mediaType: DOCKER_LIST, manifests: [] }, DOCKER_LIST],
    ['explicit Docker v2 manifest', { schemaVersion: 2, mediaType: DOCKER_V2, config, layers: [layer] }, DOCKER_V2],
    ['explicit type wins over shape', { mediaType: OCI_MANIFEST, manifests: [] }, OCI_MANIFEST],
    ['OCI index without mediaType', { schemaVersion: 2, manifests: [{ ...config, mediaType: OCI_MANIFEST }] }, OCI_INDEX],
    ['OCI manifest without mediaType', { schemaVersion: 2, config, layers: [layer] }, OCI_MANIFEST],
    ['OCI manifest with no layers', { schemaVersion: 2, config, layers: [] }, OCI_MANIFEST],
    ['Docker schema 1', { schemaVersion: 1, name: 'app', tag: 'v1', fsLayers: [] }, DOCKER_V1_SIGNED],
    ['non-string mediaType falls back to shape', { mediaType: 42, manifests: [] }, OCI_INDEX],
    ['config without layers', { schemaVersion: 2, config }, undefined],
    ['layers not an array', { schemaVersion: 2, config, layers: {} }, undefined],
    ['manifests not an array', { schemaVersion: 2, manifests: {} }, undefined],
    ['schemaVersion 1 as a string', { schemaVersion: '1' }, undefined],
    ['empty object', {}, undefined],
    ['JSON array', [], undefined],
    ['JSON null', 'null', undefined],
    ['JSON string', '"application/json"', undefined],
    ['JSON number', '2', undefined],
    ['invalid JSON', '{"mediaType":', undefined],
    ['empty body', '', undefined],
    ['binary', '\u0000\u00ff\u0001', undefined],
  ])('%s', (_label, value, expected) => {
    expect(mediaTypeFromBody(body(value))).toBe(expected);
  });

  it('decodes UTF-8 bodies', () => {
    expect(mediaTypeFromBody(Buffer.from(JSON.stringify({ mediaType: OCI_INDEX, annotations: { title: 'Grüße' }, manifests: [] }), 'utf8'))).toBe(OCI_INDEX);
  });
});

describe('manifest constants', () => {
  it('accepts every known manifest type, joined as an Accept header', () => {
    expect(MANIFEST_ACCEPT.split(', ')).toEqual([...MANIFEST_MEDIA_TYPES]);
    for (const type of [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_V2, DOCKER_V1_SIGNED]) expect(MANIFEST_MEDIA_TYPES).toContain(type);
  });

  it('limits manifests to 4 MiB like distribution', () => {
    expect(MANIFEST_MAX_BYTES).toBe(4 * 1024 * 1024);
  });
});
