import type { Logger } from 'pino';
import { AccessBroker, type TokenAnswer, type TokenRequest } from '../auth/broker.ts';
import type { BlobCache } from '../cache/blob-cache.ts';
import type { BlobReadable } from '../cache/blob-reader.ts';
import type { MirrorConfig } from '../config/types.ts';
import { type Digest, isDigest, sha256Of } from '../oci/digest.ts';
import { MANIFEST_ACCEPT, MANIFEST_MAX_BYTES, mediaTypeFromBody } from '../oci/media-types.ts';
import type { Reference, RepositoryName } from '../oci/reference.ts';
import { ContentUnknownError } from '../oci/errors.ts';
import { BodyBudget } from '../memory/body-budget.ts';
import { type HeldBody, readBody, releaseOnThrow } from '../memory/held-body.ts';
import { type UpstreamClient, type UpstreamResponse, firstHeader } from '../upstream/client.ts';
import { UpstreamError, fromTransportError } from '../upstream/errors.ts';
import type { Priority } from '../admission/priority.ts';
import type { FillSlotEvent, FillSlotLimits } from './fill-slots.ts';
import { FetchBudget } from './fetch-budget.ts';
import { type BudgetEvents, type TunnelGate, mirrorGate } from './tunnel-gate.ts';
import type { TagRecord, TagStore } from './tag-store.ts';
import { UpstreamBlob } from './upstream-blob.ts';
import { OfflineCatalog } from './offline.ts';
import type { PeerNetwork } from '../peers/network.ts';
import { PeerBlob } from '../peers/peer-blob.ts';
import type { FillRequester } from '../cache/fill-start.ts';
import { contentLength, discard } from '../upstream/status.ts';

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
  /**
   * The request came from another agent on the peer listener (mutual TLS): that agent made the
   * access decision for its requester already, so none is made here, and the blob comes from this
   * agent's cache, a running fill, or upstream, never from another peer (no loops).
   */
  readonly fromPeer?: boolean;
  /**
   * `live` (default): someone waits for it (containerd, a kubelet). `background`: preload; it runs
   * below live requests in the tunnel budget and never takes a mirror's last fetch slot.
   */
  readonly priority?: Priority;
}

/** Download slots of a mirror (`max_fills_per_mirror`, `max_queued_fills_per_mirror`) and who hears about their use. */
export interface MirrorSlots extends FillSlotLimits {
  readonly onEvent?: (event: FillSlotEvent) => void;
}

