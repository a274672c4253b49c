import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { BlobCache } from '../cache/blob-cache.ts';
import type { BlobReadable } from '../cache/blob-reader.ts';
import type { MirrorConfig } from '../config/types.ts';
import { type Digest, isDigest } from '../oci/digest.ts';
import { OciError } from '../oci/errors.ts';
import { MANIFEST_ACCEPT, MANIFEST_MAX_BYTES, mediaTypeFromBody } from '../oci/media-types.ts';
import { type Reference, type RepositoryName, upstreamRepository } from '../oci/reference.ts';
import { type UpstreamClient, type UpstreamResponse, firstHeader } from '../upstream/client.ts';
import { UpstreamError } from '../upstream/errors.ts';
import type { TagRecord, TagStore } from './tag-store.ts';
import { contentLength, upstreamFailure } from './upstream-status.ts';

/** How a manifest answer was obtained, for logs and metrics. */
export type ManifestOrigin = 'hit' | 'miss' | 'stale';

export interface ManifestResult {
  readonly digest: Digest;
  readonly mediaType: string;
  readonly size: number;
  /** Present for GET. */
  readonly body: Buffer | undefined;
  readonly origin: ManifestOrigin;
}

export interface MirrorDeps {
  readonly config: MirrorConfig;
  readonly upstream: UpstreamClient;
  readonly cache: BlobCache;
  readonly tags: TagStore;
  readonly log: Logger;
  readonly now?: () => number;
}

/**
 * One configured mirror: answers pull requests for its registry from the cache, asking its
 * upstream when needed. Speaks the protocol's domain (names, digests, OCI errors); knows no HTTP.
 */
export class Mirror {
  readonly config: MirrorConfig;
  readonly upstream: UpstreamClient;
  readonly #cache: BlobCache;
  readonly #tags: TagStore;
  readonly #log: Logger;
  readonly #now: () => number;

  constructor(deps: MirrorDeps) {
    this.config = deps.config;
    this.upstream = deps.upstream;
    this.#cache = deps.cache;
    this.#tags = deps.tags;
    this.#log = deps.log;
    this.#now = deps.now ?? Date.now;
  }

  get registry(): string {
    return this.config.registry;
  }

  async manifest(name: RepositoryName, reference: Reference, wantBody: boolean): Promise<ManifestResult> {
    if (reference.kind === 'digest') return this.#manifestByDigest(name, reference.digest, undefined, 'miss');
    return this.#manifestByTag(name, reference.tag, wantBody);
  }

  async blobSize(name: RepositoryName, digest: Digest): Promise<number> {
    const cached = await this.#cache.sizeOf(digest);
    if (cached !== undefined) return cached;
    const response = await this.#request('HEAD', name, `blobs/${digest}`);
    if (response.status !== 200) throw await upstreamFailure(this.registry, response, () => blobUnknown(digest));
    await response.body.dump().catch(() => undefined);
    const size = contentLength(response);
    if (size === undefined) throw new UpstreamError(this.registry, 'invalid', 'blob HEAD without Content-Length');
    return size;
  }

