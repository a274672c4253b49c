import type { BodyBudget, BudgetHold } from './body-budget.ts';

/**
 * A body held whole in memory and counted against the BodyBudget until released. Exactly one
 * owner at a time: whoever receives it releases it (the HTTP handler once the response that
 * carries it is done, any other path as soon as it drops it). Releasing is idempotent and drops
 * the reference, so a body used after release fails loudly instead of being served uncounted.
 */
export class HeldBody {
  #bytes: Buffer | undefined;
  readonly #hold: BudgetHold;
  readonly length: number;

  constructor(bytes: Buffer, hold: BudgetHold) {
    this.#bytes = bytes;
    this.#hold = hold;
    this.length = bytes.length;
    hold.shrink(bytes.length);
  }

  get bytes(): Buffer {
    if (!this.#bytes) throw new Error('body already released');
    return this.#bytes;
  }

  release(): void {
    this.#bytes = undefined;
    this.#hold.release();
  }
}

/**
 * `use`'s result takes over `body`; when `use` throws, nobody owns it and it is released at once.
 * For every path that holds a body between reading it and handing it on.
 */
export async function releaseOnThrow<T>(body: HeldBody, use: () => Promise<T>): Promise<T> {
  try {
    return await use();
  } catch (error) {
    body.release();
    throw error;
  }
}

/** A body to read whole: an upstream response body (undici's, node's streams). */
export type WholeBody = AsyncIterable<unknown> & { destroy(error?: Error): unknown };

export interface ReadBodyOptions {
  /** Content-Length, when announced: held while reading (else `limit` is). */
  readonly announced?: number | undefined;
  /** Most bytes accepted. */
  readonly limit: number;
  /** The client's: aborts the wait for room when it leaves. */
  readonly signal?: AbortSignal | undefined;
  /** The error for a body over the limit (or longer than announced). */
  readonly tooLarge: () => Error;
  /** Maps a failure while reading (a body cut short) to the caller's domain error. */
  readonly readError: (error: unknown) => Error;
}

/**
 * Reads a body whole under the budget: room for the announced size (or the limit) is acquired
 * before the first byte is read, and shrunk to what arrived. On any failure the body is
 * destroyed and the room given back; on success the caller owns the HeldBody.
 */
export async function readBody(budget: BodyBudget, body: WholeBody, options: ReadBodyOptions): Promise<HeldBody> {
  const { announced, limit } = options;
  if (announced !== undefined && announced > limit) {
    body.destroy();
    throw options.tooLarge();
  }
  let hold: BudgetHold;
  try {
    hold = await budget.acquire(announced ?? limit, options.signal);
  } catch (error) {
    body.destroy();
    throw error;
  }
  const room = hold.bytes;
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of body) {
      const bytes = chunk as Buffer;
      total += bytes.length;
      if (total > room) throw options.tooLarge();
      chunks.push(bytes);
    }
  } catch (error) {
    body.destroy();
    hold.release();
    throw total > room ? error : options.readError(error);
  }
  return new HeldBody(Buffer.concat(chunks, total), hold);
}