/** The configuration defaults, for mirrors built without limits (tests). */
const DEFAULT_SLOTS: FillSlotLimits = { running: 8, queued: 64 };

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
  /** The agent's URL as pullers reach it (Bearer realms are rewritten to its token endpoint). */
  readonly agentBase?: () => string;
  /** The other agents (peer sharing on): a blob this agent does not own comes from its owner. */
  readonly peers?: () => PeerNetwork | undefined;
  /** Blob bytes downloaded from upstream (the tunnel), for metrics. */
  readonly upstreamBlobBytes?: (bytes: number) => void;
  /** The Connectivity Proxy's budget (slots, byte rate), one for every mirror on that route. */
  readonly tunnel?: TunnelGate | undefined;
  /** Waits for this mirror's budget and the tunnel's, for metrics. */
  readonly budgetEvents?: BudgetEvents;
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
  /**
   * Blob downloads from this upstream at once and their bytes per second (`max_fetches`,
   * `max_bytes_per_second`), then the tunnel's on the Connectivity Proxy route; joins of a running
   * download take no slot.
   */
  readonly #fetches: FetchBudget;
  /** Who may read what through this mirror: every access decision is its. */
  readonly #access: AccessBroker;
  /** Manifests and token answers are held whole in memory under this budget (shared by every mirror). */
  readonly bodies: BodyBudget;
  readonly #peers: () => PeerNetwork | undefined;
  readonly #upstreamBlobBytes: ((bytes: number) => void) | undefined;
  /** `mode = "offline"`: what this mirror may serve from the cache; upstream is never contacted. */
  readonly #offline: OfflineCatalog | undefined;

  constructor(deps: MirrorDeps) {
    this.config = deps.config;
    this.upstream = deps.upstream;
    this.#cache = deps.cache;
    this.#tags = deps.tags;
    this.#log = deps.log;
    this.#now = deps.now ?? Date.now;
    const own = mirrorGate(deps.config.registry, deps.config.budget, deps.slots ?? DEFAULT_SLOTS, deps.slots?.onEvent, deps.budgetEvents);
    this.#fetches = new FetchBudget(deps.tunnel ? [own, deps.tunnel] : [own]);
    this.bodies = deps.bodies ?? new BodyBudget();
    this.#peers = deps.peers ?? (() => undefined);
    this.#upstreamBlobBytes = deps.upstreamBlobBytes;
    this.#access = new AccessBroker({
      registry: deps.config.registry,
      upstream: deps.upstream,
      repositoryPrefix: deps.config.repositoryPrefix,
      maxStaleMs: deps.config.maxStaleMs,
      agentBase: deps.agentBase ?? (() => 'http://127.0.0.1'),
      bodies: this.bodies,
      now: this.#now,
    });
    this.#offline = deps.config.mode === 'offline' ? new OfflineCatalog(deps.config.registry, deps.tags, (digest) => this.#manifestBytes(digest)) : undefined;
  }

  get registry(): string {
    return this.config.registry;
  }

  get offline(): boolean {
    return this.#offline !== undefined;
  }

  /**
   * Offline mirror: reads its tag records again (start-up, and after an import on SIGHUP); the
   * number of manifests and blobs it may serve. Online mirrors: 0, nothing to do.
   */
  async refreshOffline(): Promise<number> {
    return (await this.#offline?.refresh()) ?? 0;
  }

  /** The agent's token endpoint for this mirror (passthrough): see AccessBroker.token. */
  token(request: TokenRequest, signal?: AbortSignal): Promise<TokenAnswer> {
    return this.#access.token(request, signal);
  }

  /** Reachability probe: GET /v2/ through the route without credentials; 200 or 401 means upstream answers. */
  async probe(): Promise<ProbeResult> {
    // Offline: serving depends on the cache alone, so it is never "unreachable".
    if (this.#offline) return { up: true };
    try {
      const response = await this.upstream.request('GET', '/v2/', '', {}, undefined, { probe: true });
      await discard(response);
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
    if (!this.#access.passthrough || this.#offline) return;
    let response: UpstreamResponse;
    try {
      response = await this.upstream.request('GET', '/v2/', '', {}, ctx.authorization);
    } catch (error) {
      if (error instanceof UpstreamError && error.unavailable) return;
      throw error;
    }
    if (response.status === 401) throw await this.#access.failure(undefined, response, ctx, () => new ContentUnknownError('manifest', ''));
    await discard(response);
  }

  /**
   * A manifest by tag or digest. HEAD and GET are answered alike: a HEAD also fetches and caches the
   * manifest, because containerd's next request is a GET by that digest.
   */
  async manifest(name: RepositoryName, reference: Reference, ctx: PullContext = {}): Promise<ManifestResult> {
    if (this.#offline) return this.#offlineManifest(this.#offline, name, reference, ctx);
    const result = await this.#answering(name, ctx, () =>
      reference.kind === 'digest' ? this.#manifestByDigest(name, reference.digest, undefined, 'miss', ctx) : this.#manifestByTag(name, reference.tag, ctx),
    );
    this.#access.derive(name, result.digest, result.body.bytes);
    return result;
  }

  /**
   * Runs one content request; an upstream failure it ends with becomes the answer the access broker
   * gives for it (a requester that is not entitled gets the same answer as for cached content).
   */
  async #answering<T>(name: RepositoryName, ctx: PullContext, run: () => Promise<T>): Promise<T> {
    try {
      return await run();
    } catch (error) {
      throw this.#access.unavailable(name, ctx, error as Error);
    }
  }

  async blobSize(name: RepositoryName, digest: Digest, ctx: PullContext = {}): Promise<number> {
    if (this.#offline) {
      const size = this.#offline.has('blobs', name, digest) || ctx.fromPeer === true ? await this.#cache.sizeOf(digest) : undefined;
      if (size === undefined) throw new ContentUnknownError('blob', digest);
      return size;
    }
    return this.#answering(name, ctx, async () => {
      const checked = await this.#checkIfCached(name, digest, ctx);
      const cached = await this.#cache.sizeOf(digest);
      if (cached !== undefined) {
        if (!checked) await this.#access.check(name, 'blobs', digest, ctx);
        return cached;
      }
      const response = await this.#access.request('HEAD', name, `blobs/${digest}`, ctx);
      if (response.status !== 200) throw await this.#access.failure(name, response, ctx, () => new ContentUnknownError('blob', digest));
      await discard(response);
      this.#access.confirm(name, 'blobs', digest, ctx);
      const size = contentLength(response);
      if (size === undefined) throw new UpstreamError(this.registry, 'invalid', 'blob HEAD without Content-Length');
      return size;
    });
  }

  /**
   * Opens a blob from cache, a running fill, or a new fill from upstream. A new fill waits for one
   * of the mirror's download slots (FillQueueFullError when too many wait) and holds it until its
   * body ended, resumes included; a request for a blob being fetched joins that fill instead. When
   * the request that started a fill is refused (401, 403, 404 for its credential or repository),
   * the fill goes on with the next joined request's own credential (see FillStart).
   */
  async blob(name: RepositoryName, digest: Digest, ctx: PullContext = {}): Promise<BlobReadable> {
    if (this.#offline) {
      // Another agent asking made its own access decision; a local puller gets only this mirror's images.
      if ((ctx.fromPeer !== true && !this.#offline.has('blobs', name, digest)) || !this.#cache.isCached(digest)) throw new ContentUnknownError('blob', digest);
      return this.#cache.open(digest, () => Promise.reject(new ContentUnknownError('blob', digest)), ctx.signal);
    }
    if (ctx.fromPeer === true) return this.#cache.open(digest, this.#upstreamBlob(name, digest, ctx), ctx.signal);
    return this.#answering(name, ctx, async () => {
      const checked = await this.#checkIfCached(name, digest, ctx);
      const reader = await this.#cache.open(digest, this.#source(name, digest, ctx), ctx.signal);
      // A running download joined, or a blob cached since: checked before a byte is read.
      if (reader.origin === 'joined' || (reader.origin === 'hit' && !checked)) {
        try {
          await this.#access.check(name, 'blobs', digest, ctx);
        } catch (error) {
          reader.close();
          throw error;
        }
      }
      return reader;
    });
  }

  #upstreamBlob(name: RepositoryName, digest: Digest, ctx: PullContext): UpstreamBlob {
    return new UpstreamBlob(this.#access, this.#fetches, name, digest, ctx, this.#log, { received: this.#upstreamBlobBytes, priority: ctx.priority });
  }

  /** Where a blob not cached here comes from: upstream, or (peers on) the agent that owns it. */
  #source(name: RepositoryName, digest: Digest, ctx: PullContext): FillRequester {
    const upstream = this.#upstreamBlob(name, digest, ctx);
    const peers = this.#peers();
    if (!peers) return upstream;
    const authorization = this.#access.passthrough ? ctx.authorization : undefined;
    const check = (): Promise<void> => this.#access.check(name, 'blobs', digest, ctx);
    return new PeerBlob(peers, upstream, check, { registry: this.registry, name, digest, authorization }, this.#log);
  }

  /**
   * The access decision for a cached blob, made before anything of the cache is opened or read: a
   * requester that is not entitled learns nothing from it. True when it was made (the blob is cached).
   */
  async #checkIfCached(name: RepositoryName, digest: Digest, ctx: PullContext): Promise<boolean> {
    if (!this.#cache.isCached(digest)) return false;
    await this.#access.check(name, 'blobs', digest, ctx);
    return true;
  }

  /**
   * Offline: a tag answers from its record, whatever its age (there is no upstream to ask); a digest
   * only when this mirror's records name it. Anything else is unknown here: 404.
   */
  async #offlineManifest(offline: OfflineCatalog, name: RepositoryName, reference: Reference, ctx: PullContext): Promise<ManifestResult> {
    let digest: Digest;
    let mediaType: string | undefined;
    if (reference.kind === 'tag') {
      const known = await this.#tags.get(this.registry, name, reference.tag);
      if (!known) throw new ContentUnknownError('manifest', reference.tag);
      await offline.vouch(name, known.digest);
      digest = known.digest;
      mediaType = known.mediaType;
    } else {
      digest = reference.digest;
      if (!offline.has('manifests', name, digest)) throw new ContentUnknownError('manifest', digest);
    }
    const cached = await this.#cachedManifest(digest, mediaType, 'hit', ctx);
    if (!cached) throw new ContentUnknownError('manifest', reference.kind === 'tag' ? reference.tag : digest);
    return cached;
  }

  /** A cached manifest's bytes (at most the manifest limit, verified), for the offline catalog. */
  async #manifestBytes(digest: Digest): Promise<Buffer | undefined> {
    const small = await this.#cache.getSmall(digest, this.bodies, undefined, MANIFEST_MAX_BYTES);
    if (!small) return undefined;
    const bytes = small.body.bytes;
    small.body.release();
    return bytes;
  }

  async #manifestByTag(name: RepositoryName, tag: string, ctx: PullContext): Promise<ManifestResult> {
    const known = await this.#tags.get(this.registry, name, tag);
    const now = this.#now();
    // This mirror's upstream named the digest for this tag in this repository when it was recorded.
    if (known) this.#access.vouch(name, 'manifests', known.digest, known.checkedAt);
    if (known && now - known.checkedAt < this.config.tagTtlMs) {
      await this.#access.check(name, 'manifests', known.digest, ctx);
      return this.#manifestByDigest(name, known.digest, known.mediaType, 'hit', ctx);
    }
    try {
      return await this.#resolveTag(name, tag, ctx);
    } catch (error) {
      if (!(error instanceof UpstreamError) || !error.unavailable || !known) throw error;
      const age = now - known.checkedAt;
      if (age > this.config.maxStaleMs) {
        this.#log.warn({ tag, ageMs: age, err: error.message }, 'upstream unavailable and the cached tag is older than max_stale');
        throw error;
      }
      // Upstream just failed to answer: it is not asked again for the access check.
      this.#access.checkOffline(name, 'manifests', known.digest, ctx, error);
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
    const head = await this.#access.request('HEAD', name, `manifests/${tag}`, ctx, { accept: MANIFEST_ACCEPT });
    if (head.status !== 200) throw await this.#access.failure(name, head, ctx, () => new ContentUnknownError('manifest', tag));
    await discard(head);
    this.#access.accept(name, ctx);
    const checkedAt = this.#now();
    const digest = firstHeader(head.headers['docker-content-digest']);
    const mediaType = firstHeader(head.headers['content-type']);
    if (!digest || !isDigest(digest) || !mediaType) return this.#fetchTag(name, tag, ctx);
    this.#access.confirm(name, 'manifests', digest, ctx);
    const { result, cached } = await this.#loadByDigest(name, digest, mediaType, 'miss', ctx);
    return releaseOnThrow(result.body, async () => {
      if (cached) await this.#rememberTag(name, tag, { digest, mediaType: result.mediaType, size: result.size, checkedAt });
      return result;
    });
  }

  /** GET by tag, for registries whose HEAD does not name the digest: verified and cached by the computed digest. */
  async #fetchTag(name: RepositoryName, tag: string, ctx: PullContext): Promise<ManifestResult> {
    const response = await this.#access.request('GET', name, `manifests/${tag}`, ctx, { accept: MANIFEST_ACCEPT });
    if (response.status !== 200) throw await this.#access.failure(name, response, ctx, () => new ContentUnknownError('manifest', tag));
    const body = await this.#readManifest(response, ctx);
    return releaseOnThrow(body, async () => {
      const checkedAt = this.#now();
      const digest = sha256Of(body.bytes);
      const announced = firstHeader(response.headers['docker-content-digest']);
      if (announced && announced.startsWith('sha256:') && announced !== digest) {
        throw new UpstreamError(this.registry, 'invalid', `manifest digest header ${announced} does not match its content ${digest}`);
      }
      const mediaType = firstHeader(response.headers['content-type']) ?? mediaTypeFromBody(body.bytes) ?? 'application/octet-stream';
      this.#access.confirm(name, 'manifests', digest, ctx);
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

  /**
   * The manifest from the cache or upstream, and whether it is in the cache now. Access is decided
   * before the cache is read, and the cache is never read beyond the manifest size limit: content
   * larger than that (a layer asked for as a manifest) counts as not cached, and upstream answers.
   */
  async #loadByDigest(
    name: RepositoryName,
    digest: Digest,
    mediaTypeHint: string | undefined,
    origin: ManifestOrigin,
    ctx: PullContext,
  ): Promise<{ result: ManifestResult; cached: boolean }> {
    if (this.#cache.isCached(digest)) {
      await this.#access.check(name, 'manifests', digest, ctx);
      const hit = await this.#cachedManifest(digest, mediaTypeHint, origin === 'miss' ? 'hit' : origin, ctx);
      if (hit) return { result: hit, cached: true };
    }
    const response = await this.#access.request('GET', name, `manifests/${digest}`, ctx, { accept: MANIFEST_ACCEPT });
    if (response.status !== 200) throw await this.#access.failure(name, response, ctx, () => new ContentUnknownError('manifest', digest));
    this.#access.confirm(name, 'manifests', digest, ctx);
    const body = await this.#readManifest(response, ctx);
    return releaseOnThrow(body, async () => {
      const actual = sha256Of(body.bytes);
      if (actual !== digest) {
        throw new UpstreamError(this.registry, 'invalid', `upstream manifest for ${digest} hashes to ${actual}`);
      }
      const mediaType = firstHeader(response.headers['content-type']) ?? mediaTypeHint ?? mediaTypeFromBody(body.bytes) ?? 'application/octet-stream';
      const cached = await this.#cache.putSmall(digest, body.bytes, mediaType);
      return { result: { digest, mediaType, size: body.length, body, origin: 'miss' }, cached };
    });
  }

  async #cachedManifest(digest: Digest, mediaTypeHint: string | undefined, origin: ManifestOrigin, ctx: PullContext): Promise<ManifestResult | undefined> {
    const cached = await this.#cache.getSmall(digest, this.bodies, ctx.signal, MANIFEST_MAX_BYTES);
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
}

