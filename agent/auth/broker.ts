import { randomBytes } from 'node:crypto';
import type { BodyBudget } from '../memory/body-budget.ts';
import { HeldBody, readBody } from '../memory/held-body.ts';
import type { Digest } from '../oci/digest.ts';
import { ContentUnknownError } from '../oci/errors.ts';
import { MANIFEST_ACCEPT } from '../oci/media-types.ts';
import { type RepositoryName, upstreamRepository } from '../oci/reference.ts';
import { manifestReferences } from '../oci/references.ts';
import { type UpstreamClient, type UpstreamResponse, firstHeader } from '../upstream/client.ts';
import { UpstreamError, UpstreamRefusedError, fromTransportError } from '../upstream/errors.ts';
import { contentLength, discard, upstreamFailure } from '../upstream/status.ts';
import { ANONYMOUS, ANONYMOUS_AT_REALM, AccessMemory, type CredentialHash, hashCredential } from './access-memory.ts';
import { boundedLru } from './bounded-lru.ts';
import { FairLru } from './fair-lru.ts';
import { addPrefix, challengeForRepository, mapScopes, rewriteChallenge } from './challenge-rewrite.ts';
import { AuthRequiredError, TokenRealmUnknownError, TokenTooLargeError } from './errors.ts';
import { RealmRegistry } from './realms.ts';
import { TokenGrants, realmKey } from './token-grants.ts';

/** Who is asking: the credential the puller presented (passthrough mode). */
export interface Requester {
  readonly authorization?: string | undefined;
}

/** What a pull reads: a blob or a manifest (by digest; a tag resolves to a manifest digest). */
export type ContentKind = 'blobs' | 'manifests';

/** How long an upstream "yes" for a credential + repository + content is trusted before asking again. */
export const ACCESS_RECHECK_MS = 5 * 60_000;

/** How long a token minted while upstream is unreachable is good for. */
const OFFLINE_TOKEN_TTL_S = 300;
/** Real token answers are a few KiB (a JWT and some fields); this is held in memory until the puller took it. */
const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024;
/**
 * Content confirmed per repository, remembered (a lost entry means asking again): 50,000 is some
 * 5,000 images. Grouped by repository (FairLru): content shown in the repositories one can read
 * displaces theirs first. The memory grows with what is held.
 */
const MAX_LINKS = 50_000;

/** `Authorization` exactly as pullers send a token and every registry parses it. */
const CANONICAL_BEARER = /^Bearer [^\s]+$/;

/** The principal of every request of an agent-auth mirror: the agent's own credential, whoever asks. */
const AGENT = hashCredential('\0agent');

export interface AccessBrokerOptions {
  readonly registry: string;
  readonly upstream: UpstreamClient;
  readonly repositoryPrefix: string;
  readonly maxStaleMs: number;
  /** The agent's URL as pullers reach it: Bearer realms handed to pullers point at its token endpoint. */
  readonly agentBase: () => string;
  /** Token answers are held whole under this budget. */
  readonly bodies: BodyBudget;
  readonly now?: () => number;
}

/** A puller's token request to the agent's token endpoint, as the HTTP layer parsed it. */
export interface TokenRequest {
  readonly realmId: string;
  readonly method: 'GET' | 'POST';
  /** The query string (without `?`). */
  readonly query: string;
  readonly authorization?: string | undefined;
  readonly accept?: string | undefined;
  /** POST: the OAuth2 form. */
  readonly form?: Buffer | undefined;
}

/** The token endpoint's answer; the receiver owns `body` and releases it once sent. */
export interface TokenAnswer {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: HeldBody;
}

/**
 * The one place that decides who may read what through one mirror. Content is cached once per
 * digest for every mirror, but entitlement is per (mirror, repository, content): served from the
 * cache only after this mirror's upstream vouched for that content in that repository: for the
 * requester's own credential (passthrough), or for the agent's (agent auth). Remembered for
 * ACCESS_RECHECK_MS (or `max_stale`, when shorter), then asked again with a HEAD; while upstream is
 * unreachable, remembered for `max_stale`. A requester that is not entitled gets the same answer
 * for cached and uncached content. Owns the access memory, the token grants and realms learned
 * from upstream challenges, the offline tokens, and the clock.
 */
