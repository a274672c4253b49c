/**
 * A bounded amount of something (download slots, bytes of memory) handed out first come, first
 * served. Requests that do not fit wait in order (a small one never overtakes a large one, so a
 * large one cannot starve), at most `waiters` of them and, when `waitMs` is set, for at most that
 * long; a waiter whose signal aborts leaves the queue. A request larger than the whole capacity is
 * admitted alone. The two users (FillSlots, BodyBudget) differ in their units, their errors and
 * their events, not in how they queue.
 */
export interface AdmissionLimits {
  /** What may be held at once. */
  readonly capacity: number;
  /** Requests that may wait at once; beyond, they are refused (`queue_full`). */
  readonly waiters: number;
  /** Longest wait (`wait_timeout`); undefined: as long as it takes. */
  readonly waitMs?: number | undefined;
}

export type AdmissionRefusal = 'queue_full' | 'wait_timeout';

export interface AdmissionState {
  /** Amount held now. */
  readonly held: number;
  /** Requests waiting. */
  readonly waiting: number;
}

/** What the queue reports; it logs nothing itself. */
export interface AdmissionEvents {
  /** A request started to wait. */
  queued?(): void;
  /** A request that had waited was admitted. */
  admittedAfterWait?(): void;
  /** A waiting request left the queue: its signal aborted. */
  left?(): void;
  /** A request was refused. */
  refused?(reason: AdmissionRefusal): void;
  /** Held amount or waiters changed. */
  changed?(state: AdmissionState): void;
}

/** An amount held until released. Releasing again is a no-op; shrinking never grows it. */
export interface Admission {
  readonly amount: number;
  shrink(amount: number): void;
  release(): void;
}

interface Waiter {
  readonly amount: number;
  readonly admit: () => void;
}

export class FifoAdmission {
  readonly #limits: AdmissionLimits;
  readonly #refusal: (reason: AdmissionRefusal, state: AdmissionState) => Error;
  readonly #events: AdmissionEvents;
  readonly #queue: Waiter[] = [];
  #held = 0;

  /** `refusal` makes the error a refused request is rejected with (each user has its own domain error). */
  constructor(limits: AdmissionLimits, refusal: (reason: AdmissionRefusal, state: AdmissionState) => Error, events: AdmissionEvents = {}) {
    this.#limits = limits;
    this.#refusal = refusal;
    this.#events = events;
  }

  state(): AdmissionState {
    return { held: this.#held, waiting: this.#queue.length };
  }

  /**
   * `amount`, at once when it fits and nobody waits, else after everyone who asked earlier. Rejects
   * with the refusal error (queue full, waited too long), or with the signal's reason when it
   * aborts first.
   */
  acquire(amount: number, signal?: AbortSignal): Promise<Admission> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#queue.length === 0 && this.#fits(amount)) return Promise.resolve(this.#admit(amount));
    if (this.#queue.length >= this.#limits.waiters) return Promise.reject(this.#refuse('queue_full'));
    return new Promise<Admission>((resolve, reject) => {
      const leave = (): boolean => {
        const index = this.#queue.indexOf(waiter);
        if (index < 0) return false;
        this.#queue.splice(index, 1);
        if (timer) clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        return true;
      };
      const onAbort = (): void => {
        if (!leave()) return;
        this.#events.left?.();
        this.#pump();
        this.#changed();
        reject(signal?.reason);
      };
      const waiter: Waiter = {
        amount,
        admit: () => {
          leave();
          this.#events.admittedAfterWait?.();
          resolve(this.#admit(amount));
        },
      };
      const waitMs = this.#limits.waitMs;
      const timer =
        waitMs === undefined
          ? undefined
          : setTimeout(() => {
              if (!leave()) return;
              this.#pump();
              this.#changed();
              reject(this.#refuse('wait_timeout'));
            }, waitMs);
      timer?.unref();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#queue.push(waiter);
      this.#events.queued?.();
      this.#changed();
    });
  }

  #fits(amount: number): boolean {
    return this.#held + amount <= this.#limits.capacity || this.#held === 0;
  }

  #admit(amount: number): Admission {
    this.#held += amount;
    this.#changed();
    let held = amount;
    const give = (back: number): void => {
      held -= back;
      this.#held -= back;
      this.#pump();
      this.#changed();
    };
    return {
      get amount() {
        return held;
      },
      shrink: (to) => {
        if (to < held) give(held - Math.max(0, to));
      },
      release: () => {
        if (held > 0) give(held);
      },
    };
  }

  /** Admits waiters from the head of the queue while they fit. */
  #pump(): void {
    for (let head = this.#queue[0]; head && this.#fits(head.amount); head = this.#queue[0]) head.admit();
  }

  #refuse(reason: AdmissionRefusal): Error {
    this.#events.refused?.(reason);
    return this.#refusal(reason, this.state());
  }

  #changed(): void {
    this.#events.changed?.(this.state());
  }
}
