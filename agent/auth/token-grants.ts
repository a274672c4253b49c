import type { LRUCache } from 'lru-cache';
import { type CredentialHash, hashCredential } from './access-memory.ts';
import { boundedLru } from './bounded-lru.ts';
import { FairLru } from './fair-lru.ts';

/**
 * The AccessMemory key under which a realm credential (what the puller showed the token realm) is
 * remembered as confirmed for a repository. Repository names cannot contain `:`, so these keys
 * never collide with the plain repository keys of registry credentials.
 */
export function realmKey(repository: string): string {
  return `token:${repository}`;
}

/** What the mirror knows of a token it handed out. */
export interface TokenGrant {
  /** The credential the token was issued to (what the puller showed the realm, hashed). */
  readonly credential: CredentialHash;
  readonly repositories: ReadonlySet<string>;
  readonly issuedAt: number;
  readonly expiresAt: number;
  /**
   * Minted by the agent while the realm was unreachable (an offline token): upstream never saw it,
   * so upstream's answer to it says nothing about the credential it was issued to.
   */
  readonly minted: boolean;
  /** The repositories upstream accepted this very token for (see confirm). */
  readonly acceptedFor: ReadonlySet<string>;
}

interface HeldGrant extends TokenGrant {
  readonly acceptedFor: Set<string>;
}

/** Spec default when a realm does not say (distribution's token spec: 60 s). */
const DEFAULT_TOKEN_TTL_S = 60;
/** A realm announcing a longer life does not keep entries around longer than this. */
const MAX_TOKEN_TTL_S = 24 * 3600;
/**
 * A token asked for more repositories than this (or longer names in all) is not remembered: a
 * puller asks for one or two, and whoever asks for hundreds must not make each token cost KiBs.
 */
const MAX_GRANT_REPOSITORIES = 16;
const MAX_GRANT_NAME_CHARS = 2_048;

export interface TokenGrantsLimits {
  /** Tokens upstream has not accepted yet, least recently used out. */
  readonly unconfirmed?: number;
  /** Tokens upstream accepted (and offline tokens), grouped by repository: the largest group gives (FairLru). */
  readonly confirmed?: number;
}

/**
 * Which credential each token the mirror handed out was issued to (forwarded from a realm, or
 * minted offline), and for which repositories.
 *
 * A realm's 200 is not access: Docker-style realms answer 200 with an empty grant to anyone who can
 * log in (and to anonymous requests). Only upstream accepting the token for a repository shows that
 * the credential behind it may read that repository; this map lets the mirror tell which credential
 * that was. Keyed by the token's hash; bounded in time (the token's lifetime) and in entries. Anyone
 * can mint tokens, so a token starts unconfirmed (a bound of its own, least recently used out) and
 * is kept with the repository upstream first accepted it for: a flood of tokens for a repository
 * displaces tokens of that repository only. A lost entry only means a credential is not
 * confirmed, never more access.
 */
export class TokenGrants {
  readonly #unconfirmed: LRUCache<CredentialHash, HeldGrant>;
  readonly #confirmed: FairLru<HeldGrant>;
  /** Confirmed token → its group in #confirmed. */
  readonly #groupOf = new Map<CredentialHash, string>();

  constructor(limits: TokenGrantsLimits = {}) {
    this.#unconfirmed = boundedLru<CredentialHash, HeldGrant>(limits.unconfirmed ?? 4_096);
    this.#confirmed = new FairLru<HeldGrant>(limits.confirmed ?? 10_000, (_group, token) => this.#groupOf.delete(token as CredentialHash));
  }

  /**
   * A realm answered 200 with `body` to `credential`, which asked for `repositories`. Remembers
   * every token in the answer (`token` and `access_token`, as pullers use either). A body that is
   * not a token answer is ignored: nothing is remembered.
   */
  record(body: Buffer, credential: CredentialHash, repositories: readonly string[], now = Date.now()): void {
    if (!rememberable(repositories)) return;
    const answer = parseTokenAnswer(body);
    if (!answer) return;
    const grant: HeldGrant = { credential, repositories: new Set(repositories), issuedAt: now, expiresAt: now + answer.ttlS * 1000, minted: false, acceptedFor: new Set() };
    for (const token of answer.tokens) {
      const key = bearerHash(token);
      this.#drop(key);
      this.#unconfirmed.set(key, grant);
    }
  }