export class AccessBroker {
  readonly registry: string;
  readonly #upstream: UpstreamClient;
  readonly #prefix: string;
  readonly #maxStaleMs: number;
  readonly #agentBase: () => string;
  readonly #bodies: BodyBudget;
  readonly #now: () => number;
  /**
   * Which credential upstream accepted for which repository (passthrough): credentials (Basic, a
   * realm credential, no credential) and Bearer tokens, each in its own memory.
   * Tokens are cheap to mint: a flood of them displaces other tokens only, never a credential; a
   * token the agent handed out counts as its credential while the token lives (see accept).
   */
  readonly #accepted = new AccessMemory();
  readonly #acceptedTokens = new AccessMemory();
  /** Content upstream showed in a repository: kind, repository, digest → when. */
  readonly #links = new FairLru<number>(MAX_LINKS);
  /**
   * Content named by a manifest upstream showed in a repository, dated like that manifest: counted
   * only while upstream cannot be asked (after a restart, the persisted tag answers and the manifests
   * they name are all that vouch for an image).
   */
  readonly #derived = new FairLru<number>(MAX_LINKS);
  /** When upstream last refused a principal for a repository (401/403): older confirmations no longer count. */
  readonly #refused = boundedLru<string, number>(10_000);
  /** Access checks asking upstream, shared by concurrent requests of one principal for one content. */
  readonly #checking = new Map<string, Promise<void>>();
  /** passthrough: which credential each token the agent handed out (forwarded from a realm, or minted offline) was issued to. */
  readonly #grants = new TokenGrants();
  /** passthrough: token realms learned from this upstream's challenges. */
  readonly #realms = new RealmRegistry();
  /** The last challenge upstream sent, answered while it is unreachable. */
  #lastChallenge: string | undefined;

  constructor(options: AccessBrokerOptions) {
    this.registry = options.registry;
    this.#upstream = options.upstream;
    this.#prefix = options.repositoryPrefix;
    this.#maxStaleMs = options.maxStaleMs;
    this.#agentBase = options.agentBase;
    this.#bodies = options.bodies;
    this.#now = options.now ?? Date.now;
  }

  get passthrough(): boolean {
    return this.#upstream.authMode === 'passthrough';
  }

