import type { ByteRate } from '../admission/byte-rate.ts';
import type { Lane, Priority } from '../admission/priority.ts';
import type { FillBody } from '../cache/fill.ts';
import type { FillSlot } from './fill-slots.ts';
import { throttled } from './throttled-body.ts';
import type { TunnelGate } from './tunnel-gate.ts';

/** The slots a fetch holds, in every gate; given back together, once. */
export interface FetchHold {
  release(): void;
}

/**
 * Everything a mirror's upstream blob fetch must pass, in order: the mirror's own budget, then (on
 * the Connectivity Proxy route) the tunnel's, shared by every mirror on that route. A fetch holds a
 * slot of each until its body ended, and each chunk of its body takes its bytes from each rate.
 * Slots are always taken in the same order (mirror, then tunnel), so two fetches cannot each
 * hold what the other waits for.
 */
export class FetchBudget {
  readonly #gates: readonly TunnelGate[];
  readonly #rates: readonly ByteRate[];

  constructor(gates: readonly TunnelGate[]) {
    this.#gates = gates;
    this.#rates = gates.flatMap((gate) => (gate.rate ? [gate.rate] : []));
  }

  /** Whether a fetch of `priority` would start now, without waiting for any slot. */
  free(priority: Priority): boolean {
    return this.#gates.every((gate) => gate.free(priority));
  }

  /** Whether other fetches wait for a slot this fetch could give back. */
  get contended(): boolean {
    return this.#gates.some((gate) => gate.contended);
  }

  /**
   * A slot in every gate, in order. Rejects like FillSlots.acquire (queue full, `signal` aborted);
   * the slots already taken are then given back.
   */
  async acquire(lane: Lane, signal?: AbortSignal): Promise<FetchHold> {
    const held: FillSlot[] = [];
    const release = (): void => {
      for (const slot of held.splice(0)) slot.release();
    };
    try {
      for (const gate of this.#gates) {
        const slot = await gate.slot(lane, signal);
        if (slot) held.push(slot);
      }
    } catch (error) {
      release();
      throw error;
    }
    return { release };
  }

  /** The body with each chunk paced by every rate of the gates (see `throttled`). */
  throttle(body: FillBody, lane: Lane): FillBody {
    return throttled(body, this.#rates, lane);
  }
}
