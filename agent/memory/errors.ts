/** Memory-domain errors. They know nothing about HTTP; the HTTP surface translates them. */

/**
 * The budget for bodies held whole in memory (manifests, token answers) is taken, and this
 * request could not wait for it: too many wait already, or it waited too long. The client
 * retries later; nothing failed.
 */
export class MemoryBudgetError extends Error {
  override readonly name = 'MemoryBudgetError';
  readonly reason: 'queue_full' | 'wait_timeout';
  /** Bytes held when refused. */
  readonly held: number;
  /** Requests waiting when refused. */
  readonly waiting: number;
  constructor(reason: 'queue_full' | 'wait_timeout', held: number, waiting: number) {
    super(
      reason === 'queue_full'
        ? `${held} bytes of response bodies are held in memory and ${waiting} requests wait for room`
        : `waited too long for room to hold a response body in memory (${held} bytes held, ${waiting} requests waiting)`,
    );
    this.reason = reason;
    this.held = held;
    this.waiting = waiting;
  }
}
