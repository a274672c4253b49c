// FillStart: who the start of one fill is tried with. Every fetch is a controllable promise
// (Promise.withResolvers); fetch call counts and the settlement of `source` and of every stake are
// the proof. No timers: a flush of the microtask queue (setImmediate) lets the start move on.
import { describe, expect, it } from 'vitest';
import type { FillSource } from './fill.ts';
import { type FetchBlob, FillStart, type FillRequester, asRequester } from './fill-start.ts';

type Outcome = 'pending' | 'fulfilled' | 'rejected';

/** A requester whose fetches the test answers; `owns` decides ownsFailure. */
interface Scripted extends FillRequester {
  readonly calls: number;
  readonly signals: AbortSignal[];
  resolve(source: FillSource): void;
  reject(error: unknown): void;
}

function requester(key: string, owns: (error: unknown) => boolean = () => true): Scripted {
  const pending: Array<PromiseWithResolvers<FillSource>> = [];
  const signals: AbortSignal[] = [];
  const current = (): PromiseWithResolvers<FillSource> => {
    const last = pending.at(-1);
    if (!last) throw new Error(`fetch of ${key} was never called`);
    return last;
  };
  return {
    key,
    fetch: (unwanted) => {
      signals.push(unwanted);
      const deferred = Promise.withResolvers<FillSource>();
      pending.push(deferred);
      return deferred.promise;
    },
    ownsFailure: owns,
    get calls() {
      return pending.length;
    },
    signals,
    resolve: (source) => current().resolve(source),
    reject: (error) => current().reject(error),
  };
}

function source(label: string): FillSource {
  return { size: label.length, body: { label } } as unknown as FillSource;
}

/** Lets every queued microtask (and the start's next try) run. */
async function flush(): Promise<void> {
  for (let i = 0; i < 3; i += 1) await new Promise<void>((resolve) => setImmediate(resolve));
}

/** How `promise` stands after the queue was flushed (settlement is observed, never consumed twice). */
async function outcome(promise: Promise<unknown>): Promise<Outcome> {
  let state: Outcome = 'pending';
  promise.then(
    () => (state = 'fulfilled'),
    () => (state = 'rejected'),
  );
  await flush();
  return state;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (error: unknown) => error,
  );
}

function start(first: FillRequester): { fill: FillStart; controller: AbortController } {
  const controller = new AbortController();
  const fill = new FillStart(first, controller.signal);
  fill.source.catch(() => undefined);
  return { fill, controller };
}

