import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Logger } from 'pino';
import { ANONYMOUS, AccessMemory, hashCredential } from '../auth/access-memory.ts';
import { challengeForRepository } from '../auth/challenge-rewrite.ts';
import { AuthRequiredError } from '../auth/errors.ts';
import { RealmRegistry } from '../auth/realms.ts';
import { TokenGrants, realmKey } from '../auth/token-grants.ts';
import type { BlobCache } from '../cache/blob-cache.ts';
import type { BlobReadable } from '../cache/blob-reader.ts';
import type { MirrorConfig } from '../config/types.ts';
import { type Digest, isDigest } from '../oci/digest.ts';
import { OciError } from '../oci/errors.ts';
import { MANIFEST_ACCEPT, MANIFEST_MAX_BYTES, mediaTypeFromBody } from '../oci/media-types.ts';
import { type Reference, type RepositoryName, upstreamRepository } from '../oci/reference.ts';
import { BodyBudget } from '../memory/body-budget.ts';
import { type HeldBody, readBody, releaseOnThrow } from '../memory/held-body.ts';
import { type UpstreamClient, type UpstreamResponse, firstHeader } from '../upstream/client.ts';
import { UpstreamError, fromTransportError } from '../upstream/errors.ts';
import { type FillSlotEvent, type FillSlotLimits, FillSlots } from './fill-slots.ts';
import type { TagRecord, TagStore } from './tag-store.ts';
import { contentLength, upstreamFailure } from './upstream-status.ts';

/** How a manifest answer was obtained, for logs and metrics. */
export type ManifestOrigin = 'hit' | 'miss' | 'stale';

export interface ManifestResult {
  readonly digest: Digest;
  readonly mediaType: string;
  readonly size: number;
  /**
   * The manifest, held under the process's body budget: the receiver owns it and must release it
   * once done (the HTTP handler: when the response that carries it is done; HEAD: at once).
   */
  readonly body: HeldBody;
  readonly origin: ManifestOrigin;
}

/** Who is pulling: the credential the puller presented (passthrough mode), and whether they are still there. */
export interface PullContext {
  readonly authorization?: string | undefined;
  /**
   * Aborts (with a reason the HTTP layer chooses) when the puller's connection closed before the
   * answer started: a blob request still waiting for a download slot then leaves the queue, unless
   * other requests wait for the same blob; a manifest request waiting for room in the body budget
   * leaves that queue.
   */
  readonly signal?: AbortSignal | undefined;
}

/** Download slots of a mirror (`max_fills_per_mirror`, `max_queued_fills_per_mirror`) and who hears about their use. */
export interface MirrorSlots extends FillSlotLimits {
  readonly onEvent?: (event: FillSlotEvent) => void;
}

/** The configuration defaults, for mirrors built without limits (tests). */
const DEFAULT_SLOTS: FillSlotLimits = { running: 8, queued: 64 };

/** How long an upstream "yes" for a credential + repository is trusted before asking again. */
export const ACCESS_RECHECK_MS = 5 * 60_000;

export interface MirrorDeps {
  readonly config: MirrorConfig;
  readonly upstream: UpstreamClient;
  readonly cache: BlobCache;
  readonly tags: TagStore;
  readonly log: Logger;
  readonly now?: () => number;
  readonly slots?: MirrorSlots;
  /** The process-wide budget for bodies held whole in memory (default: one of its own, for tests). */
  readonly bodies?: BodyBudget;
}

/** The reachability probe's answer; when upstream is not reachable, `cause` (an upstream error cause) and `detail` say why. */
export interface ProbeResult {
  readonly up: boolean;
  readonly cause?: string;
  readonly detail?: string;
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
  /** Blob downloads from this upstream at once; joins of a running download take none. */
  readonly #slots: FillSlots;
  /** passthrough: credentials upstream accepted per repository (hashed). */
  readonly access = new AccessMemory();
  /** passthrough: which credential each realm token the agent forwarded was issued to (hashed). */
  readonly tokenGrants = new TokenGrants();
  /** passthrough: token realms learned from this upstream's challenges. */
  readonly realms = new RealmRegistry();
  /** passthrough: digests upstream confirmed to belong to a repository. */
  readonly #linked = new LRUCache<string, true>({ max: 200_000 });
  /** The last challenge upstream sent, answered while it is unreachable. */
  #lastChallenge: string | undefined;
  /** Manifests and token answers are held whole in memory under this budget (shared by every mirror). */
  readonly bodies: BodyBudget;

