/** Bearer tokens per scope, dropped shortly before they expire. */
export class TokenCache {
  readonly #tokens = new Map<string, { token: string; expiresAt: number }>();
  readonly #marginMs: number;
  readonly #maxEntries: number;

  constructor(marginMs = 10_000, maxEntries = 1000) {
    this.#marginMs = marginMs;
    this.#maxEntries = maxEntries;
  }

  get(scope: string, now = Date.now()): string | undefined {
    const entry = this.#tokens.get(scope);
    if (!entry) return undefined;
    if (entry.expiresAt - this.#marginMs <= now) {
      this.#tokens.delete(scope);
      return undefined;
    }
    return entry.token;
  }

  set(scope: string, token: string, ttlMs: number, now = Date.now()): void {
    if (this.#tokens.size >= this.#maxEntries) {
      const oldest = this.#tokens.keys().next();
      if (!oldest.done) this.#tokens.delete(oldest.value);
    }
    this.#tokens.set(scope, { token, expiresAt: now + ttlMs });
  }
}
