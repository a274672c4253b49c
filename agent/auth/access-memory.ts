import { createHmac, randomBytes } from 'node:crypto';
import type { LRUCache } from 'lru-cache';
import { boundedLru } from './bounded-lru.ts';

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

/**
 * Which credentials upstream accepted for which key (a repository name, or a realm key), and
 * when. Entries are keyed by credential hash + key; no credential is stored. Bounded in entries,
 * least recently used first out: a forgotten entry only means asking upstream again (or, offline,
 * a 401), never more access.
 */
export class AccessMemory {
  readonly #accepted: LRUCache<string, number>;

  constructor(maxEntries = 50_000) {
    this.#accepted = boundedLru<string, number>(maxEntries);
  }

  /** Upstream accepted `credential` for `key` at `at`. */
  remember(credential: CredentialHash, key: string, at = Date.now()): void {
    this.#accepted.set(entryKey(credential, key), at);
  }

  /** When upstream last accepted this credential for this key, if it did (and it is still remembered). */
  acceptedAt(credential: CredentialHash, key: string): number | undefined {
    return this.#accepted.get(entryKey(credential, key));
  }

  /** Upstream accepted this credential for this key no longer than `maxAgeMs` ago. */
  acceptedWithin(credential: CredentialHash, key: string, maxAgeMs: number, now = Date.now()): boolean {
    const at = this.acceptedAt(credential, key);
    return at !== undefined && now - at <= maxAgeMs;
  }

  forget(credential: CredentialHash, key: string): void {
    this.#accepted.delete(entryKey(credential, key));
  }

  get size(): number {
    return this.#accepted.size;
  }
}

/** The credential is already a keyed hash (no secret left to protect) and a key holds no NUL. */
function entryKey(credential: CredentialHash, key: string): string {
  return `${credential}\0${key}`;
}
