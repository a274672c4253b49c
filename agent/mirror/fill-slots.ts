import { FifoAdmission } from '../admission/fifo-admission.ts';
import { LIVE, type Lane, type Priority } from '../admission/priority.ts';
import { FillQueueFullError } from './errors.ts';

/** What happened to a request for a slot, for metrics: it queued, got a slot after queueing, was refused, or left the queue. */
export type FillSlotEvent = 'waiting' | 'started' | 'rejected' | 'abandoned';

export interface FillSlotLimits {
  /** Downloads at once (`max_fills_per_mirror`). */
  readonly running: number;
  /** Requests waiting for a slot, in order (`max_queued_fills_per_mirror`); beyond, FillQueueFullError. */
  readonly queued: number;
}

/** A held slot; release it once the download's body ended. Releasing twice counts once. */
export interface FillSlot {
  release(): void;
}

/**
 * The download slots of one mirror: at most `running` blob downloads from its upstream at once, so
 * a node pulling many images does not open hundreds of transfers through one tunnel or proxy.
 * Excess requests wait first come, first served, at most `queued` of them; beyond that they are
 * refused. A waiter whose signal aborts (nobody wants the blob any more) leaves the queue.
 *
 * Live requests (a pull someone waits for) are admitted before background ones (preload), and
 * background downloads never take the last free slot: they hold at most max(1, running − 1), so a
 * pull arriving while preload runs finds a slot at once.
 */
export class FillSlots {
  readonly #queue: FifoAdmission;

  constructor(registry: string, limits: FillSlotLimits, onEvent: (event: FillSlotEvent) => void = () => undefined) {
    this.#queue = new FifoAdmission(
      { capacity: limits.running, waiters: limits.queued, backgroundCapacity: Math.max(1, limits.running - 1) },
      (_reason, state) => new FillQueueFullError(registry, state.held, state.waiting),
      {
        queued: () => onEvent('waiting'),
        admittedAfterWait: () => onEvent('started'),
        left: () => onEvent('abandoned'),
        refused: () => onEvent('rejected'),
      },
    );
  }

  get running(): number {
    return this.#queue.state().held;
  }

  get waiting(): number {
    return this.#queue.state().waiting;
  }

  /** Whether a request of `priority` for a slot now would get one without waiting. */
  free(priority: Priority = 'live'): boolean {
    return this.#queue.wouldAdmit(1, priority);
  }

  /**
   * A slot, at once when one is free for the lane's priority, else after everyone of that priority
   * who asked earlier (background also after every live request; a waiting lane that is raised moves
   * up). Rejects with FillQueueFullError when the queue is full, and with the signal's reason when
   * it aborts first.
   */
  async acquire(signal?: AbortSignal, lane: Lane = LIVE): Promise<FillSlot> {
    const admission = await this.#queue.acquire(1, signal, lane);
    return { release: () => admission.release() };
  }
}
