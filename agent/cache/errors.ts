/** Cache-domain errors. They know nothing about HTTP; the HTTP surface translates them. */

export class DigestMismatchError extends Error {
  override readonly name = 'DigestMismatchError';
  readonly expected: string;
  readonly actual: string;
  constructor(expected: string, actual: string) {
    super(`content does not match its digest: expected ${expected}, got ${actual}`);
    this.expected = expected;
    this.actual = actual;
  }
}

export class SizeMismatchError extends Error {
  override readonly name = 'SizeMismatchError';
  readonly expected: number;
  readonly actual: number;
  constructor(expected: number, actual: number) {
    super(`content length ${actual} does not match the announced ${expected} bytes`);
    this.expected = expected;
    this.actual = actual;
  }
}

/**
 * No room to cache a blob (under `cache_max_bytes`, or above the free-space reserve): the fill
 * relays it to its readers instead and nothing is cached. Never reaches a client.
 */
export class NoRoomError extends Error {
  override readonly name = 'NoRoomError';
  readonly limit: 'cache_max_bytes' | 'free_space';
  constructor(limit: 'cache_max_bytes' | 'free_space', message: string) {
    super(message);
    this.limit = limit;
  }
}

/** Why a fill was dropped on purpose (see FillAbandonedError). */
export type AbandonReason = 'waiting' | 'relaying' | 'crawling' | 'unsized';

const ABANDONED: Record<AbandonReason, (digest: string) => string> = {
  waiting: (digest) => `every client waiting for ${digest} went away before its download started`,
  relaying: (digest) => `every client reading ${digest} went away while it was relayed uncached: its download was stopped`,
  crawling: (digest) => `the clients of ${digest}, relayed uncached, read too slowly while other downloads waited for its slot: its download was stopped`,
  unsized: (digest) => `every client reading ${digest} went away, and upstream never announced its size (no Content-Length): its download was stopped`,
};

/**
 * Every reader left a fill nobody else can use: before upstream was even asked (it was waiting for
 * a download slot), while it relayed uncached bytes nobody can join any more, or while it
 * downloaded a body whose size upstream never announced. The fill is dropped instead of
 * downloading for nobody.
 */
export class FillAbandonedError extends Error {
  override readonly name = 'FillAbandonedError';
  constructor(digest: string, when: AbandonReason = 'waiting') {
    super(ABANDONED[when](digest));
  }
}
