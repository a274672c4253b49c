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