describe('FillStart', () => {
  it('after a refusal, a requester known to be served goes before the others that queued earlier', async () => {
    const first = requester('attacker-0');
    const { fill } = start(first);
    const others = Array.from({ length: 5 }, (_, i) => requester(`attacker-${i + 1}`));
    for (const other of others) fill.join(other);
    // Alice's fetches are counted on her script; the requester joining adds that she is known to be served.
    const aliceScript = requester('alice');
    fill.join({ key: 'alice', fetch: aliceScript.fetch, ownsFailure: aliceScript.ownsFailure, likely: () => true });
    first.reject(new Error('refused'));
    await flush();
    // Alice is tried next, not after the five that queued before her.
    expect(aliceScript.calls).toBe(1);
    expect(others.map((o) => o.calls)).toEqual([0, 0, 0, 0, 0]);
    aliceScript.resolve(source('alice'));
    expect(await fill.source).toEqual(source('alice'));
  });

  it("resolves source with the first requester's answer; no stake ever settles and nobody else is asked", async () => {
    const a = requester('a');
    const b = requester('b');
    const { fill, controller } = start(a);
    expect(a.calls).toBe(1);
    expect(a.signals[0]).toBe(controller.signal);
    const joined = fill.join(b);
    const wanted = source('from a');
    a.resolve(wanted);
    await expect(fill.source).resolves.toBe(wanted);
    expect(await outcome(joined.own)).toBe('pending');
    expect(await outcome(fill.firstStake.own)).toBe('pending');
    expect(b.calls).toBe(0);
    // A join after the start settled: a stake that never settles, and still no fetch.
    const late = requester('c');
    const after = fill.join(late);
    expect(await outcome(after.own)).toBe('pending');
    expect(late.calls).toBe(0);
  });

  it("an owned failure rejects only its requester's stake; the next requester (another key) is tried and its source wins", async () => {
    const a = requester('a');
    const b = requester('b');
    const { fill } = start(a);
    const joined = fill.join(b);
    expect(b.calls).toBe(0);
    const refused = new Error('a: 401');
    a.reject(refused);
    await flush();
    expect(await rejection(fill.firstStake.own)).toBe(refused);
    expect(b.calls).toBe(1);
    expect(await outcome(fill.source)).toBe('pending');
    const wanted = source('from b');
    b.resolve(wanted);
    await expect(fill.source).resolves.toBe(wanted);
    expect(await outcome(joined.own)).toBe('pending');
    expect(a.calls).toBe(1);
  });

  it('a joiner with the key of a queued candidate shares it: its fetch is never called, it gets that owned failure', async () => {
    const a = requester('a');
    const b = requester('b');
    const b2 = requester('b');
    const c = requester('c');
    const { fill } = start(a);
    const stakeB = fill.join(b);
    const stakeB2 = fill.join(b2);
    const stakeC = fill.join(c);
    a.reject(new Error('a: 404'));
    await flush();
    expect(b.calls).toBe(1);
    const refusedB = new Error('b: 403');
    b.reject(refusedB);
    await flush();
    expect(await rejection(stakeB.own)).toBe(refusedB);
    expect(await rejection(stakeB2.own)).toBe(refusedB);
    expect(b2.calls).toBe(0);
    expect(c.calls).toBe(1);
    c.resolve(source('from c'));
    await expect(fill.source).resolves.toEqual(source('from c'));
    expect(await outcome(stakeC.own)).toBe('pending');
  });

  it('a joiner with the key of the running candidate shares it too', async () => {
    const a = requester('a');
    const a2 = requester('a');
    const b = requester('b');
    const { fill } = start(a);
    const stakeA2 = fill.join(a2);
    fill.join(b);
    const refused = new Error('a: 401');
    a.reject(refused);
    await flush();
    expect(await rejection(stakeA2.own)).toBe(refused);
    expect(a2.calls).toBe(0);
    expect(b.calls).toBe(1);
  });

  it('a joiner arriving after its key failed gets that failure at once, without a new fetch', async () => {
    const a = requester('a');
    const b = requester('b');
    const { fill } = start(a);
    fill.join(b);
    const refused = new Error('a: 401');
    a.reject(refused);
    await flush();
    expect(b.calls).toBe(1);
    // b still runs: the start has not settled.
    const again = requester('a');
    const stake = fill.join(again);
    expect(await rejection(stake.own)).toBe(refused);
    expect(again.calls).toBe(0);
    expect(a.calls).toBe(1);
    expect(await outcome(fill.source)).toBe('pending');
    stake.leave(); // a no-op
    b.resolve(source('from b'));
    await expect(fill.source).resolves.toEqual(source('from b'));
  });

  it('a failure nobody owns fails source for everyone without trying the queued requesters', async () => {
    const a = requester('a', () => false);
    const b = requester('b');
    const c = requester('c');
    const { fill } = start(a);
    const stakeB = fill.join(b);
    const stakeC = fill.join(c);
    const down = new Error('upstream down');
    a.reject(down);
    expect(await rejection(fill.source)).toBe(down);
    await flush();
    expect(a.calls + b.calls + c.calls).toBe(1);
    // Not anyone's own failure: the stakes stay pending, the source carries it.
    expect(await outcome(stakeB.own)).toBe('pending');
    expect(await outcome(stakeC.own)).toBe('pending');
    expect(await outcome(fill.firstStake.own)).toBe('pending');
  });

  it("ownsFailure is asked with the failure, and only the owned kind moves on", async () => {
    const seen: unknown[] = [];
    const owned = new Error('mine');
    const a = requester('a', (error) => {
      seen.push(error);
      return error === owned;
    });
    const b = requester('b');
    const { fill } = start(a);
    fill.join(b);
    const other = new Error('not mine');
    a.reject(other);
    expect(await rejection(fill.source)).toBe(other);
    expect(seen).toEqual([other]);
    expect(b.calls).toBe(0);
  });

  it("the last candidate's owned failure rejects source", async () => {
    const alone = requester('a');
    const solo = start(alone).fill;
    const refused = new Error('a: 404');
    alone.reject(refused);
    expect(await rejection(solo.source)).toBe(refused);

    const a = requester('a');
    const b = requester('b');
    const { fill } = start(a);
    fill.join(b);
    const refusedA = new Error('a: 401');
    a.reject(refusedA);
    await flush();
    const refusedB = new Error('b: 403');
    b.reject(refusedB);
    expect(await rejection(fill.source)).toBe(refusedB);
    expect(await rejection(fill.firstStake.own)).toBe(refusedA);
  });

  it("leave() of a queued candidate's only reader removes it: its fetch is never called", async () => {
    const a = requester('a');
    const b = requester('b');
    const c = requester('c');
    const { fill } = start(a);
    const stakeB = fill.join(b);
    fill.join(c);
    stakeB.leave();
    a.reject(new Error('a: 401'));
    await flush();
    expect(b.calls).toBe(0);
    expect(c.calls).toBe(1);
    c.resolve(source('from c'));
    await expect(fill.source).resolves.toEqual(source('from c'));
  });

  it('leave() as the last candidate was dropped: the owned failure of the one before rejects source', async () => {
    const a = requester('a');
    const b = requester('b');
    const { fill } = start(a);
    const stakeB = fill.join(b);
    stakeB.leave();
    stakeB.leave(); // twice: counted once
    const refused = new Error('a: 401');
    a.reject(refused);
    expect(await rejection(fill.source)).toBe(refused);
    expect(b.calls).toBe(0);
  });

  it('a candidate stays queued while one of its readers remains', async () => {
    const a = requester('a');
    const b = requester('b');
    const b2 = requester('b');
    const { fill } = start(a);
    const first = fill.join(b);
    const second = fill.join(b2);
    first.leave();
    first.leave(); // a second leave of the same stake must not count as the other reader's
    a.reject(new Error('a: 401'));
    await flush();
    expect(b.calls).toBe(1);
    expect(await outcome(second.own)).toBe('pending');
  });

  it('leave() of the running candidate keeps it in line: its owned failure moves on to the next', async () => {
    const a = requester('a');
    const b = requester('b');
    const { fill } = start(a);
    fill.join(b);
    fill.firstStake.leave();
    a.reject(new Error('a: 401'));
    await flush();
    expect(b.calls).toBe(1);
    const wanted = source('from b');
    b.resolve(wanted);
    await expect(fill.source).resolves.toBe(wanted);
  });

  it('leave() of the running candidate does not stop it', async () => {
    const a = requester('a');
    const b = requester('b');
    const { fill } = start(a);
    fill.join(b);
    fill.firstStake.leave();
    const wanted = source('from a');
    a.resolve(wanted);
    await expect(fill.source).resolves.toBe(wanted);
    expect(b.calls).toBe(0);
  });
});