  /** A token the agent minted itself for `credential` (offline), good for `repositories` until `expiresAt`. */
  mint(token: string, credential: CredentialHash, repositories: readonly string[], issuedAt: number, expiresAt: number): void {
    if (!rememberable(repositories)) return;
    const key = bearerHash(token);
    this.#drop(key);
    this.#keep(key, [...repositories].sort().join(' '), { credential, repositories: new Set(repositories), issuedAt, expiresAt, minted: true, acceptedFor: new Set() });
  }

  /** Upstream accepted the token in `authorization` for `repository`: its grant, now kept as confirmed (see grantOf). */
  confirm(authorization: string | undefined, repository: string, now = Date.now()): TokenGrant | undefined {
    const key = tokenKey(authorization);
    const grant = key && this.#find(key, repository, now);
    if (!key || !grant) return undefined;
    grant.acceptedFor.add(repository);
    if (!this.#groupOf.has(key)) {
      this.#unconfirmed.delete(key);
      this.#keep(key, repository, grant);
    }
    return grant;
  }

  /**
   * The grant of the token in `authorization` (`Bearer <token>`), when the mirror handed that token
   * out for `repository` and it has not expired; otherwise undefined.
   */
  grantOf(authorization: string | undefined, repository: string, now = Date.now()): TokenGrant | undefined {
    const key = tokenKey(authorization);
    return key && this.#find(key, repository, now);
  }

  /** The credential the token in `authorization` was issued to (see `grantOf`). */
  issuedTo(authorization: string | undefined, repository: string, now = Date.now()): CredentialHash | undefined {
    return this.grantOf(authorization, repository, now)?.credential;
  }

  get size(): number {
    return this.#unconfirmed.size + this.#confirmed.size;
  }

  #find(key: CredentialHash, repository: string, now: number): HeldGrant | undefined {
    const group = this.#groupOf.get(key);
    const grant = group === undefined ? this.#unconfirmed.get(key) : this.#confirmed.get(group, key);
    if (!grant) return undefined;
    if (now >= grant.expiresAt) {
      this.#drop(key);
      return undefined;
    }
    return grant.repositories.has(repository) ? grant : undefined;
  }

  #keep(key: CredentialHash, group: string, grant: HeldGrant): void {
    this.#groupOf.set(key, group);
    this.#confirmed.set(group, key, grant);
  }

  #drop(key: CredentialHash): void {
    this.#unconfirmed.delete(key);
    const group = this.#groupOf.get(key);
    if (group === undefined) return;
    this.#groupOf.delete(key);
    this.#confirmed.delete(group, key);
  }
}

function rememberable(repositories: readonly string[]): boolean {
  if (repositories.length === 0 || repositories.length > MAX_GRANT_REPOSITORIES) return false;
  return repositories.reduce((chars, name) => chars + name.length, 0) <= MAX_GRANT_NAME_CHARS;
}

/** The token's key, for an `Authorization` of the Bearer scheme (any case and spacing, as pullers send it). */
function tokenKey(authorization: string | undefined): CredentialHash | undefined {
  const token = /^bearer\s+(\S+)\s*$/i.exec(authorization ?? '')?.[1];
  return token === undefined ? undefined : bearerHash(token);
}

/** The canonical `Bearer <token>` form, so a grant is found whatever case the puller sends the scheme in. */
function bearerHash(token: string): CredentialHash {
  return hashCredential(`Bearer ${token}`);
}

function parseTokenAnswer(body: Buffer): { tokens: string[]; ttlS: number } | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null) return undefined;
  const fields = parsed as Record<string, unknown>;
  const tokens = [...new Set([fields['token'], fields['access_token']])].filter((t): t is string => typeof t === 'string' && t !== '');
  if (tokens.length === 0) return undefined;
  const expires = fields['expires_in'];
  const ttlS = typeof expires === 'number' && Number.isFinite(expires) && expires > 0 ? Math.min(expires, MAX_TOKEN_TTL_S) : DEFAULT_TOKEN_TTL_S;
  return { tokens, ttlS };
}
