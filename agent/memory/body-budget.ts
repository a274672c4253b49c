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

interface Waiter {
  readonly bytes: number;
  readonly grant: () => void;
}

/**
 * A process-wide byte budget for bodies held whole in memory. Room is asked for BEFORE the bytes
 * are read; requests wait first come, first served (a small one never overtakes a large one, so
 * a large one cannot starve), at most `waiters` of them and for at most `waitMs`; a request
 * whose signal aborts (its client left) leaves the queue. A request larger than the whole
 * budget is granted alone.
 */
export class BodyBudget {
  readonly #limits: BodyBudgetLimits;
  readonly #events: BodyBudgetEvents;
  readonly #queue: Waiter[] = [];
  #held = 0;

  constructor(limits: BodyBudgetLimits = DEFAULT_BODY_BUDGET, events: BodyBudgetEvents = {}) {
    this.#limits = limits;
    this.#events = events;
  }

  state(): BodyBudgetState {
    return { held: this.#held, waiting: this.#queue.length };
  }

  /**
   * Room for `bytes`, at once when it fits and nobody waits, else after everyone who asked
   * earlier. Rejects with MemoryBudgetError (queue full, waited too long), or with the signal's
   * reason when it aborts first.
   */
  acquire(bytes: number, signal?: AbortSignal): Promise<BudgetHold> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#queue.length === 0 && this.#fits(bytes)) return Promise.resolve(this.#grant(bytes));
    if (this.#queue.length >= this.#limits.waiters) return Promise.reject(this.#refuse('queue_full'));
    return new Promise<BudgetHold>((resolve, reject) => {
      const leave = (): boolean => {
        const index = this.#queue.indexOf(waiter);
        if (index < 0) return false;
        this.#queue.splice(index, 1);
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        return true;
      };
      const onAbort = (): void => {
        if (!leave()) return;
        this.#pump();
        reject(signal?.reason);
      };
      const waiter: Waiter = {
        bytes,
        grant: () => {
          leave();
          resolve(this.#grant(bytes));
        },
      };
      const timer = setTimeout(() => {
        if (!leave()) return;
        this.#pump();
        reject(this.#refuse('wait_timeout'));
      }, this.#limits.waitMs);
      timer.unref();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#queue.push(waiter);
      this.#changed();
    });
  }

  #fits(bytes: number): boolean {
    return this.#held + bytes <= this.#limits.bytes || this.#held === 0;
  }

  #grant(bytes: number): BudgetHold {
    this.#held += bytes;
    this.#changed();
    let held = bytes;
    const give = (amount: number): void => {
      held -= amount;
      this.#held -= amount;
      this.#pump();
      this.#changed();
    };
    return {
      get bytes() {
        return held;
      },
      shrink: (bytes) => {
        if (bytes < held) give(held - Math.max(0, bytes));
      },
      release: () => {
        if (held > 0) give(held);
      },
    };
  }

  /** Grants waiters from the head of the queue while they fit. */
  #pump(): void {
    for (let head = this.#queue[0]; head && this.#fits(head.bytes); head = this.#queue[0]) head.grant();
  }

  #refuse(reason: MemoryBudgetError['reason']): MemoryBudgetError {
    this.#events.refused?.(reason);
    return new MemoryBudgetError(reason, this.#held, this.#queue.length);
  }

  #changed(): void {
    this.#events.changed?.(this.state());
  }
}
