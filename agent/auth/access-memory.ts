import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';

/**
 * Which credentials upstream accepted for which repository, and when. Keys are hashes of
 * credential + repository; no credential is stored. Bounded in entries.
 */
export class AccessMemory {
  readonly #accepted: LRUCache<string, number>;

  constructor(maxEntries = 50_000) {
    this.#accepted = new LRUCache<string, number>({ max: maxEntries });
  }

  remember(credential: string | undefined, repository: string, now = Date.now()): void {
    this.#accepted.set(key(credential, repository), now);
  }

  /** When upstream last accepted this credential for this repository, if within `maxAgeMs`. */
  acceptedWithin(credential: string | undefined, repository: string, maxAgeMs: number, now = Date.now()): boolean {
    const at = this.#accepted.get(key(credential, repository));
    return at !== undefined && now - at <= maxAgeMs;
  }

  forget(credential: string | undefined, repository: string): void {
    this.#accepted.delete(key(credential, repository));
  }
}

/** `undefined` credential = anonymous: a public repository is remembered like any other credential. */
function key(credential: string | undefined, repository: string): string {
  return createHash('sha256')
    .update(credential ?? '<anonymous>')
    .update('\0')
    .update(repository)
    .digest('base64url');
}
