import { describe, expect, it } from 'vitest';
import { ManualClock, flush } from '../../test/fixtures/manual-clock.ts';
import { ByteRate } from '../admission/byte-rate.ts';
import { Lane } from '../admission/priority.ts';
import type { FillBody } from '../cache/fill.ts';
import { throttled } from './throttled-body.ts';

/** A body of `chunks` chunks of `size` bytes that counts how many were pulled and whether it was destroyed. */
function countingBody(chunks: number, size: number): FillBody & { pulled: number; destroyed: Error | undefined } {
  const body = {
    pulled: 0,
    destroyed: undefined as Error | undefined,
    async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array> {
      for (let i = 0; i < chunks; i += 1) {
        body.pulled += 1;
        yield new Uint8Array(size).fill(i);
      }
    },
    destroy(error?: Error) {
      body.destroyed = error;
    },
  };
  return body;
}

describe('throttled', () => {
  it('is the body itself when no rate applies', () => {
    const body = countingBody(1, 1);
    expect(throttled(body, [], new Lane())).toBe(body);
  });

  it('passes every chunk in order once each rate let its bytes through, reading nothing ahead', async () => {
    const clock = new ManualClock();
    // 1,000 B/s, a bucket of 100 B: the first chunk passes at once, each next one 100 ms later.
    const [mirror, tunnel] = [new ByteRate(1_000, { clock, burstBytes: 100 }), new ByteRate(1_000, { clock, burstBytes: 100 })];
    const body = countingBody(3, 100);
    const iterator = throttled(body, [mirror, tunnel], new Lane())[Symbol.asyncIterator]();
    expect((await iterator.next()).value?.[0]).toBe(0);
    const second = iterator.next();
    await flush();
    // The second chunk waits for its bytes; the third was not pulled from upstream meanwhile.
    expect(body.pulled).toBe(2);
    expect(mirror.waiting).toBe(1);
    clock.to(100);
    await flush();
    // The mirror's bytes are there; the tunnel's too (both filled at the same pace).
    expect((await second).value?.[0]).toBe(1);
    expect(body.pulled).toBe(2);
    const third = iterator.next();
    clock.to(200);
    expect((await third).value?.[0]).toBe(2);
    expect((await iterator.next()).done).toBe(true);
  });

  it('ends a wait at once when destroyed, and destroys the upstream body', async () => {
    const clock = new ManualClock();
    const rate = new ByteRate(1_000, { clock, burstBytes: 100 });
    const body = countingBody(3, 100);
    const wrapped = throttled(body, [rate], new Lane('background'));
    const iterator = wrapped[Symbol.asyncIterator]();
    await iterator.next();
    const waiting = iterator.next();
    await flush();
    expect(rate.waiting).toBe(1);
    const stop = new Error('abandoned');
    wrapped.destroy?.(stop);
    await expect(waiting).rejects.toBe(stop);
    expect(body.destroyed).toBe(stop);
    expect(rate.waiting).toBe(0);
  });

  it('reads the lane per chunk: a download raised to live takes live bytes from then on', async () => {
    const clock = new ManualClock();
    const rate = new ByteRate(1_000, { clock, burstBytes: 100 });
    const lane = new Lane('background');
    const other = new Lane('background');
    const iterator = throttled(countingBody(2, 100), [rate], lane)[Symbol.asyncIterator]();
    await iterator.next();
    const waiting = iterator.next();
    await flush();
    // Another background transfer waits behind it.
    let otherPassed = false;
    void rate.take(100, other).then(() => (otherPassed = true));
    // A live transfer arrives: it goes first; the raised chunk moves to the live queue behind it.
    let live = false;
    void rate.take(100).then(() => (live = true));
    lane.raise();
    let chunk = false;
    void waiting.then(() => (chunk = true));
    clock.to(100);
    await flush();
    expect([live, chunk, otherPassed]).toEqual([true, false, false]);
    clock.to(200);
    await flush();
    expect([chunk, otherPassed]).toEqual([true, false]);
    expect((await waiting).value?.[0]).toBe(1);
    clock.to(300);
    await flush();
    expect(otherPassed).toBe(true);
  });
});
