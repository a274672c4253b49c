import { createHmac, randomBytes } from 'node:crypto';
import type { LRUCache } from 'lru-cache';
import { boundedLru } from './bounded-lru.ts';
import { FairLru } from './fair-lru.ts';

/** A credential (an `Authorization` value, a password grant, …) after hashing: nothing secret left in it. */
export type CredentialHash = string & { readonly __credentialHash: unique symbol };

/**
 * Keyed with a secret drawn at start: a memory dump holds hashes that cannot be checked against
 * guessed passwords offline, and nothing survives a restart (the memory is in-process only).
 */
const PROCESS_KEY = randomBytes(32);

/** Hashes a credential; `undefined` (no credential: anonymous) gets a hash no header value can have. */
export function hashCredential(credential: string | undefined): CredentialHash {
  // Header values cannot contain NUL, so the anonymous marker never collides with a real credential.
  return createHmac('sha256', PROCESS_KEY)
    .update(credential === undefined ? '\0anonymous' : `c:${credential}`)
    .digest('base64url') as CredentialHash;
}

/** The hash of "no credential", computed once: every passthrough check compares against it. */
export const ANONYMOUS: CredentialHash = hashCredential(undefined);

/** What a puller showed the token realm when it showed nothing (see realmCredential in broker.ts). */
export const ANONYMOUS_AT_REALM: CredentialHash = hashCredential('anonymous');

/**
 * Which credentials upstream accepted for which key (a repository name, or a realm key), and
 * when. No credential is stored, only its keyed hash. Bounded, and fair against whoever mints
 * credentials: entries are grouped by key and only the largest group gives (FairLru), so a flood
 * of fresh credentials accepted for a repository displaces entries of that repository only. The
 * two anonymous credentials (nothing shown to the registry, or to the realm) are kept apart, one
 * entry per key (up to `maxAnonymousKeys` keys), out of reach of credential floods. A forgotten
 * entry only means asking upstream again (or, offline, a 401), never more access.
 */
export class AccessMemory {
  readonly #accepted: FairLru<number>;
  readonly #anonymous: LRUCache<string, number>;

  constructor(maxEntries = 50_000, maxAnonymousKeys = 10_000) {
    this.#accepted = new FairLru<number>(maxEntries);
    this.#anonymous = boundedLru<string, number>(maxAnonymousKeys);
  }

  /** Upstream accepted `credential` for `key` at `at`. */
  remember(credential: CredentialHash, key: string, at = Date.now()): void {
    if (isAnonymous(credential)) this.#anonymous.set(anonymousKey(credential, key), at);
    else this.#accepted.set(key, credential, at);
  }

  /** When upstream last accepted this credential for this key, if it did (and it is still remembered). */
  acceptedAt(credential: CredentialHash, key: string): number | undefined {
    return isAnonymous(credential) ? this.#anonymous.get(anonymousKey(credential, key)) : this.#accepted.get(key, credential);
  }

  /** Upstream accepted this credential for this key no longer than `maxAgeMs` ago. */
  acceptedWithin(credential: CredentialHash, key: string, maxAgeMs: number, now = Date.now()): boolean {
    const at = this.acceptedAt(credential, key);
    return at !== undefined && now - at <= maxAgeMs;
  }

  forget(credential: CredentialHash, key: string): void {
    if (isAnonymous(credential)) this.#anonymous.delete(anonymousKey(credential, key));
    else this.#accepted.delete(key, credential);
  }

  get size(): number {
    return this.#accepted.size + this.#anonymous.size;
  }
}

function isAnonymous(credential: CredentialHash): boolean {
  return credential === ANONYMOUS || credential === ANONYMOUS_AT_REALM;
}

/** The credential is already a keyed hash (no secret left to protect) and a key holds no NUL. */
function anonymousKey(credential: CredentialHash, key: string): string {
  return `${credential}\0${key}`;
}
