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

interface Waiter {
  readonly grant: (slot: FillSlot) => void;
  readonly abandon: () => void;
}

/**
 * The download slots of one mirror: at most `running` blob downloads from its upstream at once, so
 * a node pulling many images does not open hundreds of transfers through one tunnel or proxy.
 * Excess requests wait first come, first served, at most `queued` of them; beyond that they are
 * refused. A waiter whose signal aborts (nobody wants the blob any more) leaves the queue.
 */
export class FillSlots {
  readonly #registry: string;
  readonly #limits: FillSlotLimits;
  readonly #onEvent: (event: FillSlotEvent) => void;
  readonly #queue: Waiter[] = [];
  #running = 0;

  constructor(registry: string, limits: FillSlotLimits, onEvent: (event: FillSlotEvent) => void = () => undefined) {
    this.#registry = registry;
    this.#limits = limits;
    this.#onEvent = onEvent;
  }

  get running(): number {
    return this.#running;
  }

  get waiting(): number {
    return this.#queue.length;
  }

  /**
   * A slot, at once when one is free, else after everyone who asked earlier. Rejects with
   * FillQueueFullError when the queue is full, and with the signal's reason when it aborts first.
   */
  acquire(signal?: AbortSignal): Promise<FillSlot> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.#running < this.#limits.running) {
      this.#running += 1;
      return Promise.resolve(this.#slot());
    }
    if (this.#queue.length >= this.#limits.queued) {
      this.#onEvent('rejected');
      return Promise.reject(new FillQueueFullError(this.#registry, this.#running, this.#queue.length));
    }
    return new Promise<FillSlot>((resolve, reject) => {
      const onAbort = (): void => waiter.abandon();
      const waiter: Waiter = {
        grant: (slot) => {
          signal?.removeEventListener('abort', onAbort);
          this.#onEvent('started');
          resolve(slot);
        },
        abandon: () => {
          const index = this.#queue.indexOf(waiter);
          if (index < 0) return;
          this.#queue.splice(index, 1);
          this.#onEvent('abandoned');
          reject(signal?.reason);
        },
      };
      this.#queue.push(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#onEvent('waiting');
    });
  }

  #slot(): FillSlot {
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        // Handed straight to the next waiter: no newcomer can take it in between.
        const next = this.#queue.shift();
        if (next) next.grant(this.#slot());
        else this.#running -= 1;
      },
    };
  }
}
