import { type CredentialHash, hashCredential } from './access-memory.ts';

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
  readonly expiresAt: number;
  /**
   * Minted by the agent while the realm was unreachable (an offline token): upstream never saw it,
   * so upstream's answer to it says nothing about the credential it was issued to.
   */
  readonly minted: boolean;
}

/** Spec default when a realm does not say (distribution's token spec: 60 s). */
const DEFAULT_TOKEN_TTL_S = 60;
/** A realm announcing a longer life does not keep entries around longer than this. */
const MAX_TOKEN_TTL_S = 24 * 3600;

export interface TokenGrantsLimits {
  /** Credentials whose tokens are remembered; the one that least recently got or used a token goes first. */
  readonly credentials?: number;
  /** Tokens remembered per credential; its oldest goes first. */
  readonly tokensPerCredential?: number;
}

/**
 * Which credential each token the mirror handed out was issued to (forwarded from a realm, or
 * minted offline), and for which repositories.
 *
 * A realm's 200 is not access: Docker-style realms answer 200 with an empty grant to anyone who can
 * log in (and to anonymous requests). Only upstream accepting the token for a repository shows that
 * the credential behind it may read that repository; this map lets the mirror tell which credential
 * that was. Keyed by the token's hash; bounded in time (the token's lifetime) and per credential:
 * anyone can mint tokens (anonymously, or with their own login), so tokens of one credential only
 * ever displace that credential's own older tokens, and a credential goes only when `credentials`
 * others got or used a token since. A lost entry only means a credential is not confirmed, never
 * more access.
 */
export class TokenGrants {
  /** Token hash → grant. */
  readonly #tokens = new Map<CredentialHash, TokenGrant>();
  /** Credential → its tokens, oldest first; credentials in order of last use, least recent first. */
  readonly #holders = new Map<CredentialHash, Set<CredentialHash>>();
  readonly #maxCredentials: number;
  readonly #perCredential: number;

  constructor(limits: TokenGrantsLimits = {}) {
    this.#maxCredentials = limits.credentials ?? 1_000;
    this.#perCredential = limits.tokensPerCredential ?? 64;
  }

  /**
   * A realm answered 200 with `body` to `credential`, which asked for `repositories`. Remembers
   * every token in the answer (`token` and `access_token`, as pullers use either). A body that is
   * not a token answer is ignored: nothing is remembered.
   */
  record(body: Buffer, credential: CredentialHash, repositories: readonly string[], now = Date.now()): void {
    if (repositories.length === 0) return;
    const answer = parseTokenAnswer(body);
    if (!answer) return;
    const grant: TokenGrant = { credential, repositories: new Set(repositories), expiresAt: now + answer.ttlS * 1000, minted: false };
    for (const token of answer.tokens) this.#add(bearerHash(token), grant);
  }

  /** A token the agent minted itself for `credential` (offline), good for `repositories` until `expiresAt`. */
  mint(token: string, credential: CredentialHash, repositories: readonly string[], expiresAt: number): void {
    if (repositories.length === 0) return;
    this.#add(bearerHash(token), { credential, repositories: new Set(repositories), expiresAt, minted: true });
  }

  /**
   * The grant of the token in `authorization` (`Bearer <token>`), when the mirror handed that token
   * out for `repository` and it has not expired; otherwise undefined.
   */
  grantOf(authorization: string | undefined, repository: string, now = Date.now()): TokenGrant | undefined {
    const token = /^bearer\s+(\S+)\s*$/i.exec(authorization ?? '')?.[1];
    if (token === undefined) return undefined;
    const key = bearerHash(token);
    const grant = this.#tokens.get(key);
    if (!grant) return undefined;
    if (now >= grant.expiresAt) {
      this.#drop(key, grant);
      return undefined;
    }
    this.#touch(grant.credential);
    return grant.repositories.has(repository) ? grant : undefined;
  }

  /** The credential the token in `authorization` was issued to (see `grantOf`). */
  issuedTo(authorization: string | undefined, repository: string, now = Date.now()): CredentialHash | undefined {
    return this.grantOf(authorization, repository, now)?.credential;
  }

  get size(): number {
    return this.#tokens.size;
  }

  #add(key: CredentialHash, grant: TokenGrant): void {
    const previous = this.#tokens.get(key);
    if (previous) this.#drop(key, previous);
    const held = this.#touch(grant.credential) ?? new Set<CredentialHash>();
    this.#holders.set(grant.credential, held);
    held.add(key);
    this.#tokens.set(key, grant);
    if (held.size > this.#perCredential) {
      const oldest = held.values().next().value as CredentialHash;
      this.#drop(oldest, this.#tokens.get(oldest) as TokenGrant);
    }
    while (this.#holders.size > this.#maxCredentials) {
      const [credential, tokens] = this.#holders.entries().next().value as [CredentialHash, Set<CredentialHash>];
      for (const token of tokens) this.#tokens.delete(token);
      this.#holders.delete(credential);
    }
  }

  /** Moves a credential to the most recently used end; its tokens, if it has any. */
  #touch(credential: CredentialHash): Set<CredentialHash> | undefined {
    const held = this.#holders.get(credential);
    if (held) {
      this.#holders.delete(credential);
      this.#holders.set(credential, held);
    }
    return held;
  }

  #drop(key: CredentialHash, grant: TokenGrant): void {
    this.#tokens.delete(key);
    const held = this.#holders.get(grant.credential);
    held?.delete(key);
    if (held?.size === 0) this.#holders.delete(grant.credential);
  }
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
