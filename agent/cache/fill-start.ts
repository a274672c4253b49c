import type { FillSource } from './fill.ts';

/**
 * Starts the upstream download of a blob. `unwanted` aborts when every reader left before
 * upstream answered: a download that has not been sent yet (waiting for a slot) should then be
 * dropped, one already under way may go on and be cached.
 */
export type FetchBlob = (unwanted: AbortSignal) => Promise<FillSource>;

/**
 * Who asks for a blob, as far as starting its download goes. Requesters with different keys may
 * get different answers from upstream (another credential, another repository): the failure of one
 * (`ownsFailure`: refused, not found for it) is not the others'. The cache only compares keys and
 * asks the predicate; what the key means is the caller's.
 */
export interface FillRequester {
  readonly fetch: FetchBlob;
  readonly key: string;
  /** True when `error` from this requester's fetch is about this requester only. */
  ownsFailure(error: unknown): boolean;
  /**
   * True when this requester is already known to be served (e.g. upstream accepted its credential
   * for the repository moments ago): after a refusal it is tried before the requesters that are not,
   * so many refused requesters cannot stand between it and the download.
   */
  likely?(): boolean;
  /** `background`: nobody waits for this requester's download yet (preload). Absent: `live`. */
  readonly priority?: 'live' | 'background';
  /**
   * Someone waits for this requester's download now (a live request joined it): it must not wait
   * behind background work any more, for its start or its bytes.
   */
  raise?(): void;
}

/** A bare fetch: one requester everybody shares (its failures are everyone's). */
export function asRequester(fetch: FetchBlob | FillRequester): FillRequester {
  return typeof fetch === 'function' ? { fetch, key: '', ownsFailure: () => false } : fetch;
}

/** A reader's stake in the start: rejects with its requester's own failure; never resolves. */
export interface StartStake {
  readonly own: Promise<never>;
  /** The reader left: its requester is not tried any more (no-op once the start settled). */
  leave(): void;
}

interface Candidate {
  readonly requester: FillRequester;
  readonly own: PromiseWithResolvers<never>;
  readers: number;
}

/**
 * The start of one fill, tried with one requester after the other. The requester that started
 * the fill goes first; every requester joining before upstream answered queues behind it (one per
 * key). A failure the requester owns fails its readers only, and the next requester's fetch is
 * tried: an anonymous client looping on a digest cannot make an entitled client's request for it
 * fail. A failure nobody owns (upstream down, wrong bytes, a full queue) fails the fill for all.
 * A key that already failed in this fill is not tried again: its joiners get that failure at once.
 */
export class FillStart {
  readonly source: Promise<FillSource>;
  /** The stake of the requester that started the fill. */
  readonly firstStake: StartStake;
  readonly #queue: Candidate[] = [];
  readonly #failed = new Map<string, unknown>();
  /** The requester whose fetch runs now, or whose download is under way once it answered. */
  #active: FillRequester | undefined;
  #settled = false;

  constructor(first: FillRequester, unwanted: AbortSignal) {
    this.firstStake = this.#candidate(first);
    this.source = this.#run(unwanted);
  }

  /**
   * A reader joining the fill: its requester is queued while upstream has not answered. A live
   * reader raises the download it joins (waiting for its slot, or under way): a pull must not wait
   * behind preload for a blob preload happened to start first.
   */
  join(requester: FillRequester): StartStake {
    if (requester.priority !== 'background') this.#active?.raise?.();
    if (this.#settled) return { own: never(), leave: () => undefined };
    const failure = this.#failed.get(requester.key);
    if (failure !== undefined) return { own: rejected(failure), leave: () => undefined };
    return this.#candidate(requester);
  }

  #candidate(requester: FillRequester): StartStake {
    let candidate = this.#queue.find((c) => c.requester.key === requester.key);
    if (!candidate) {
      candidate = { requester, own: Promise.withResolvers<never>(), readers: 0 };
      candidate.own.promise.catch(() => undefined);
      this.#queue.push(candidate);
    }
    candidate.readers += 1;
    const chosen = candidate;
    let left = false;
    return {
      own: chosen.own.promise,
      leave: () => {
        if (left || this.#settled) return;
        left = true;
        chosen.readers -= 1;
        // Not the one running (index 0): nobody waits for its answer any more.
        const at = this.#queue.indexOf(chosen);
        if (chosen.readers === 0 && at > 0) this.#queue.splice(at, 1);
      },
    };
  }

  /** Moves the first requester known to be served to the front (otherwise the order of arrival stays). */
  #preferLikely(): void {
    const at = this.#queue.findIndex((c) => c.requester.likely?.() === true);
    if (at > 0) this.#queue.unshift(...this.#queue.splice(at, 1));
  }

  async #run(unwanted: AbortSignal): Promise<FillSource> {
    try {
      for (;;) {
        const candidate = this.#queue[0]!;
        this.#active = candidate.requester;
        // A live reader queued behind background requesters that failed: the next fetch runs for it.
        if (this.#queue.some((c) => c.requester.priority !== 'background')) candidate.requester.raise?.();
        try {
          return await candidate.requester.fetch(unwanted);
        } catch (error) {
          this.#active = undefined;
          this.#queue.shift();
          const owned = candidate.requester.ownsFailure(error);
          if (!owned || this.#queue.length === 0) throw error;
          this.#failed.set(candidate.requester.key, error);
          candidate.own.reject(error);
          this.#preferLikely();
        }
      }
    } finally {
      this.#settled = true;
      this.#queue.length = 0;
    }
  }
}

function never(): Promise<never> {
  return new Promise<never>(() => undefined);
}

function rejected(error: unknown): Promise<never> {
  const promise = Promise.reject(error as Error);
  promise.catch(() => undefined);
  return promise;
}