  constructor(deps: MirrorDeps) {
    this.config = deps.config;
    this.upstream = deps.upstream;
    this.#cache = deps.cache;
    this.#tags = deps.tags;
    this.#log = deps.log;
    this.#now = deps.now ?? Date.now;
    this.#slots = new FillSlots(deps.config.registry, deps.slots ?? DEFAULT_SLOTS, deps.slots?.onEvent);
    this.bodies = deps.bodies ?? new BodyBudget();
  }

  get registry(): string {
    return this.config.registry;
  }

  get passthrough(): boolean {
    return this.upstream.authMode === 'passthrough';
  }

  /** Reachability probe: GET /v2/ through the route without credentials; 200 or 401 means upstream answers. */
  async probe(): Promise<ProbeResult> {
    try {
      const response = await this.upstream.request('GET', '/v2/', '', {}, undefined, { probe: true });
      await response.body.dump().catch(() => undefined);
      if (response.status === 200 || response.status === 401) return { up: true };
      return { up: false, cause: response.status >= 500 ? 'status_5xx' : 'status', detail: `GET /v2/ answered ${response.status}` };
    } catch (error) {
      if (error instanceof UpstreamError) {
        const { diagnosis } = error;
        return { up: false, cause: error.upstreamCause, detail: diagnosis ? `${diagnosis.cause}; fix: ${diagnosis.fix}` : error.message };
      }
      return { up: false, cause: 'unreachable', detail: error instanceof Error ? error.message : String(error) };
    }
  }

  /** `GET /v2/`: in passthrough, upstream decides whether the puller must authenticate. */
  async ping(ctx: PullContext): Promise<void> {
    if (!this.passthrough) return;
    let response: UpstreamResponse;
    try {
      response = await this.upstream.request('GET', '/v2/', '', {}, ctx.authorization);
    } catch (error) {
      if (error instanceof UpstreamError && error.unavailable) return;
      throw error;
    }
    await response.body.dump().catch(() => undefined);
    if (response.status === 401) {
      const challenge = firstHeader(response.headers['www-authenticate']);
      if (challenge) this.#lastChallenge = challenge;
      throw new AuthRequiredError(this.registry, challenge);
    }
  }

  /**
   * A manifest by tag or digest. HEAD and GET are answered alike: a HEAD also fetches and caches the
   * manifest, because containerd's next request is a GET by that digest.
   */
  async manifest(name: RepositoryName, reference: Reference, ctx: PullContext = {}): Promise<ManifestResult> {
    if (reference.kind === 'digest') return this.#manifestByDigest(name, reference.digest, undefined, 'miss', ctx);
    return this.#manifestByTag(name, reference.tag, ctx);
  }

  async blobSize(name: RepositoryName, digest: Digest, ctx: PullContext = {}): Promise<number> {
    const cached = await this.#cache.sizeOf(digest);
    if (cached !== undefined) {
      await this.#guard(name, `blobs/${digest}`, digest, ctx);
      return cached;
    }
    const response = await this.#request('HEAD', name, `blobs/${digest}`, ctx);
    if (response.status !== 200) throw await this.#failure(name, response, ctx, () => blobUnknown(digest));
    await response.body.dump().catch(() => undefined);
    this.#confirm(name, digest, ctx);
    const size = contentLength(response);
    if (size === undefined) throw new UpstreamError(this.registry, 'invalid', 'blob HEAD without Content-Length');
    return size;
  }

  /**
   * Opens a blob from cache, a running fill, or a new fill from upstream. A new fill waits for one
   * of the mirror's download slots (FillQueueFullError when too many wait) and holds it until its
   * body ended, resumes included; a request for a blob being fetched joins that fill instead.
   */
  async blob(name: RepositoryName, digest: Digest, ctx: PullContext = {}): Promise<BlobReadable> {
    const reader = await this.#cache.open(
      digest,
      async (unwanted) => {
        const slot = await this.#slots.acquire(unwanted);
        try {
          const response = await this.#request('GET', name, `blobs/${digest}`, ctx);
          if (response.status !== 200) throw await this.#failure(name, response, ctx, () => blobUnknown(digest));
          this.#confirm(name, digest, ctx);
          const size = contentLength(response);
          return { size, body: response.body, resume: (offset: number) => this.#resumeBlob(name, digest, offset, size, ctx), ended: slot.release, contended: () => this.#slots.waiting > 0 };
        } catch (error) {
          slot.release();
          throw error;
        }
      },
      ctx.signal,
    );
    if (reader.origin !== 'miss') {
      try {
        await this.#guard(name, `blobs/${digest}`, digest, ctx);
      } catch (error) {
        reader.close();
        throw error;
      }
    }
    return reader;
  }