  /**
   * The key of a requester for `name` in a download's start (see FillStart): requests with the same
   * key get the same answer from upstream. Never the credential itself.
   */
  requesterKey(name: RepositoryName, requester: Requester): string {
    return principalKey(this.#principal(requester), name);
  }

  /** Upstream accepted this requester for `name` within ACCESS_RECHECK_MS (agent auth: always). */
  knownToRead(name: RepositoryName, requester: Requester): boolean {
    return !this.passthrough || this.#acceptedWithin(name, requester, Math.min(ACCESS_RECHECK_MS, this.#maxStaleMs));
  }

  /** A 401, 403 or 404 for this requester: upstream's answer to it, not to everyone. */
  ownsFailure(error: unknown): boolean {
    if (error instanceof AuthRequiredError || error instanceof ContentUnknownError) return true;
    return error instanceof UpstreamRefusedError && error.refusal !== 'rate_limited';
  }

  /** Upstream just served `digest` as `kind` under `name` to this requester: remember access and linkage. */
  confirm(name: RepositoryName, kind: ContentKind, digest: Digest, requester: Requester): void {
    this.#links.set(name, contentKey(kind, digest), this.#now());
    this.accept(name, requester);
  }

  /** Upstream answered this requester with content from `name` (e.g. a tag that names no digest yet). */
  accept(name: RepositoryName, requester: Requester): void {
    if (!this.passthrough) return;
    const now = this.#now();
    // Upstream accepted a token the agent forwarded from a realm: only now does the credential the
    // puller showed the realm count for this repository (the realm's 200 may have been an empty grant).
    // Remembered with the credentials (one entry per credential and repository, however many
    // tokens it mints); the token itself only with other tokens, which a flood of them displaces.
    this.#memoryOf(requester).remember(this.#principal(requester), name, now);
    const grant = this.#grants.confirm(requester.authorization, name, now);
    if (grant && !grant.minted) this.#accepted.remember(grant.credential, realmKey(name), now);
  }

  /**
   * A persisted answer of this mirror's upstream (a tag record) says `digest` was in `name` at `at`:
   * the manifest counts as shown there then (a requester's own acceptance is still needed in
   * passthrough). Never moves a newer confirmation back.
   */
  vouch(name: RepositoryName, kind: ContentKind, digest: Digest, at: number): void {
    setIfNewer(this.#links, name, contentKey(kind, digest), at);
  }

  /**
   * A manifest served from `name` (agent auth): what it names is in `name` as of the manifest's own
   * confirmation (registries only accept a manifest whose blobs are in its repository). Used only
   * while upstream cannot be asked; online, each piece is confirmed by upstream itself.
   */
  derive(name: RepositoryName, manifest: Digest, body: Buffer): void {
    // passthrough: each requester's own acceptance is in memory only, so this could serve nobody after a restart.
    if (this.passthrough) return;
    const at = this.#linkedAt(name, 'manifests', manifest, true);
    if (at === undefined) return;
    for (const reference of manifestReferences(body)) setIfNewer(this.#derived, name, contentKey(reference.kind, reference.digest), at);
  }

  /**
   * Content about to be served from the cache (or a running download) goes only to a requester
   * entitled to it. Asks upstream with a HEAD when the memory is older than ACCESS_RECHECK_MS (or
   * max_stale, when shorter); concurrent checks of one requester for one content share the HEAD.
   * While upstream is unavailable, see `checkOffline`.
   */
  async check(name: RepositoryName, kind: ContentKind, digest: Digest, requester: Requester): Promise<void> {
    if (this.#entitledWithin(name, kind, digest, requester, Math.min(ACCESS_RECHECK_MS, this.#maxStaleMs), false)) return;
    const key = principalKey(this.#principal(requester), linkKey(kind, name, digest));
    let running = this.#checking.get(key);
    if (!running) {
      running = this.#askUpstream(name, kind, digest, requester).finally(() => this.#checking.delete(key));
      this.#checking.set(key, running);
    }
    return running;
  }

  /**
   * Upstream just failed to answer (`error`): served only what upstream confirmed for this
   * requester within max_stale; everyone else gets what uncached content would get (`unavailable`).
   */
  checkOffline(name: RepositoryName, kind: ContentKind, digest: Digest, requester: Requester, error: Error): void {
    if (this.#entitledWithin(name, kind, digest, requester, this.#maxStaleMs, true)) return;
    throw this.unavailable(name, requester, error);
  }

  async #askUpstream(name: RepositoryName, kind: ContentKind, digest: Digest, requester: Requester): Promise<void> {
    let failure: Error;
    try {
      const response = await this.request('HEAD', name, `${kind}/${digest}`, requester, kind === 'manifests' ? { accept: MANIFEST_ACCEPT } : {});
      if (response.status === 200) {
        await discard(response);
        this.confirm(name, kind, digest, requester);
        return;
      }
      if (response.status === 404) {
        this.#links.delete(name, contentKey(kind, digest));
        this.#derived.delete(name, contentKey(kind, digest));
      }
      failure = await this.failure(name, response, requester, () => notFound(kind, digest));
    } catch (error) {
      failure = error as Error;
    }
    if (failure instanceof UpstreamError && failure.unavailable) this.checkOffline(name, kind, digest, requester, failure);
    else throw failure;
  }

  /**
   * Upstream is unreachable and the content cannot be served: the error to answer with. A
   * passthrough requester upstream did not accept for this repository within max_stale gets 401
   * with the remembered challenge, whether the content is cached or not (no existence oracle);
   * everyone else gets the unavailability itself (503: not cached), as does an anonymous requester
   * when upstream never sent a challenge since the agent started.
   */
  unavailable(name: RepositoryName, requester: Requester, error: Error): Error {
    if (!(error instanceof UpstreamError) || !error.unavailable || !this.passthrough) return error;
    if (this.#acceptedWithin(name, requester, this.#maxStaleMs)) return error;
    // An upstream that never asked for credentials (since the start) gives an anonymous requester
    // nothing to answer: it gets the unavailability, for cached and uncached content alike.
    if (this.#lastChallenge === undefined && !requester.authorization) return error;
    const challenge = this.#lastChallenge && challengeForRepository(this.#lastChallenge, upstreamRepository(this.#prefix, name));
    return this.#authRequired(
      challenge,
      requester.authorization
        ? 'upstream is unavailable and upstream did not accept this credential for this repository within max_stale'
        : 'upstream unavailable: present a credential',
    );
  }

  /**
   * Maps a non-200 answer; in passthrough a 401 goes back to the puller as a challenge. A 401 or 403
   * for `name`, on whatever path it came, withdraws what is remembered of this requester's access
   * to it: cached content must not outlive upstream's refusal.
   */
  async failure(name: RepositoryName | undefined, response: UpstreamResponse, requester: Requester, notFoundError: () => Error): Promise<Error> {
    if (name !== undefined && (response.status === 401 || response.status === 403)) this.#revoke(name, requester);
    if (response.status === 401 && this.passthrough) {
      await discard(response);
      const challenge = firstHeader(response.headers['www-authenticate']);
      if (challenge) this.#lastChallenge = challenge;
      return this.#authRequired(challenge, requester.authorization ? 'upstream refused the presented credential' : 'authentication required');
    }
    return upstreamFailure(this.registry, response, notFoundError);
  }

  /** A registry API request for `name` with this requester's credential (passthrough) or the agent's. */
  request(method: 'GET' | 'HEAD', name: RepositoryName, rest: string, requester: Requester, headers: Record<string, string> = {}): Promise<UpstreamResponse> {
    const repository = upstreamRepository(this.#prefix, name);
    return this.#upstream.request(method, `/v2/${repository}/${rest}`, `repository:${repository}:pull`, headers, requester.authorization);
  }

  /**
   * The agent's token endpoint (passthrough): forwards a puller's token request, GET with query or
   * POST with an OAuth2 form, to a realm learned from this upstream's own challenges. Status, content
   * type and body come back unchanged so the puller's POST-then-GET fallback keeps working. Scopes
   * gain the mirror's repository_prefix. While the realm is unreachable, a credential upstream
   * accepted for every requested repository within max_stale gets a token of the agent's own,
   * whichever way it is presented (form or Basic header).
   */
  async token(request: TokenRequest, signal?: AbortSignal): Promise<TokenAnswer> {
    const realm = this.#realms.get(request.realmId);
    if (!realm || !this.passthrough) throw new TokenRealmUnknownError(this.registry);
    const target = new URL(realm.href);
    const repositories: string[] = [];
    const mapScope = (scope: string): string =>
      mapScopes(scope, (name, actions, resourceClass) => {
        // Only what a realm grants anyone who may read: a plain `pull` (not `*`, kept for owners,
        // nor a resource class a realm may not know), so a refusal of the token means no read.
        if (resourceClass === undefined && actions.includes('pull')) repositories.push(name);
        return addPrefix(name, this.#prefix);
      });
    // The token's audience is upstream's own: a token asked for another `service` is one upstream
    // refuses, and a refusal of a token the realm issued must mean the credential cannot read.
    const service = this.#realms.serviceOf(request.realmId);
    const param = (key: string, value: string): string => (key === 'scope' ? mapScope(value) : key === 'service' && service !== undefined ? service : value);
    for (const [key, value] of new URLSearchParams(request.query)) target.searchParams.append(key, param(key, value));
    if (service !== undefined && request.method === 'GET' && !target.searchParams.has('service')) target.searchParams.set('service', service);
    const headers: Record<string, string> = { accept: request.accept ?? 'application/json' };
    if (request.authorization) headers['authorization'] = request.authorization;
    let body: Buffer | undefined;
    if (request.method === 'POST') {
      const rewritten = new URLSearchParams();
      for (const [key, value] of new URLSearchParams((request.form ?? Buffer.alloc(0)).toString('utf8'))) rewritten.append(key, param(key, value));
      if (service !== undefined && !rewritten.has('service')) rewritten.set('service', service);
      body = Buffer.from(rewritten.toString());
      headers['content-type'] = 'application/x-www-form-urlencoded';
    }
    const credential = hashCredential(realmCredential(request.authorization, body));
    let response: UpstreamResponse;
    try {
      response = await this.#upstream.forwardTokenRequest(target, request.method, headers, body);
    } catch (error) {
      if (error instanceof UpstreamError && error.unavailable) {
        const offline = await this.#offlineToken(credential, repositories, signal);
        if (offline) return offline;
      }
      throw error;
    }
    const answer = await readBody(this.#bodies, response.body, {
      announced: contentLength(response),
      limit: MAX_TOKEN_RESPONSE_BYTES,
      signal,
      tooLarge: () => new TokenTooLargeError(this.registry),
      // A realm's body cut short is the realm failing, not an internal error.
      readError: (error) => fromTransportError(this.registry, error),
    });
    // Not access yet (realms answer 200 with an empty grant too): the credential counts as accepted
    // for a repository only once upstream accepts this token for it (see confirm).
    if (response.status === 200) this.#grants.record(answer.bytes, credential, repositories, this.#now());
    const out: Record<string, string> = { 'cache-control': 'no-store' };
    const type = response.headers['content-type'];
    if (typeof type === 'string') out['content-type'] = type;
    const authenticate = response.headers['www-authenticate'];
    if (typeof authenticate === 'string') out['www-authenticate'] = authenticate;
    return { status: response.status, headers: out, body: answer };
  }

  /**
   * The realm is unreachable: if upstream accepted a token issued to this very credential for every
   * requested repository within max_stale, a token of the agent's own. It opens nothing but this
   * mirror's cache (check accepts it for those repositories only); upstream never sees it. A realm's
   * 200 alone never counts (see TokenGrants).
   */
  async #offlineToken(credential: CredentialHash, repositories: readonly string[], signal: AbortSignal | undefined): Promise<TokenAnswer | undefined> {
    if (repositories.length === 0) return undefined;
    const now = this.#now();
    for (const repository of repositories) {
      const name = repository as RepositoryName;
      if (!this.#accepted.acceptedWithin(credential, realmKey(name), this.#maxStaleMs, now) && !this.#publicWithin(name, this.#maxStaleMs, now)) return undefined;
    }
    const token = `rpa-offline.${randomBytes(24).toString('base64url')}`;
    // It counts as the credential it was issued to (the realm acceptances above, still within
    // max_stale when used), for those repositories and OFFLINE_TOKEN_TTL_S: a token the grants no
    // longer know opens nothing.
    this.#grants.mint(token, credential, repositories, now, now + OFFLINE_TOKEN_TTL_S * 1000);
    const bytes = Buffer.from(JSON.stringify({ token, access_token: token, expires_in: OFFLINE_TOKEN_TTL_S, issued_at: new Date(now).toISOString() }));
    const hold = await this.#bodies.acquire(bytes.length, signal);
    return { status: 200, headers: { 'content-type': 'application/json', 'cache-control': 'no-store' }, body: new HeldBody(bytes, hold) };
  }

  #principal(requester: Requester): CredentialHash {
    return this.passthrough ? hashCredential(requester.authorization) : AGENT;
  }

  #acceptedWithin(name: RepositoryName, requester: Requester, maxAgeMs: number, principal = this.#principal(requester)): boolean {
    const now = this.#now();
    return (
      this.#memoryOf(requester).acceptedWithin(principal, name, maxAgeMs, now) ||
      this.#publicWithin(name, maxAgeMs, now) ||
      this.#issuedToAccepted(name, requester, maxAgeMs, now)
    );
  }

  /**
   * Upstream served `name` to someone who showed nothing, within `maxAgeMs`: to the registry
   * itself, or with a token the realm issued to an anonymous request. Then anyone may read it.
   */
  #publicWithin(name: RepositoryName, maxAgeMs: number, now: number): boolean {
    return this.#accepted.acceptedWithin(ANONYMOUS, name, maxAgeMs, now) || (this.passthrough && this.#accepted.acceptedWithin(ANONYMOUS_AT_REALM, realmKey(name), maxAgeMs, now));
  }

  /** Where a requester's own acceptances are remembered: a Bearer token apart from credentials. */
  #memoryOf(requester: Requester): AccessMemory {
    return /^bearer\s/i.test(requester.authorization ?? '') ? this.#acceptedTokens : this.#accepted;
  }

  /**
   * A token the agent handed out (forwarded from a realm, or minted offline) counts as the
   * credential it was issued to, when upstream accepted a token of that credential for this
   * repository within `maxAgeMs`: also a new one upstream has not seen yet (the registry down, its
   * realm up).
   */
  #issuedToAccepted(name: RepositoryName, requester: Requester, maxAgeMs: number, now: number): boolean {
    if (!this.passthrough) return false;
    const issuedTo = this.#grants.issuedTo(requester.authorization, name, now);
    return issuedTo !== undefined && this.#accepted.acceptedWithin(issuedTo, realmKey(name), maxAgeMs, now);
  }

  /** When `digest` was last shown in `name` as `kind` (directly, or also as named by a manifest). */
  #linkedAt(name: RepositoryName, kind: ContentKind, digest: Digest, derived: boolean): number | undefined {
    const key = contentKey(kind, digest);
    const direct = this.#links.get(name, key);
    const named = derived ? this.#derived.get(name, key) : undefined;
    return direct === undefined ? named : named === undefined ? direct : Math.max(direct, named);
  }

  /**
   * The content was shown in this repository within `maxAgeMs`, after upstream last refused this
   * requester there; and in passthrough, upstream accepted the requester's credential (or anyone,
   * anonymously) for the repository within `maxAgeMs` too.
   */
  #entitledWithin(name: RepositoryName, kind: ContentKind, digest: Digest, requester: Requester, maxAgeMs: number, derived: boolean): boolean {
    const at = this.#linkedAt(name, kind, digest, derived);
    if (at === undefined || this.#now() - at > maxAgeMs) return false;
    const principal = this.#principal(requester);
    if (at <= (this.#refused.get(principalKey(principal, name)) ?? -Infinity)) return false;
    return !this.passthrough || this.#acceptedWithin(name, requester, maxAgeMs, principal);
  }

  /** Upstream refused this requester for `name`: forget it, and the realm credential its token was issued to. */
  #revoke(name: RepositoryName, requester: Requester): void {
    const principal = this.#principal(requester);
    // A 401 to a request without a credential is how a token registry asks for a token (every
    // puller's first request): it withdraws an anonymous acceptance, but does not date the content
    // a public repository showed before as refused.
    if (principal !== ANONYMOUS) this.#refused.set(principalKey(principal, name), this.#now());
    // Agent auth remembers no acceptance (see accept): the refusal above is all there is.
    if (!this.passthrough) return;
    this.#memoryOf(requester).forget(principal, name);
    // A refusal of a token the realm issued for pulling `name` (for upstream's own service: the token
    // endpoint sees to that) says the credential cannot read it, also the anonymous one that makes a
    // repository public; but only sent as `Bearer <token>` (a form upstream does not parse proves
    // nothing) and in the first half of the token's life (clocks differ: an expiring token proves
    // nothing either). The agent's own offline tokens upstream never saw.
    const grant = this.#grants.grantOf(requester.authorization, name, this.#now());
    if (grant && !grant.minted && CANONICAL_BEARER.test(requester.authorization ?? '') && this.#now() < (grant.issuedAt + grant.expiresAt) / 2) {
      this.#accepted.forget(grant.credential, realmKey(name));
    }
  }

  /**
   * A 401 for the puller: a Bearer realm becomes the agent's token endpoint (learned as a realm of
   * this mirror). A realm the agent would not contact itself is not handed to the puller either.
   */
  #authRequired(challenge: string | undefined, message: string): Error {
    if (challenge === undefined) return new AuthRequiredError(this.registry, undefined, message);
    try {
      this.#upstream.destinations.checkRealm(challenge);
    } catch (refused) {
      return refused as Error;
    }
    const rewritten = rewriteChallenge(challenge, {
      agentBase: this.#agentBase(),
      registry: this.registry,
      realms: this.#realms,
      repositoryPrefix: this.#prefix,
      upstreamBase: this.#upstream.base,
    });
    return new AuthRequiredError(this.registry, rewritten, message);
  }
}

/**
 * What identifies the puller at the realm, whichever way it is presented: Basic `user:password`
 * and the OAuth2 password grant's username and password are the same credential (containerd POSTs
 * the form first and falls back to GET with Basic). Hashed at once, never stored.
 */
export function realmCredential(authorization: string | undefined, form: Buffer | undefined): string {
  if (form) {
    const fields = new URLSearchParams(form.toString('utf8'));
    const user = fields.get('username');
    if (user !== null) return `password:${user}\0${fields.get('password') ?? ''}`;
    const refresh = fields.get('refresh_token');
    if (refresh !== null) return `refresh:${refresh}`;
  }
  const basic = /^basic\s+([A-Za-z0-9+/=_-]+)\s*$/i.exec(authorization ?? '')?.[1];
  if (basic !== undefined) {
    const decoded = Buffer.from(basic, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon >= 0) return `password:${decoded.slice(0, colon)}\0${decoded.slice(colon + 1)}`;
  }
  return authorization ? `header:${authorization}` : 'anonymous';
}

/** A principal's entry for a repository (or for one content in it): never the credential itself. */
function principalKey(principal: CredentialHash, rest: string): string {
  return `${principal}\0${rest}`;
}

/** Records `at` under `key` unless a later time is already there. */
function setIfNewer(times: FairLru<number>, name: RepositoryName, key: string, at: number): void {
  if ((times.get(name, key) ?? -Infinity) < at) times.set(name, key, at);
}

/** Content in a repository's group of the link memories. */
function contentKey(kind: ContentKind, digest: Digest): string {
  return `${kind}\0${digest}`;
}

function linkKey(kind: ContentKind, name: RepositoryName, digest: Digest): string {
  return `${kind}\0${name}\0${digest}`;
}

function notFound(kind: ContentKind, digest: Digest): ContentUnknownError {
  return new ContentUnknownError(kind === 'blobs' ? 'blob' : 'manifest', digest);
}
