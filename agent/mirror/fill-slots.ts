import { FifoAdmission } from '../admission/fifo-admission.ts';
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
 */
export class FillSlots {
  readonly #queue: FifoAdmission;
  readonly #capacity: number;

  constructor(registry: string, limits: FillSlotLimits, onEvent: (event: FillSlotEvent) => void = () => undefined) {
    this.#capacity = limits.running;
    this.#queue = new FifoAdmission(
      { capacity: limits.running, waiters: limits.queued },
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

  /** Whether a request for a slot now would get one without waiting. */
  get free(): boolean {
    const { held, waiting } = this.#queue.state();
    return waiting === 0 && held < this.#capacity;
  }

  /**
   * A slot, at once when one is free, else after everyone who asked earlier. Rejects with
   * FillQueueFullError when the queue is full, and with the signal's reason when it aborts first.
   */
  async acquire(signal?: AbortSignal): Promise<FillSlot> {
    const admission = await this.#queue.acquire(1, signal);
    return { release: () => admission.release() };
  }
}
