import type { LRUCache } from 'lru-cache';
import { type CredentialHash, hashCredential } from './access-memory.ts';
import { boundedLru } from './bounded-lru.ts';

/**
 * The AccessMemory key under which a realm credential (what the puller showed the token realm) is
 * remembered as confirmed for a repository. Repository names cannot contain `:`, so these keys
 * never collide with the plain repository keys of registry credentials.
 */
export function realmKey(repository: string): string {
  return `token:${repository}`;
}

interface Grant {
  readonly credential: CredentialHash;
  readonly repositories: ReadonlySet<string>;
  readonly expiresAt: number;
}

/** Spec default when a realm does not say (distribution's token spec: 60 s). */
const DEFAULT_TOKEN_TTL_S = 60;
/** A realm announcing a longer life does not keep entries around longer than this. */
const MAX_TOKEN_TTL_S = 24 * 3600;

/**
 * Which credential each token forwarded from a realm was issued to, and for which repositories.
 *
 * A realm's 200 is not access: Docker-style realms answer 200 with an empty grant to anyone who can
 * log in (and to anonymous requests). Only upstream accepting the token for a repository shows that
 * the credential behind it may read that repository; this map lets the mirror tell which credential
 * that was. Keyed by the token's hash; bounded in entries (least recently used out) and in time
 * (the token's lifetime): a lost entry only means a credential is not confirmed, never more access.
 */
export class TokenGrants {
  readonly #grants: LRUCache<CredentialHash, Grant>;

  constructor(maxEntries = 10_000) {
    this.#grants = boundedLru<CredentialHash, Grant>(maxEntries);
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
    const grant: Grant = { credential, repositories: new Set(repositories), expiresAt: now + answer.ttlS * 1000 };
    for (const token of answer.tokens) this.#grants.set(bearerHash(token), grant);
  }

  /**
   * The credential the token in `authorization` (`Bearer <token>`) was issued to, when the agent
   * forwarded that token for `repository` and it has not expired; otherwise undefined.
   */
  issuedTo(authorization: string | undefined, repository: string, now = Date.now()): CredentialHash | undefined {
    const token = /^bearer\s+(\S+)\s*$/i.exec(authorization ?? '')?.[1];
    if (token === undefined) return undefined;
    const key = bearerHash(token);
    const grant = this.#grants.get(key);
    if (!grant) return undefined;
    if (now >= grant.expiresAt) {
      this.#grants.delete(key);
      return undefined;
    }
    return grant.repositories.has(repository) ? grant.credential : undefined;
  }

  get size(): number {
    return this.#grants.size;
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
