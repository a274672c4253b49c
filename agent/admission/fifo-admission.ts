import { LIVE, type Lane, type Priority, PriorityLines } from './priority.ts';

/**
 * A bounded amount of something (download slots, bytes of memory) handed out first come, first
 * served. Requests that do not fit wait in order (a small one never overtakes a large one, so a
 * large one cannot starve), at most `waiters` of them and, when `waitMs` is set, for at most that
 * long; a waiter whose signal aborts leaves the queue. A request larger than the whole capacity is
 * admitted alone. The two users (FillSlots, BodyBudget) differ in their units, their errors and
 * their events, not in how they queue.
 *
 * Requests come in two priorities (see Lane): a `live` one is admitted before every `background`
 * one, whenever it arrived; background requests together hold at most `backgroundCapacity`, so
 * some room stays for the live ones. A waiting background request whose lane is raised moves to
 * the end of the live queue.
 */
export interface AdmissionLimits {
  /** What may be held at once. */
  readonly capacity: number;
  /** Requests that may wait at once; beyond, they are refused (`queue_full`). */
  readonly waiters: number;
  /** Longest wait (`wait_timeout`); undefined: as long as it takes. */
  readonly waitMs?: number | undefined;
  /** What background requests may hold together (default: `capacity`). */
  readonly backgroundCapacity?: number | undefined;
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
  readonly #lines = new PriorityLines<Waiter>();
  #held = 0;
  /** Held by requests that were background when admitted (they stay counted so even once raised). */
  #heldBackground = 0;

  /** `refusal` makes the error a refused request is rejected with (each user has its own domain error). */
  constructor(limits: AdmissionLimits, refusal: (reason: AdmissionRefusal, state: AdmissionState) => Error, events: AdmissionEvents = {}) {
    this.#limits = limits;
    this.#refusal = refusal;
    this.#events = events;
  }

  state(): AdmissionState {
    return { held: this.#held, waiting: this.#lines.size };
  }

  /** Whether a request of `priority` for `amount` would be admitted now, without waiting. */
  wouldAdmit(amount: number, priority: Priority = 'live'): boolean {
    return this.#lines.ahead(priority) === 0 && this.#fits(amount, priority);
  }

  /**
   * `amount`, at once when it fits and nobody of its priority or above waits, else after everyone
   * of its priority who asked earlier (and, for background, after every live request). Rejects
   * with the refusal error (queue full, waited too long), or with the signal's reason when it
   * aborts first.
   */
  acquire(amount: number, signal?: AbortSignal, lane: Lane = LIVE): Promise<Admission> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    const priority = lane.priority;
    if (this.wouldAdmit(amount, priority)) return Promise.resolve(this.#admit(amount, priority));
    // Each priority has the whole queue bound: preload filling the queue must not get pulls refused.
    if (this.#lines.ahead(priority) >= this.#limits.waiters) return Promise.reject(this.#refuse('queue_full'));
    return new Promise<Admission>((resolve, reject) => {
      const leave = (): boolean => {
        if (!this.#lines.remove(waiter)) return false;
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
          // Counted by the priority it waited as: a request raised meanwhile was moved to live.
          const admittedAs = this.#lines.priorityOf(waiter) ?? priority;
          leave();
          this.#events.admittedAfterWait?.();
          resolve(this.#admit(amount, admittedAs));
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
      this.#lines.add(waiter, lane, () => this.#pump());
      this.#events.queued?.();
      this.#changed();
    });
  }

  #fits(amount: number, priority: Priority): boolean {
    if (this.#held > 0 && this.#held + amount > this.#limits.capacity) return false;
    if (priority === 'live') return true;
    const room = this.#limits.backgroundCapacity ?? this.#limits.capacity;
    return this.#heldBackground + amount <= room || this.#held === 0;
  }

  #admit(amount: number, priority: Priority): Admission {
    const background = priority === 'background';
    this.#held += amount;
    if (background) this.#heldBackground += amount;
    this.#changed();
    let held = amount;
    const give = (back: number): void => {
      held -= back;
      this.#held -= back;
      if (background) this.#heldBackground -= back;
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

  /**
   * Admits waiters from the head of the live queue while they fit, then, only once no live request
   * waits, from the head of the background queue.
   */
  #pump(): void {
    for (let head = this.#lines.head(); head; head = this.#lines.head()) {
      if (!this.#fits(head.amount, this.#lines.priorityOf(head) ?? 'live')) return;
      head.admit();
    }
  }

  #refuse(reason: AdmissionRefusal): Error {
    this.#events.refused?.(reason);
    return this.#refusal(reason, this.state());
  }

  #changed(): void {
    this.#events.changed?.(this.state());
  }
}
