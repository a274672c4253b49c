import { describe, expect, it } from 'vitest';
import { manifestReferences } from './references.ts';

const d = (c: string): string => `sha256:${c.repeat(64)}`;

describe('manifestReferences', () => {
  it('names the config and layers of an image manifest as blobs', () => {
    const body = Buffer.from(JSON.stringify({ schemaVersion: 2, config: { digest: d('a') }, layers: [{ digest: d('b') }, { digest: d('c') }] }));
    expect(manifestReferences(body)).toEqual([
      { kind: 'blobs', digest: d('a') },
      { kind: 'blobs', digest: d('b') },
      { kind: 'blobs', digest: d('c') },
    ]);
  });

  it('names the manifests of an index as manifests', () => {
    const body = Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [{ digest: d('e'), platform: { os: 'linux' } }] }));
    expect(manifestReferences(body)).toEqual([{ kind: 'manifests', digest: d('e') }]);
  });

  it('refers to nothing for what is not a manifest, and skips malformed digests', () => {
    for (const body of ['', 'not json', 'null', '[1,2]', '{"layers":"x"}', '{"config":{"digest":"sha256:zz"}}', '{"layers":[null,{"digest":7}]}']) {
      expect(manifestReferences(Buffer.from(body)), body).toEqual([]);
    }
  });

  it('leaves out foreign (non-distributable) layers: registries neither hold nor check them', () => {
    const body = Buffer.from(
      JSON.stringify({
        config: { digest: d('a') },
        layers: [
          { mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip', digest: d('b') },
          { mediaType: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', digest: d('c') },
          { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: d('e'), urls: ['https://example.com/layer'] },
          { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: d('f') },
        ],
      }),
    );
    expect(manifestReferences(body)).toEqual([
      { kind: 'blobs', digest: d('a') },
      { kind: 'blobs', digest: d('f') },
    ]);
  });
});
