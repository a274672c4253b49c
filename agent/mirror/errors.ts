/** Mirror-domain errors. They know nothing about HTTP; the HTTP surface translates them. */

/**
 * Every download slot of a mirror is busy and its wait queue is full: the request is refused
 * rather than queued without bound (the client retries later).
 */
export class FillQueueFullError extends Error {
  override readonly name = 'FillQueueFullError';
  readonly registry: string;
  readonly running: number;
  readonly queued: number;
  constructor(registry: string, running: number, queued: number) {
    super(`${running} blob downloads from ${registry} are running and ${queued} are waiting for a slot`);
    this.registry = registry;
    this.running = running;
    this.queued = queued;
  }
}
