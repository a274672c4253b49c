/**
 * Who waits for a transfer: `live`, a pull containerd or a kubelet waits for; `background`, work
 * nobody waits for yet (preload). Background runs only on what live requests leave.
 */
export type Priority = 'live' | 'background';

/**
 * One transfer's priority as it goes through the queues (download slots, byte rates). It only goes
 * up: a background download that a live pull joined is live from then on, and every queue it is
 * waiting in moves it ahead at once (`onRaise`), so the pull never waits behind preload.
 */
export class Lane {
  #priority: Priority;
  readonly #listeners = new Set<() => void>();

  constructor(priority: Priority = 'live') {
    this.#priority = priority;
  }

  get priority(): Priority {
    return this.#priority;
  }

  /** Makes the lane live for good; the queues it waits in hear about it once. */
  raise(): void {
    if (this.#priority === 'live') return;
    this.#priority = 'live';
    const listeners = [...this.#listeners];
    this.#listeners.clear();
    for (const listener of listeners) listener();
  }

  /**
   * `listener` runs once when the lane is raised (never for a lane that is live already). Returns
   * the unsubscribe a waiter calls when it leaves its queue, so a lane holds only current waiters.
   */
  onRaise(listener: () => void): () => void {
    if (this.#priority === 'live') return () => undefined;
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}

/** A lane that is live and stays so (the default of every queue). */
export const LIVE: Lane = new Lane('live');

/**
 * The two waiting lines of a queue that serves live before background: each in arrival order; a
 * background waiter whose lane is raised moves to the end of the live line (and `moved` runs, so
 * the queue can admit it if it now may pass). Waiters are held only while they wait.
 */
export class PriorityLines<T> {
  readonly #live: T[] = [];
  readonly #background: T[] = [];
  readonly #unsubscribe = new Map<T, () => void>();

  /** Waiters in both lines. */
  get size(): number {
    return this.#live.length + this.#background.length;
  }

  /** Waiters that a new one of `priority` queues behind (live waits behind live only). */
  ahead(priority: Priority): number {
    return priority === 'live' ? this.#live.length : this.size;
  }

  /** The next to serve: the first live waiter, else the first background one. */
  head(): T | undefined {
    return this.#live[0] ?? this.#background[0];
  }

  /** The priority `waiter` waits as now (undefined: it does not wait). */
  priorityOf(waiter: T): Priority | undefined {
    if (this.#live.includes(waiter)) return 'live';
    return this.#background.includes(waiter) ? 'background' : undefined;
  }

  add(waiter: T, lane: Lane, moved: () => void): void {
    if (lane.priority === 'live') {
      this.#live.push(waiter);
      return;
    }
    this.#background.push(waiter);
    this.#unsubscribe.set(
      waiter,
      lane.onRaise(() => {
        this.#unsubscribe.delete(waiter);
        const index = this.#background.indexOf(waiter);
        if (index < 0) return;
        this.#background.splice(index, 1);
        this.#live.push(waiter);
        moved();
      }),
    );
  }

  /** Takes `waiter` out of its line; false when it was not waiting. */
  remove(waiter: T): boolean {
    this.#unsubscribe.get(waiter)?.();
    this.#unsubscribe.delete(waiter);
    for (const line of [this.#live, this.#background]) {
      const index = line.indexOf(waiter);
      if (index >= 0) {
        line.splice(index, 1);
        return true;
      }
    }
    return false;
  }
}
