import type { Digest } from '../oci/digest.ts';
import { manifestReferences } from '../oci/references.ts';
import type { TagStore } from './tag-store.ts';

type Kind = 'manifests' | 'blobs';

/** How deep an index may nest (index → manifest → blobs); deeper references are not followed. */
const MAX_DEPTH = 3;

/**
 * What an offline mirror may serve: the content its own tag records name (imported, or answered by
 * its upstream while it was online), and what those manifests name in turn, per repository. Content
 * another mirror cached is not in it: the cache holds one copy per digest, but an offline mirror
 * serves only its own images. Nobody is asked: the records are the whole truth while offline.
 */
export class OfflineCatalog {
  readonly #registry: string;
  readonly #tags: TagStore;
  /** The manifest bytes of a cached digest (undefined: not cached); the caller bounds and verifies them. */
  readonly #readManifest: (digest: Digest) => Promise<Buffer | undefined>;
  #links = new Set<string>();

  constructor(registry: string, tags: TagStore, readManifest: (digest: Digest) => Promise<Buffer | undefined>) {
    this.#registry = registry;
    this.#tags = tags;
    this.#readManifest = readManifest;
  }

  /** Rebuilds the catalog from every tag record of this mirror (start-up, SIGHUP after an import). */
  async refresh(): Promise<number> {
    const next = new Set<string>();
    for (const { name, record } of await this.#tags.list(this.#registry)) await this.#walk(next, name, record.digest, 0);
    this.#links = next;
    return next.size;
  }

  /** A tag record read just now names `digest` in `name`: it and what it names are this mirror's. */
  async vouch(name: string, digest: Digest): Promise<void> {
    if (this.#links.has(key('manifests', name, digest))) return;
    await this.#walk(this.#links, name, digest, 0);
  }

  has(kind: Kind, name: string, digest: Digest): boolean {
    return this.#links.has(key(kind, name, digest));
  }

  async #walk(links: Set<string>, name: string, manifest: Digest, depth: number): Promise<void> {
    links.add(key('manifests', name, manifest));
    if (depth >= MAX_DEPTH) return;
    const body = await this.#readManifest(manifest);
    if (!body) return;
    for (const reference of manifestReferences(body)) {
      if (reference.kind === 'blobs') links.add(key('blobs', name, reference.digest));
      else if (!links.has(key('manifests', name, reference.digest))) await this.#walk(links, name, reference.digest, depth + 1);
    }
  }
}

function key(kind: Kind, name: string, digest: string): string {
  return `${kind} ${name} ${digest}`;
}
