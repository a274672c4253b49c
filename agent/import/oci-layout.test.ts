import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import type { Digest } from '../oci/digest.ts';
import { ImportAborted } from './errors.ts';
import { blobPath, planLayout } from './oci-layout.ts';
import type { ImagePlan } from './plan.ts';
import type { ImageSource } from './source.ts';

const REGISTRY = 'registry.corp.example:5000';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

function sha256(data: Buffer): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}` as Digest;
}

/** An in-memory layout that counts how often each file is opened. */
class Layout {
  readonly files = new Map<string, Buffer>();
  readonly opened = new Map<string, number>();

  blob(content: string | object): { digest: Digest; size: number } {
    const bytes = Buffer.from(typeof content === 'string' ? content : JSON.stringify(content));
    const digest = sha256(bytes);
    this.files.set(blobPath(digest), bytes);
    return { digest, size: bytes.length };
  }

  source(): ImageSource {
    return {
      format: 'oci-layout',
      description: 'OCI layout test',
      file: async (path) => {
        const bytes = this.files.get(path);
        if (!bytes) return undefined;
        return {
          size: bytes.length,
          open: () => {
            this.opened.set(path, (this.opened.get(path) ?? 0) + 1);
            return Readable.from([bytes]);
          },
        };
      },
      close: async () => undefined,
    };
  }
}

/** index.json → index A naming index B `fanOut` times → B naming one image manifest `fanOut` times. */
function nestedIndexes(fanOut: number): { layout: Layout; manifest: Digest; inner: Digest } {
  const layout = new Layout();
  const config = layout.blob({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } });
  const layer = layout.blob('a layer');
  const manifest = layout.blob({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
  });
  const child = { mediaType: OCI_MANIFEST, ...manifest, platform: { os: 'linux', architecture: 'amd64' } };
  const inner = layout.blob({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: Array.from({ length: fanOut }, () => child) });
  const outer = layout.blob({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: Array.from({ length: fanOut }, () => ({ mediaType: OCI_INDEX, ...inner })) });
  layout.files.set('oci-layout', Buffer.from('{"imageLayoutVersion":"1.0.0"}'));
  layout.files.set('index.json', Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: OCI_INDEX, ...outer, annotations: { 'org.opencontainers.image.ref.name': `${REGISTRY}/team/app:1` } }] })));
  return { layout, manifest: manifest.digest, inner: inner.digest };
}

const options = { platforms: [], registries: { names: [REGISTRY], source: 'file' as const } };

describe('planLayout', () => {
  it('reads and follows each manifest once however often indexes name it (no quadratic walk)', async () => {
    const { layout, manifest, inner } = nestedIndexes(2_000);
    const [entry] = await planLayout(layout.source(), options);
    const plan = (entry as { plan: ImagePlan }).plan;
    expect(plan.manifests.map((m) => m.digest)).toEqual(expect.arrayContaining([manifest, inner]));
    expect(plan.manifests).toHaveLength(3);
    expect(plan.blobs).toHaveLength(2);
    for (const [path, count] of layout.opened) expect(count, path).toBe(1);
  });

  it('stops with ImportAborted once the signal aborted (SIGINT while the manifests are read)', async () => {
    const { layout } = nestedIndexes(3);
    const controller = new AbortController();
    controller.abort();
    await expect(planLayout(layout.source(), { ...options, signal: controller.signal })).rejects.toBeInstanceOf(ImportAborted);
  });
});