describe('asRequester', () => {
  it('wraps a bare fetch as one shared requester: one key, failures owned by nobody', async () => {
    const fetch: FetchBlob = () => Promise.reject(new Error('x'));
    const wrapped = asRequester(fetch);
    expect(wrapped.fetch).toBe(fetch);
    expect(wrapped.key).toBe('');
    expect(wrapped.ownsFailure(new Error('401'))).toBe(false);
    expect(asRequester(() => Promise.reject(new Error('y'))).key).toBe(wrapped.key);
  });

  it('returns a requester unchanged', () => {
    const own = requester('k');
    expect(asRequester(own)).toBe(own);
  });

  it('in a fill: a second bare fetch shares the first, whose failure fails source for both', async () => {
    let firstCalls = 0;
    let secondCalls = 0;
    const deferred = Promise.withResolvers<FillSource>();
    const fill = new FillStart(
      asRequester(() => {
        firstCalls += 1;
        return deferred.promise;
      }),
      new AbortController().signal,
    );
    fill.source.catch(() => undefined);
    const joined = fill.join(
      asRequester(() => {
        secondCalls += 1;
        return Promise.resolve(source('second'));
      }),
    );
    const refused = new Error('401 for the first');
    deferred.reject(refused);
    expect(await rejection(fill.source)).toBe(refused);
    expect(firstCalls).toBe(1);
    expect(secondCalls).toBe(0);
    expect(await outcome(joined.own)).toBe('pending');
  });
});

describe('FillStart: live readers raise background downloads', () => {
  /** A requester of `priority` that counts the raises it got. */
  function ranked(key: string, priority: 'live' | 'background', owns?: (error: unknown) => boolean): Scripted & { raised: number } {
    const scripted = Object.assign(requester(key, owns), { priority, raised: 0 });
    return Object.assign(scripted, { raise: () => void (scripted.raised += 1) });
  }

  it('raises the running background fetch when a live reader joins, not for a background one', async () => {
    const preload = ranked('p', 'background');
    const { fill } = start(preload);
    fill.join(ranked('other-preload', 'background'));
    expect(preload.raised).toBe(0);
    // A reader without a priority (a plain HTTP pull) is live.
    fill.join(requester('pull'));
    expect(preload.raised).toBe(1);
    expect(preload.calls).toBe(1);
  });

  it('raises the download under way too: its bytes are live from then on', async () => {
    const preload = ranked('p', 'background');
    const { fill } = start(preload);
    preload.resolve(source('p'));
    expect(await outcome(fill.source)).toBe('fulfilled');
    fill.join(ranked('pull', 'live'));
    expect(preload.raised).toBe(1);
  });

  it('raises the next background requester when a live reader waits behind one that failed', async () => {
    const first = ranked('a', 'background');
    const second = ranked('b', 'background');
    const { fill } = start(first);
    fill.join(second);
    fill.join(ranked('pull', 'live'));
    expect(first.raised).toBe(1);
    first.reject(new Error('401 for a'));
    await flush();
    expect(second.calls).toBe(1);
    expect(second.raised).toBe(1);
  });

  it('raises nothing once the fill failed for all', async () => {
    const preload = ranked('p', 'background', () => false);
    const { fill } = start(preload);
    preload.reject(new Error('upstream down'));
    expect(await outcome(fill.source)).toBe('rejected');
    fill.join(ranked('pull', 'live'));
    expect(preload.raised).toBe(0);
  });
});
