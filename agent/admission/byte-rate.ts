import { LIVE, type Lane, type Priority, PriorityLines } from './priority.ts';

/** Time and one-shot timers, injectable so that tests drive the rate with a clock of their own. */
export interface RateClock {
  /** Milliseconds on a monotonic clock. */
  now(): number;
  /** Runs `run` after `ms`; the returned function cancels it. Must not keep the process alive. */
  schedule(run: () => void, ms: number): () => void;
}

export const SYSTEM_CLOCK: RateClock = {
  now: () => performance.now(),
  schedule: (run, ms) => {
    const timer = setTimeout(run, ms);
    timer.unref();
    return () => clearTimeout(timer);
  },
};

/** What the rate reports; it logs nothing itself. */
export interface ByteRateEvents {
  /** `bytes` were let through after waiting `seconds`, as `priority` (the lane's when they passed). */
  waited?(priority: Priority, bytes: number, seconds: number): void;
}

/**
 * A bucket holds at most this many seconds of the rate: a transfer starting on an idle line gets
 * that much at once, and over a few seconds the rate holds (256 MiB at 20 MiB/s take ~12.6 s, not
 * the ~11.8 s a whole second of burst would allow). Long enough that timer granularity (~1 ms)
 * and socket chunks (16–64 KiB) never make the rate fall short of the configured one.
 */
export const BURST_SECONDS = 0.25;

interface Waiter {
  readonly bytes: number;
  readonly lane: Lane;
  readonly since: number;
  readonly admit: () => void;
}

/**
 * A token bucket in bytes per second with two priorities. Bytes pass when the bucket holds enough
 * for them (or is full, for a chunk larger than the bucket: it then goes into debt, so the average
 * rate holds whatever the chunk sizes). Waiters are served in order, every live waiter before any
 * background one: background gets only what live transfers leave. One timer at most, for the
 * head of the queue, unref'd; memory is O(waiters).
 */
export class ByteRate {
  readonly bytesPerSecond: number;
  readonly burstBytes: number;
  readonly #clock: RateClock;
  readonly #events: ByteRateEvents;
  readonly #lines = new PriorityLines<Waiter>();
  /** May go below zero (debt, see above). */
  #tokens: number;
  #at: number;
  #cancelTimer: (() => void) | undefined;

  constructor(bytesPerSecond: number, options: { readonly burstBytes?: number; readonly clock?: RateClock; readonly events?: ByteRateEvents } = {}) {
    if (!(bytesPerSecond > 0)) throw new RangeError(`bytesPerSecond must be positive, got ${bytesPerSecond}`);
    this.bytesPerSecond = bytesPerSecond;
    this.burstBytes = options.burstBytes ?? Math.max(1, Math.floor(bytesPerSecond * BURST_SECONDS));
    this.#clock = options.clock ?? SYSTEM_CLOCK;
    this.#events = options.events ?? {};
    this.#tokens = this.burstBytes;
    this.#at = this.#clock.now();
  }

  /** Waiters now, both priorities. */
  get waiting(): number {
    return this.#lines.size;
  }

  /**
   * Takes `bytes` at once when nobody of `priority` or above waits and the bucket has them; false
   * otherwise (nothing taken). The hot path: a transfer within its budget allocates nothing.
   */
  tryTake(bytes: number, priority: Priority = 'live'): boolean {
    if (this.#lines.ahead(priority) > 0) return false;
    this.#refill();
    if (!this.#enough(bytes)) return false;
    this.#tokens -= bytes;
    return true;
  }

  /**
   * Resolves once `bytes` may pass: at once when `tryTake` would succeed, else in turn. Rejects
   * with the signal's reason when it aborts first (the waiter leaves, taking nothing).
   */
  take(bytes: number, lane: Lane = LIVE, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.tryTake(bytes, lane.priority)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const leave = (): void => {
        this.#lines.remove(waiter);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = (): void => {
        leave();
        // The head may have changed: the next one may pass now, or need another wake-up time.
        this.#pump();
        reject(signal?.reason);
      };
      const waiter: Waiter = {
        bytes,
        lane,
        since: this.#clock.now(),
        admit: () => {
          leave();
          this.#events.waited?.(lane.priority, bytes, (this.#clock.now() - waiter.since) / 1000);
          resolve();
        },
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#lines.add(waiter, lane, () => this.#pump());
      this.#pump();
    });
  }

  /** Bytes from the bucket for the next waiters in turn; then the timer for the one after. */
  #pump(): void {
    this.#refill();
    for (let head = this.#lines.head(); head && this.#enough(head.bytes); head = this.#lines.head()) {
      this.#tokens -= head.bytes;
      head.admit();
    }
    this.#arm();
  }

  #enough(bytes: number): boolean {
    return this.#tokens >= Math.min(bytes, this.burstBytes);
  }

  #refill(): void {
    const now = this.#clock.now();
    this.#tokens = Math.min(this.burstBytes, this.#tokens + ((now - this.#at) * this.bytesPerSecond) / 1000);
    this.#at = now;
  }

  /** One timer, for when the head's bytes will be in the bucket; none while nobody waits. */
  #arm(): void {
    this.#cancelTimer?.();
    this.#cancelTimer = undefined;
    const head = this.#lines.head();
    if (!head) return;
    const missing = Math.min(head.bytes, this.burstBytes) - this.#tokens;
    // At least 1 ms: a rounding remainder must not spin the timer at 0.
    const ms = Math.max(1, Math.ceil((missing * 1000) / this.bytesPerSecond));
    this.#cancelTimer = this.#clock.schedule(() => {
      this.#cancelTimer = undefined;
      this.#pump();
    }, ms);
  }
}
