import { ByteRate, type RateClock, SYSTEM_CLOCK } from '../admission/byte-rate.ts';
import type { Lane, Priority } from '../admission/priority.ts';
import type { TunnelBudget } from '../config/types.ts';
import { type FillSlot, type FillSlotEvent, type FillSlotLimits, FillSlots } from './fill-slots.ts';

/** What a fetch waited for: a download slot, or room in the byte rate for its bytes. */
export type BudgetWaitKind = 'slot' | 'bytes';

/** What the budgets report, for metrics; they log nothing themselves. */
export interface BudgetEvents {
  /**
   * A fetch (kind `slot`, bytes 0) or `bytes` of its body (kind `bytes`) waited `seconds` in the
   * budget `budget` (a mirror's registry, or `connectivity-proxy`), as `priority` when it passed.
   */
  waited?(budget: string, priority: Priority, kind: BudgetWaitKind, seconds: number, bytes: number): void;
}

/** The budget every mirror on the Connectivity Proxy route shares (the metrics' `budget` label). */
export const CONNECTIVITY_PROXY_BUDGET = 'connectivity-proxy';

/**
 * One budget a blob fetch passes: a mirror's own, or the Connectivity Proxy's (the tunnel as a
 * whole). Its slots bound the fetches at once, its rate the bytes per second; either may be
 * absent (unlimited). Waits are reported under the budget's name.
 */
export class TunnelGate {
  readonly name: string;
  readonly slots: FillSlots | undefined;
  readonly rate: ByteRate | undefined;
  readonly #events: BudgetEvents;
  readonly #clock: RateClock;

  constructor(name: string, parts: { readonly slots?: FillSlots | undefined; readonly bytesPerSecond?: number | undefined; readonly clock?: RateClock }, events: BudgetEvents = {}) {
    this.name = name;
    this.slots = parts.slots;
    this.#events = events;
    this.#clock = parts.clock ?? SYSTEM_CLOCK;
    this.rate =
      parts.bytesPerSecond === undefined
        ? undefined
        : new ByteRate(parts.bytesPerSecond, {
            clock: this.#clock,
            events: { waited: (priority, bytes, seconds) => events.waited?.(name, priority, 'bytes', seconds, bytes) },
          });
  }

  /** Whether a fetch of `priority` would get this gate's slot now (true without slots). */
  free(priority: Priority): boolean {
    return this.slots?.free(priority) ?? true;
  }

  /** Whether fetches wait for this gate's slots. */
  get contended(): boolean {
    return (this.slots?.waiting ?? 0) > 0;
  }

  /** This gate's slot for a fetch in `lane` (none without slots); a wait is reported once admitted. */
  async slot(lane: Lane, signal?: AbortSignal): Promise<FillSlot | undefined> {
    if (!this.slots) return undefined;
    if (this.slots.free(lane.priority)) return this.slots.acquire(signal, lane);
    const since = this.#clock.now();
    const slot = await this.slots.acquire(signal, lane);
    this.#events.waited?.(this.name, lane.priority, 'slot', (this.#clock.now() - since) / 1000, 0);
    return slot;
  }
}

/**
 * A mirror's own budget: its download slots (`max_fetches`, else the global
 * `max_fills_per_mirror`; queue `max_queued_fills_per_mirror`) and its `max_bytes_per_second`.
 */
export function mirrorGate(registry: string, budget: TunnelBudget, slots: FillSlotLimits, onSlotEvent?: (event: FillSlotEvent) => void, events?: BudgetEvents): TunnelGate {
  const limits = { running: budget.maxFetches ?? slots.running, queued: slots.queued };
  return new TunnelGate(registry, { slots: new FillSlots(registry, limits, onSlotEvent), bytesPerSecond: budget.bytesPerSecond }, events);
}

/**
 * The Connectivity Proxy's budget, one per agent, shared by every mirror on that route; undefined
 * when `[connectivity_proxy]` sets neither key. Its slot queue is unbounded: each waiter holds a
 * mirror slot already, so the mirrors' queues bound it.
 */
export function connectivityProxyGate(budget: TunnelBudget, events?: BudgetEvents): TunnelGate | undefined {
  if (budget.maxFetches === undefined && budget.bytesPerSecond === undefined) return undefined;
  const slots = budget.maxFetches === undefined ? undefined : new FillSlots(CONNECTIVITY_PROXY_BUDGET, { running: budget.maxFetches, queued: Number.POSITIVE_INFINITY });
  return new TunnelGate(CONNECTIVITY_PROXY_BUDGET, { slots, bytesPerSecond: budget.bytesPerSecond }, events);
}
