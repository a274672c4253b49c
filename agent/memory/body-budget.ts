import { FifoAdmission } from '../admission/fifo-admission.ts';
import { MemoryBudgetError } from './errors.ts';

/**
 * Bytes of bodies held whole in memory at once, across the process. Manifests (up to 4 MiB each)
 * and token answers are read whole and kept until their client has taken them; 1,024 connections
 * that ask and never read would otherwise hold 4 GiB. 64 MiB is ~16 of the largest manifests at
 * once, and thousands of ordinary ones (a few KiB).
 */
export const BODY_BUDGET_BYTES = 64 * 1024 * 1024;
/** Requests waiting for room at once; beyond, they are refused (TOOMANYREQUESTS). */
export const BODY_BUDGET_WAITERS = 256;
/** Longest wait for room: about when send_timeout (60 s) has cut readers that stopped. */
export const BODY_BUDGET_WAIT_MS = 30_000;

export interface BodyBudgetLimits {
  readonly bytes: number;
  readonly waiters: number;
  readonly waitMs: number;
}

export const DEFAULT_BODY_BUDGET: BodyBudgetLimits = { bytes: BODY_BUDGET_BYTES, waiters: BODY_BUDGET_WAITERS, waitMs: BODY_BUDGET_WAIT_MS };

export interface BodyBudgetState {
  /** Bytes held now. */
  readonly held: number;
  /** Requests waiting for room. */
  readonly waiting: number;
}

/** What the budget reports (metrics); it logs nothing itself. */
export interface BodyBudgetEvents {
  changed?(state: BodyBudgetState): void;
  refused?(reason: MemoryBudgetError['reason']): void;
}

/**
 * Bytes counted against the budget until released. One owner releases it, once: releasing again
 * is a no-op, so a path that releases early and a `finally` that releases again cannot count twice.
 */
export interface BudgetHold {
  readonly bytes: number;
  /** Keeps only `bytes` (the body turned out smaller than asked for); never grows. */
  shrink(bytes: number): void;
  release(): void;
}

/**
 * A process-wide byte budget for bodies held whole in memory. Room is asked for BEFORE the bytes
 * are read; requests wait first come, first served (a small one never overtakes a large one, so
 * a large one cannot starve), at most `waiters` of them and for at most `waitMs`; a request
 * whose signal aborts (its client left) leaves the queue. A request larger than the whole
 * budget is granted alone.
 */
export class BodyBudget {
  readonly #queue: FifoAdmission;

  constructor(limits: BodyBudgetLimits = DEFAULT_BODY_BUDGET, events: BodyBudgetEvents = {}) {
    this.#queue = new FifoAdmission(
      { capacity: limits.bytes, waiters: limits.waiters, waitMs: limits.waitMs },
      (reason, state) => new MemoryBudgetError(reason, state.held, state.waiting),
      { ...(events.changed ? { changed: events.changed } : {}), ...(events.refused ? { refused: events.refused } : {}) },
    );
  }

  state(): BodyBudgetState {
    return this.#queue.state();
  }

  /**
   * Room for `bytes`, at once when it fits and nobody waits, else after everyone who asked
   * earlier. Rejects with MemoryBudgetError (queue full, waited too long), or with the signal's
   * reason when it aborts first.
   */
  async acquire(bytes: number, signal?: AbortSignal): Promise<BudgetHold> {
    const admission = await this.#queue.acquire(bytes, signal);
    return {
      get bytes() {
        return admission.amount;
      },
      shrink: (to) => admission.shrink(to),
      release: () => admission.release(),
    };
  }
}
