import { describe, expect, it } from 'vitest';
import { ManualClock } from '../../test/fixtures/manual-clock.ts';
import { BURST_SECONDS, ByteRate, type RateClock, SYSTEM_CLOCK } from './byte-rate.ts';
import { Lane, type Priority } from './priority.ts';

const MiB = 1024 * 1024;
const KiB = 1024;

/** A transfer that takes `total` bytes in `chunk`-sized pieces as fast as the rate lets it. */
function transfer(rate: ByteRate, total: number, chunk: number, lane: Lane): { passed: () => number; done: Promise<void> } {
  let passed = 0;
  const done = (async () => {
    while (passed < total) {
      const bytes = Math.min(chunk, total - passed);
      if (!rate.tryTake(bytes, lane.priority)) await rate.take(bytes, lane);
      passed += bytes;
    }
  })();
  return { passed: () => passed, done };
}

describe('ByteRate', () => {
  it('starts with a quarter second of burst, then holds the rate whatever the chunk size', async () => {
    for (const chunk of [16 * KiB, 64 * KiB, 300 * KiB]) {
      const clock = new ManualClock();
      const rate = new ByteRate(20 * MiB, { clock });
      expect(rate.burstBytes).toBe(20 * MiB * BURST_SECONDS);
      const run = transfer(rate, 40 * MiB, chunk, new Lane());
      let finished = false;
      void run.done.then(() => (finished = true));
      await clock.runUntil(() => finished);
      const seconds = clock.now() / 1000;
      // (40 MiB − 5 MiB of burst) at 20 MiB/s = 1.75 s; timers rounded up to whole milliseconds
      // cost nothing on average, because the bucket keeps what a late wake-up accrued.
      expect(seconds, `${chunk} B chunks`).toBeGreaterThanOrEqual(1.75);
      expect(seconds, `${chunk} B chunks`).toBeLessThan(1.75 * 1.01);
      expect(clock.pending).toBe(0);
    }
  });

  it('lets a chunk larger than the bucket through when it is full, and makes the next wait for the debt', async () => {
    const clock = new ManualClock();
    const rate = new ByteRate(1 * MiB, { clock, burstBytes: 64 * KiB });
    expect(rate.tryTake(1 * MiB)).toBe(true);
    expect(rate.tryTake(1)).toBe(false);
    let passed = false;
    void rate.take(64 * KiB).then(() => (passed = true));
    // 1 MiB − 64 KiB of debt, then the 64 KiB themselves: one second.
    await clock.advance(999);
    expect(passed).toBe(false);
    await clock.advance(1);
    expect(passed).toBe(true);
  });

  it('serves every live waiter before any background one, whenever they came', async () => {
    const clock = new ManualClock();
    const rate = new ByteRate(1 * MiB, { clock, burstBytes: 64 * KiB });
    expect(rate.tryTake(64 * KiB)).toBe(true);
    const order: string[] = [];
    const take = (name: string, priority: Priority): Promise<void> => rate.take(64 * KiB, new Lane(priority)).then(() => void order.push(name));
    const all = [take('b1', 'background'), take('b2', 'background'), take('l1', 'live'), take('l2', 'live')];
    // A background request finds others waiting: it does not pass, even with bytes in the bucket.
    await clock.advance(1_000);
    await Promise.all(all);
    expect(order).toEqual(['l1', 'l2', 'b1', 'b2']);
    expect(clock.pending).toBe(0);
  });

  it('gives background only what live transfers leave: nothing while a live transfer waits for the whole rate', async () => {
    const clock = new ManualClock();
    const rate = new ByteRate(4 * MiB, { clock });
    const background = transfer(rate, 8 * MiB, 64 * KiB, new Lane('background'));
    await clock.advance(100);
    const before = background.passed();
    const live = transfer(rate, 8 * MiB, 64 * KiB, new Lane('live'));
    let liveDone = false;
    void live.done.then(() => (liveDone = true));
    await clock.runUntil(() => liveDone);
    // At most the chunk that was already waiting when the live transfer came passed meanwhile.
    expect(background.passed() - before).toBeLessThanOrEqual(64 * KiB);
    // 8 MiB at 4 MiB/s: the live transfer had the whole rate (the bucket was empty when it came).
    expect(clock.now() - 100).toBeGreaterThanOrEqual(2_000 - 64 * KiB / (4 * MiB) * 1000);
    await clock.runUntil(() => background.passed() === 8 * MiB);
    await background.done;
  });

  it('moves a waiting background request ahead of the other background ones when its lane is raised', async () => {
    const clock = new ManualClock();
    const rate = new ByteRate(1 * MiB, { clock, burstBytes: 64 * KiB });
    expect(rate.tryTake(64 * KiB)).toBe(true);
    const order: string[] = [];
    const lanes = [new Lane('background'), new Lane('background'), new Lane('background')];
    const all = lanes.map((lane, i) => rate.take(64 * KiB, lane).then(() => void order.push(`b${i + 1}`)));
    lanes[2]!.raise();
    await clock.advance(1_000);
    await Promise.all(all);
    expect(order).toEqual(['b3', 'b1', 'b2']);
  });

  it('reports waits with the priority the bytes passed as', async () => {
    const clock = new ManualClock();
    const waits: Array<[Priority, number, number]> = [];
    const rate = new ByteRate(1 * MiB, { clock, burstBytes: 64 * KiB, events: { waited: (priority, bytes, seconds) => waits.push([priority, bytes, seconds]) } });
    expect(rate.tryTake(64 * KiB)).toBe(true);
    const lane = new Lane('background');
    const waiting = rate.take(32 * KiB, lane);
    await clock.advance(10);
    lane.raise();
    await clock.advance(40);
    await waiting;
    expect(waits).toEqual([['live', 32 * KiB, 0.032]]);
  });

  it('lets an aborted waiter leave without taking anything: the next one gets its bytes, and no timer stays', async () => {
    const clock = new ManualClock();
    const rate = new ByteRate(1 * MiB, { clock, burstBytes: 64 * KiB });
    expect(rate.tryTake(64 * KiB)).toBe(true);
    const gone = new AbortController();
    const first = rate.take(64 * KiB, new Lane(), gone.signal);
    let second = false;
    void rate.take(32 * KiB).then(() => (second = true));
    await clock.advance(10);
    const reason = new Error('reader gone');
    gone.abort(reason);
    await expect(first).rejects.toBe(reason);
    // The 32 KiB needed 31.25 ms from the start; the aborted 64 KiB are not charged.
    await clock.advance(22);
    expect(second).toBe(true);
    expect(rate.waiting).toBe(0);
    expect(clock.pending).toBe(0);
    // An already aborted signal refuses at once and queues nothing.
    await expect(rate.take(1, new Lane(), gone.signal)).rejects.toBe(reason);
    expect(rate.waiting).toBe(0);
  });

  it('arms its real timer unref\'d (it never keeps the process alive) and clears it once nobody waits', async () => {
    const keepingAlive = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    let armed = 0;
    const clock: RateClock = {
      now: SYSTEM_CLOCK.now,
      schedule: (run, ms) => {
        armed += 1;
        let live = true;
        const cancel = SYSTEM_CLOCK.schedule(() => {
          live = false;
          armed -= 1;
          run();
        }, ms);
        return () => {
          if (live) armed -= 1;
          live = false;
          cancel();
        };
      },
    };
    const rate = new ByteRate(64 * KiB, { clock });
    expect(rate.tryTake(rate.burstBytes)).toBe(true);
    const before = keepingAlive();
    const gone = new AbortController();
    const waiting = rate.take(1 * MiB, new Lane(), gone.signal);
    expect(armed).toBe(1);
    expect(keepingAlive()).toBe(before);
    gone.abort(new Error('stop'));
    await expect(waiting).rejects.toThrow('stop');
    expect(rate.waiting).toBe(0);
    expect(armed).toBe(0);
  });
});
