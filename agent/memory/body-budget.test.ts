import { describe, expect, it } from 'vitest';
import { MemoryBudgetError } from './errors.ts';
import { countingBudget } from '../../test/fixtures/body-budget.ts';

const budget = countingBudget;

/** Whether a promise has settled, without waiting for it beyond the current microtasks. */
async function settled(promise: Promise<unknown>): Promise<boolean> {
  let done = false;
  promise.then(
    () => (done = true),
    () => (done = true),
  );
  await new Promise<void>((resolve) => setImmediate(resolve));
  return done;
}

describe('BodyBudget', () => {
  it('grants at once what fits, and counts it until released (releasing twice counts once)', async () => {
    const { budget: b, states } = budget();
    const first = await b.acquire(60);
    const second = await b.acquire(40);
    expect(b.state()).toEqual({ held: 100, waiting: 0 });
    first.release();
    first.release();
    expect(b.state()).toEqual({ held: 40, waiting: 0 });
    second.release();
    expect(b.state()).toEqual({ held: 0, waiting: 0 });
    expect(states.at(-1)).toEqual({ held: 0, waiting: 0 });
  });

  it('makes requests wait in order: a small one does not overtake a large one', async () => {
    const { budget: b } = budget();
    const held = await b.acquire(90);
    const large = b.acquire(50);
    const small = b.acquire(5);
    expect(b.state()).toEqual({ held: 90, waiting: 2 });
    expect(await settled(small)).toBe(false);
    held.release();
    const [l, s] = await Promise.all([large, small]);
    expect(b.state()).toEqual({ held: 55, waiting: 0 });
    l.release();
    s.release();
    expect(b.state().held).toBe(0);
  });

  it('gives back what a hold does not need (shrink), and lets the next in line in', async () => {
    const { budget: b } = budget();
    const hold = await b.acquire(100);
    const next = b.acquire(70);
    hold.shrink(30);
    expect(hold.bytes).toBe(30);
    (await next).release();
    // Never grows, and a released hold stays at zero.
    hold.shrink(80);
    expect(hold.bytes).toBe(30);
    hold.release();
    hold.shrink(10);
    expect(b.state()).toEqual({ held: 0, waiting: 0 });
  });

  it('grants a request larger than the whole budget alone', async () => {
    const { budget: b } = budget();
    const small = await b.acquire(10);
    const huge = b.acquire(500);
    expect(await settled(huge)).toBe(false);
    small.release();
    const hold = await huge;
    expect(b.state().held).toBe(500);
    hold.release();
  });

  it('refuses a request when the waiting queue is full', async () => {
    const { budget: b, refusals } = budget({ waiters: 2 });
    const held = await b.acquire(100);
    const waiting = [b.acquire(1), b.acquire(1)];
    const error = await b.acquire(1).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MemoryBudgetError);
    expect(error).toMatchObject({ reason: 'queue_full', held: 100, waiting: 2 });
    expect(refusals).toEqual(['queue_full']);
    held.release();
    for (const hold of await Promise.all(waiting)) hold.release();
    expect(b.state()).toEqual({ held: 0, waiting: 0 });
  });

  it('refuses a request that waited longer than waitMs, and lets those behind it move up', async () => {
    const { budget: b, refusals } = budget({ waitMs: 20 });
    const held = await b.acquire(60);
    const big = b.acquire(50);
    const error = await big.catch((e: unknown) => e);
    expect(error).toMatchObject({ name: 'MemoryBudgetError', reason: 'wait_timeout' });
    expect(refusals).toEqual(['wait_timeout']);
    expect(b.state()).toEqual({ held: 60, waiting: 0 });
    held.release();
  });

  it('drops a waiter whose signal aborts (its client left), with the signal reason, and moves the queue on', async () => {
    const { budget: b } = budget();
    const held = await b.acquire(80);
    const gone = new AbortController();
    const leaving = b.acquire(50, gone.signal);
    const behind = b.acquire(20);
    gone.abort(new Error('client gone'));
    await expect(leaving).rejects.toThrow('client gone');
    // The one behind fits now that the one ahead left.
    (await behind).release();
    held.release();
    expect(b.state()).toEqual({ held: 0, waiting: 0 });
    await expect(b.acquire(1, gone.signal)).rejects.toThrow('client gone');
    expect(b.state()).toEqual({ held: 0, waiting: 0 });
  });
});
