import type { ByteRate } from '../admission/byte-rate.ts';
import type { Lane } from '../admission/priority.ts';
import type { FillBody } from '../cache/fill.ts';

/**
 * An upstream body whose chunks each take their bytes from every rate in `rates` (in order) before
 * they are passed on. Nothing is read ahead: while a chunk waits, the body is not pulled, so its
 * stream fills its small buffer and TCP pushes back on the sender (the tunnel carries no more than
 * the budget, and memory holds a chunk or two). `destroy` ends a wait at once (the fill stops a
 * download that waits for its budget as promptly as one that waits for upstream) and destroys the
 * body. Without rates, the body itself: unthrottled mirrors pay nothing.
 */
export function throttled(body: FillBody, rates: readonly ByteRate[], lane: Lane): FillBody {
  if (rates.length === 0) return body;
  const stop = new AbortController();
  async function* chunks(): AsyncGenerator<Uint8Array> {
    for await (const chunk of body) {
      for (const rate of rates) {
        // The lane is read per chunk: a download raised to live takes live bytes from then on.
        if (!rate.tryTake(chunk.length, lane.priority)) await rate.take(chunk.length, lane, stop.signal);
      }
      yield chunk;
    }
  }
  return {
    [Symbol.asyncIterator]: chunks,
    destroy: (error?: Error) => {
      stop.abort(error);
      return body.destroy?.(error);
    },
  };
}