  /** Opens a blob from cache, a running fill, or a new fill from upstream. */
  async blob(name: RepositoryName, digest: Digest): Promise<BlobReadable> {
    return this.#cache.open(digest, async () => {
      const response = await this.#request('GET', name, `blobs/${digest}`);
      if (response.status !== 200) throw await upstreamFailure(this.registry, response, () => blobUnknown(digest));
      return { size: contentLength(response), body: response.body };
    });
  }

  async #manifestByTag(name: RepositoryName, tag: string, wantBody: boolean): Promise<ManifestResult> {
    const known = await this.#tags.get(this.registry, name, tag);
    const now = this.#now();
    if (known && now - known.checkedAt < this.config.tagTtlMs) {
      return this.#manifestByDigest(name, known.digest, known.mediaType, 'hit');
    }
    try {
      return await this.#resolveTag(name, tag, wantBody);
    } catch (error) {
      if (!(error instanceof UpstreamError) || !error.unavailable || !known) throw error;
      const age = now - known.checkedAt;
      if (age > this.config.maxStaleMs) {
        this.#log.warn({ registry: this.registry, tag, ageMs: age, err: error.message }, 'upstream unavailable and the cached tag is older than max_stale');
        throw error;
      }
      const cached = await this.#cachedManifest(known.digest, known.mediaType, 'stale');
      if (!cached) throw error;
      this.#log.warn({ registry: this.registry, tag, digest: known.digest, ageMs: age, err: error.message }, 'upstream unavailable: serving the last known digest for this tag');
      return cached;
    }
  }

  async #resolveTag(name: RepositoryName, tag: string, wantBody: boolean): Promise<ManifestResult> {
    if (!wantBody) {
      const head = await this.#request('HEAD', name, `manifests/${tag}`, { accept: MANIFEST_ACCEPT });
      if (head.status !== 200) throw await upstreamFailure(this.registry, head, () => manifestUnknown(tag));
      await head.body.dump().catch(() => undefined);
      const digest = firstHeader(head.headers['docker-content-digest']);
      const mediaType = firstHeader(head.headers['content-type']);
      if (digest && isDigest(digest) && mediaType) {
        await this.#rememberTag(name, tag, { digest, mediaType, size: contentLength(head) ?? 0, checkedAt: this.#now() });
        return this.#manifestByDigest(name, digest, mediaType, 'miss');
      }
    }
    const response = await this.#request('GET', name, `manifests/${tag}`, { accept: MANIFEST_ACCEPT });
    if (response.status !== 200) throw await upstreamFailure(this.registry, response, () => manifestUnknown(tag));
    const body = await readLimited(this.registry, response);
    const digest = sha256(body);
    const announced = firstHeader(response.headers['docker-content-digest']);
    if (announced && announced.startsWith('sha256:') && announced !== digest) {
      throw new UpstreamError(this.registry, 'invalid', `manifest digest header ${announced} does not match its content ${digest}`);
    }
    const mediaType = firstHeader(response.headers['content-type']) ?? mediaTypeFromBody(body) ?? 'application/octet-stream';
    await this.#cache.putSmall(digest, body, mediaType);
    await this.#rememberTag(name, tag, { digest, mediaType, size: body.length, checkedAt: this.#now() });
    return { digest, mediaType, size: body.length, body, origin: 'miss' };
  }

  async #rememberTag(name: RepositoryName, tag: string, record: TagRecord): Promise<void> {
    await this.#tags.set(this.registry, name, tag, record).catch((error: unknown) => {
      this.#log.warn({ registry: this.registry, err: (error as Error).message }, 'could not persist tag record');
    });
  }

  async #manifestByDigest(name: RepositoryName, digest: Digest, mediaTypeHint: string | undefined, origin: ManifestOrigin): Promise<ManifestResult> {
    const cached = await this.#cachedManifest(digest, mediaTypeHint, origin === 'miss' ? 'hit' : origin);
    if (cached) return cached;
    const response = await this.#request('GET', name, `manifests/${digest}`, { accept: MANIFEST_ACCEPT });
    if (response.status !== 200) throw await upstreamFailure(this.registry, response, () => manifestUnknown(digest));
    const body = await readLimited(this.registry, response);
    const actual = sha256(body);
    if (actual !== digest) {
      throw new UpstreamError(this.registry, 'invalid', `upstream manifest for ${digest} hashes to ${actual}`);
    }
    const mediaType = firstHeader(response.headers['content-type']) ?? mediaTypeHint ?? mediaTypeFromBody(body) ?? 'application/octet-stream';
    await this.#cache.putSmall(digest, body, mediaType);
    return { digest, mediaType, size: body.length, body, origin: 'miss' };
  }

  async #cachedManifest(digest: Digest, mediaTypeHint: string | undefined, origin: ManifestOrigin): Promise<ManifestResult | undefined> {
    const cached = await this.#cache.getSmall(digest);
    if (!cached) return undefined;
    const mediaType = cached.mediaType ?? mediaTypeHint ?? mediaTypeFromBody(cached.bytes);
    if (!mediaType) return undefined;
    return { digest, mediaType, size: cached.bytes.length, body: cached.bytes, origin };
  }

  #request(method: 'GET' | 'HEAD', name: RepositoryName, rest: string, headers: Record<string, string> = {}): Promise<UpstreamResponse> {
    const repository = upstreamRepository(this.config.repositoryPrefix, name);
    return this.upstream.request(method, `/v2/${repository}/${rest}`, `repository:${repository}:pull`, headers);
  }
}

async function readLimited(registry: string, response: UpstreamResponse): Promise<Buffer> {
  const announced = contentLength(response);
  if (announced !== undefined && announced > MANIFEST_MAX_BYTES) {
    response.body.destroy();
    throw new UpstreamError(registry, 'invalid', `manifest of ${announced} bytes exceeds the ${MANIFEST_MAX_BYTES}-byte limit`);
  }
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of response.body) {
    total += (chunk as Buffer).length;
    if (total > MANIFEST_MAX_BYTES) {
      response.body.destroy();
      throw new UpstreamError(registry, 'invalid', `manifest exceeds the ${MANIFEST_MAX_BYTES}-byte limit`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks, total);
}

function sha256(bytes: Buffer): Digest {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
}

function manifestUnknown(reference: string): OciError {
  return new OciError('MANIFEST_UNKNOWN', 'manifest unknown', { detail: { reference } });
}

function blobUnknown(digest: Digest): OciError {
  return new OciError('BLOB_UNKNOWN', 'blob unknown', { detail: { digest } });
}
