/** Time as the damping sees it; tests pass a manual clock instead of sleeping. */
export interface Clock {
  now(): number;
  /** Calls `fn` once after `ms`; the returned function cancels it. Must not keep the process alive. */
  after(ms: number, fn: () => void): () => void;
}

export const SYSTEM_CLOCK: Clock = {
  now: () => Date.now(),
  after(ms, fn) {
    const timer = setTimeout(fn, ms);
    timer.unref();
    return () => clearTimeout(timer);
  },
};

export interface DamperOptions {
  /** How long a new state must hold before it is written (default 20 s: two local evaluations). */
  readonly settleMs?: number;
  /** Up to this much more, drawn at random for each new state, so nodes that change together write apart (default 10 s). */
  readonly jitterMs?: number;
  /** [0, 1), for the jitter. */
  readonly random?: () => number;
}

export type Decision = { readonly kind: 'unchanged' } | { readonly kind: 'write' } | { readonly kind: 'wait'; readonly until: number };

/**
 * Decides when a node writes a changed report. A Cloud Connector outage flips every node at once, and
 * a flapping tunnel flips them again and again; writing each flip would send 5,000 Lease writes per
 * flip to the API server. So a changed report is written only once its state (ready or not, reason,
 * generation per RegistryMirror) has held for `settleMs` plus a per-change random jitter; a state that
 * goes back to what is written before then costs nothing. Only the very first report is written at
 * once: until then the leader knows nothing about the node.
 */
export class ReportDamper {
  readonly #settleMs: number;
  readonly #jitterMs: number;
  readonly #random: () => number;
  #pending: { readonly state: string; readonly due: number } | undefined;

  constructor(options: DamperOptions = {}) {
    this.#settleMs = options.settleMs ?? 20_000;
    this.#jitterMs = options.jitterMs ?? 10_000;
    this.#random = options.random ?? Math.random;
  }

  /**
   * `written`: the text in the API server (undefined when there is none); `text` and `state`: the
   * report just computed and its state (see reportState). A message-only change waits like any other,
   * so a message that keeps changing is written at most once per settle time.
   */
  decide(written: string | undefined, text: string, state: string, now: number): Decision {
    if (text === written) {
      this.#pending = undefined;
      return { kind: 'unchanged' };
    }
    if (written === undefined) return { kind: 'write' };
    if (this.#pending?.state !== state) this.#pending = { state, due: now + this.#settleMs + Math.floor(this.#random() * this.#jitterMs) };
    return now >= this.#pending.due ? { kind: 'write' } : { kind: 'wait', until: this.#pending.due };
  }

  /** The report was written: the next change starts a new wait. */
  written(): void {
    this.#pending = undefined;
  }
}