  /** The rest of a blob from `offset` (Range request); only a 206 for exactly that offset is accepted. */
  async #resumeBlob(name: RepositoryName, digest: Digest, offset: number, size: number | undefined, ctx: PullContext): Promise<{ body: UpstreamResponse['body'] }> {
    const response = await this.#request('GET', name, `blobs/${digest}`, ctx, { range: `bytes=${offset}-` });
    const range = firstHeader(response.headers['content-range']);
    const match = range ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(range) : null;
    const total = match?.[3] === '*' ? undefined : Number(match?.[3]);
    if (response.status !== 206 || !match || Number(match[1]) !== offset || (size !== undefined && total !== undefined && total !== size)) {
      await response.body.dump().catch(() => undefined);
      throw new UpstreamError(this.registry, 'invalid', `upstream cannot resume ${digest} at byte ${offset} (status ${response.status})`);
    }
    this.#log.info({ digest, offset }, 'resuming a blob download that broke off');
    return { body: response.body };
  }

  async #manifestByTag(name: RepositoryName, tag: string, ctx: PullContext): Promise<ManifestResult> {
    const known = await this.#tags.get(this.registry, name, tag);
    const now = this.#now();
    if (known && now - known.checkedAt < this.config.tagTtlMs) {
      await this.#guard(name, `manifests/${known.digest}`, known.digest, ctx);
      return this.#manifestByDigest(name, known.digest, known.mediaType, 'hit', ctx);
    }
    try {
      return await this.#resolveTag(name, tag, ctx);
    } catch (error) {
      if (!(error instanceof UpstreamError) || !error.unavailable || !known) throw error;
      await this.#guard(name, `manifests/${known.digest}`, known.digest, ctx);
      const age = now - known.checkedAt;
      if (age > this.config.maxStaleMs) {
        this.#log.warn({ tag, ageMs: age, err: error.message }, 'upstream unavailable and the cached tag is older than max_stale');
        throw error;
      }
      const cached = await this.#cachedManifest(known.digest, known.mediaType, 'stale', ctx);
      if (!cached) throw error;
      this.#log.warn({ tag, digest: known.digest, ageMs: age, err: error.message }, 'upstream unavailable: serving the last known digest for this tag');
      return cached;
    }
  }

  /**
   * Asks upstream what the tag points at with a HEAD (same Accept as a GET, so it names the manifest
   * a GET would return), then serves that digest from the cache or fetches it by digest. Only a HEAD
   * without a usable Docker-Content-Digest or Content-Type (some registries) costs a GET by tag.
   */
  async #resolveTag(name: RepositoryName, tag: string, ctx: PullContext): Promise<ManifestResult> {
    const head = await this.#request('HEAD', name, `manifests/${tag}`, ctx, { accept: MANIFEST_ACCEPT });
    if (head.status !== 200) throw await this.#failure(name, head, ctx, () => manifestUnknown(tag));
    await head.body.dump().catch(() => undefined);
    const checkedAt = this.#now();
    const digest = firstHeader(head.headers['docker-content-digest']);
    const mediaType = firstHeader(head.headers['content-type']);
    if (!digest || !isDigest(digest) || !mediaType) return this.#fetchTag(name, tag, ctx);
    this.#confirm(name, digest, ctx);
    const { result, cached } = await this.#loadByDigest(name, digest, mediaType, 'miss', ctx);
    return releaseOnThrow(result.body, async () => {
      if (cached) await this.#rememberTag(name, tag, { digest, mediaType: result.mediaType, size: result.size, checkedAt });
      return result;
    });
  }

  /** GET by tag, for registries whose HEAD does not name the digest: verified and cached by the computed digest. */
  async #fetchTag(name: RepositoryName, tag: string, ctx: PullContext): Promise<ManifestResult> {
    const response = await this.#request('GET', name, `manifests/${tag}`, ctx, { accept: MANIFEST_ACCEPT });
    if (response.status !== 200) throw await this.#failure(name, response, ctx, () => manifestUnknown(tag));
    const body = await this.#readManifest(response, ctx);
    return releaseOnThrow(body, async () => {
      const checkedAt = this.#now();
      const digest = sha256(body.bytes);
      const announced = firstHeader(response.headers['docker-content-digest']);
      if (announced && announced.startsWith('sha256:') && announced !== digest) {
        throw new UpstreamError(this.registry, 'invalid', `manifest digest header ${announced} does not match its content ${digest}`);
      }
      const mediaType = firstHeader(response.headers['content-type']) ?? mediaTypeFromBody(body.bytes) ?? 'application/octet-stream';
      this.#confirm(name, digest, ctx);
      if (await this.#cache.putSmall(digest, body.bytes, mediaType)) {
        await this.#rememberTag(name, tag, { digest, mediaType, size: body.length, checkedAt });
      }
      return { digest, mediaType, size: body.length, body, origin: 'miss' };
    });
  }

  /**
   * Only called once the manifest is in the cache: a record pointing at a digest that is not cached
   * would leave nothing to serve when upstream is down later (the stale answer needs the bytes).
   */
  async #rememberTag(name: RepositoryName, tag: string, record: TagRecord): Promise<void> {
    await this.#tags.set(this.registry, name, tag, record).catch((error: unknown) => {
      this.#log.warn({ err: (error as Error).message }, 'could not persist tag record');
    });
  }

  async #manifestByDigest(
    name: RepositoryName,
    digest: Digest,
    mediaTypeHint: string | undefined,
    origin: ManifestOrigin,
    ctx: PullContext,
  ): Promise<ManifestResult> {
    return (await this.#loadByDigest(name, digest, mediaTypeHint, origin, ctx)).result;
  }

  /** The manifest from the cache or upstream, and whether it is in the cache now. */
  async #loadByDigest(
    name: RepositoryName,
    digest: Digest,
    mediaTypeHint: string | undefined,
    origin: ManifestOrigin,
    ctx: PullContext,
  ): Promise<{ result: ManifestResult; cached: boolean }> {
    const hit = await this.#cachedManifest(digest, mediaTypeHint, origin === 'miss' ? 'hit' : origin, ctx);
    if (hit) {
      return releaseOnThrow(hit.body, async () => {
        await this.#guard(name, `manifests/${digest}`, digest, ctx);
        return { result: hit, cached: true };
      });
    }
    const response = await this.#request('GET', name, `manifests/${digest}`, ctx, { accept: MANIFEST_ACCEPT });
    if (response.status !== 200) throw await this.#failure(name, response, ctx, () => manifestUnknown(digest));
    this.#confirm(name, digest, ctx);
    const body = await this.#readManifest(response, ctx);
    return releaseOnThrow(body, async () => {
      const actual = sha256(body.bytes);
      if (actual !== digest) {
        throw new UpstreamError(this.registry, 'invalid', `upstream manifest for ${digest} hashes to ${actual}`);
      }
      const mediaType = firstHeader(response.headers['content-type']) ?? mediaTypeHint ?? mediaTypeFromBody(body.bytes) ?? 'application/octet-stream';
      const cached = await this.#cache.putSmall(digest, body.bytes, mediaType);
      return { result: { digest, mediaType, size: body.length, body, origin: 'miss' }, cached };
    });
  }

  async #cachedManifest(digest: Digest, mediaTypeHint: string | undefined, origin: ManifestOrigin, ctx: PullContext): Promise<ManifestResult | undefined> {
    const cached = await this.#cache.getSmall(digest, this.bodies, ctx.signal);
    if (!cached) return undefined;
    const mediaType = cached.mediaType ?? mediaTypeHint ?? mediaTypeFromBody(cached.body.bytes);
    if (!mediaType) {
      cached.body.release();
      return undefined;
    }
    return { digest, mediaType, size: cached.body.length, body: cached.body, origin };
  }

  /** An upstream manifest, read whole under the body budget (room for its Content-Length, or the 4 MiB limit, first). */
  #readManifest(response: UpstreamResponse, ctx: PullContext): Promise<HeldBody> {
    return readBody(this.bodies, response.body, {
      announced: contentLength(response),
      limit: MANIFEST_MAX_BYTES,
      signal: ctx.signal,
      tooLarge: () => new UpstreamError(this.registry, 'invalid', `manifest exceeds the ${MANIFEST_MAX_BYTES}-byte limit`),
      // A body cut short or stalled is upstream failing, not an internal error.
      readError: (error) => fromTransportError(this.registry, error),
    });
  }

  #request(method: 'GET' | 'HEAD', name: RepositoryName, rest: string, ctx: PullContext, headers: Record<string, string> = {}): Promise<UpstreamResponse> {
    const repository = upstreamRepository(this.config.repositoryPrefix, name);
    return this.upstream.request(method, `/v2/${repository}/${rest}`, `repository:${repository}:pull`, headers, ctx.authorization);
  }

  /**
   * Maps a non-200 answer; in passthrough a 401 goes back to the puller as a challenge. A 401 or 403
   * for `name`, on whatever path it came (tag, manifest, blob, download, access check), withdraws
   * what the agent remembers of this credential's access to it: cached content must not outlive
   * upstream's refusal.
   */
  async #failure(name: RepositoryName, response: UpstreamResponse, ctx: PullContext, notFound: () => OciError): Promise<Error> {
    if (this.passthrough && (response.status === 401 || response.status === 403)) this.#revoke(name, ctx);
    if (response.status === 401 && this.passthrough) {
      await response.body.dump().catch(() => undefined);
      const challenge = firstHeader(response.headers['www-authenticate']);
      if (challenge) this.#lastChallenge = challenge;
      return ctx.authorization
        ? new AuthRequiredError(this.registry, challenge, 'upstream refused the presented credential')
        : new AuthRequiredError(this.registry, challenge);
    }
    return upstreamFailure(this.registry, response, notFound);
  }

  /** Upstream just served `digest` under `name` to this credential: remember access and linkage. */
  #confirm(name: RepositoryName, digest: Digest, ctx: PullContext): void {
    if (!this.passthrough) return;
    const now = this.#now();
    this.access.remember(hashCredential(ctx.authorization), name, now);
    // Upstream accepted a token the agent forwarded from a realm: only now does the credential the
    // puller showed the realm count for this repository (the realm's 200 may have been an empty grant).
    const issuedTo = this.tokenGrants.issuedTo(ctx.authorization, name, now);
    if (issuedTo) this.access.remember(issuedTo, realmKey(name), now);
    this.#linked.set(`${name}@${digest}`, true);
  }

  /** Upstream refused this credential for `name`: forget it, and the realm credential its token was issued to. */
  #revoke(name: RepositoryName, ctx: PullContext): void {
    this.access.forget(hashCredential(ctx.authorization), name);
    const issuedTo = this.tokenGrants.issuedTo(ctx.authorization, name, this.#now());
    if (issuedTo) this.access.forget(issuedTo, realmKey(name));
  }

  /**
   * passthrough: content about to be served from the cache goes only to a puller whose
   * credential upstream accepted for this repository (and only for digests upstream showed in
   * it). Asks upstream with a HEAD when the memory is older than ACCESS_RECHECK_MS (or max_stale,
   * when that is shorter); while upstream is unavailable, only a credential upstream itself accepted for this very repository
   * within max_stale is served (an offline token counts from that acceptance); everyone else gets
   * 401 with the remembered challenge.
   */
  async #guard(name: RepositoryName, rest: string, digest: Digest, ctx: PullContext): Promise<void> {
    if (!this.passthrough) return;
    const now = this.#now();
    const linked = this.#linked.has(`${name}@${digest}`);
    const credential = hashCredential(ctx.authorization);
    const acceptedWithin = (maxAgeMs: number): boolean =>
      linked && (this.access.acceptedWithin(credential, name, maxAgeMs, now) || this.access.acceptedWithin(ANONYMOUS, name, maxAgeMs, now));
    // Not asking upstream is serving without it: never on an acceptance older than max_stale.
    if (acceptedWithin(Math.min(ACCESS_RECHECK_MS, this.config.maxStaleMs))) return;
    let response: UpstreamResponse;
    try {
      response = await this.#request('HEAD', name, rest, ctx, rest.startsWith('manifests/') ? { accept: MANIFEST_ACCEPT } : {});
    } catch (error) {
      if (!(error instanceof UpstreamError) || !error.unavailable) throw error;
      if (acceptedWithin(this.config.maxStaleMs)) return;
      const challenge = this.#lastChallenge && challengeForRepository(this.#lastChallenge, upstreamRepository(this.config.repositoryPrefix, name));
      throw new AuthRequiredError(
        this.registry,
        challenge,
        ctx.authorization ? 'upstream is unavailable and upstream did not accept this credential for this repository within max_stale' : 'upstream unavailable: present a credential',
      );
    }
    if (response.status === 200) {
      await response.body.dump().catch(() => undefined);
      this.#confirm(name, digest, ctx);
      return;
    }
    throw await this.#failure(name, response, ctx, () => (rest.startsWith('blobs/') ? blobUnknown(digest) : manifestUnknown(digest)));
  }
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
