import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { MemoryBudgetError } from './errors.ts';
import { countingBudget } from '../../test/fixtures/body-budget.ts';
import { readBody } from './held-body.ts';

const budget = countingBudget;

describe('readBody', () => {
  const tooLarge = (): Error => new Error('too large');
  const readError = (error: unknown): Error => new Error(`read failed: ${(error as Error).message}`);

  function stream(chunks: Buffer[], failAfter?: Error): Readable {
    return Readable.from(
      (async function* () {
        yield* chunks;
        if (failAfter) throw failAfter;
      })(),
    );
  }

  it('holds the announced size while reading and then exactly what was read', async () => {
    const { budget: b, states } = budget({ bytes: 1_000 });
    const body = await readBody(b, stream([Buffer.from('hello '), Buffer.from('world')]), { announced: 11, limit: 100, tooLarge, readError });
    expect(body.bytes.toString()).toBe('hello world');
    expect(body.length).toBe(11);
    expect(states.some((s) => s.held === 11)).toBe(true);
    expect(b.state().held).toBe(11);
    body.release();
    body.release();
    expect(b.state().held).toBe(0);
    expect(() => body.bytes).toThrow(/released/);
  });

  it('holds the limit while reading a body of unknown length, then shrinks to it', async () => {
    const { budget: b, states } = budget({ bytes: 1_000 });
    const body = await readBody(b, stream([Buffer.alloc(30)]), { limit: 500, tooLarge, readError });
    expect(states.some((s) => s.held === 500)).toBe(true);
    expect(b.state().held).toBe(30);
    body.release();
  });

  it('refuses an announced size over the limit without holding or reading anything', async () => {
    const { budget: b, states } = budget({ bytes: 1_000 });
    const source = stream([Buffer.alloc(10)]);
    await expect(readBody(b, source, { announced: 101, limit: 100, tooLarge, readError })).rejects.toThrow('too large');
    expect(source.destroyed).toBe(true);
    expect(states).toEqual([]);
  });

  it.each([
    ['a body longer than the limit', [Buffer.alloc(60), Buffer.alloc(60)], undefined, undefined, 'too large'],
    ['a body longer than announced', [Buffer.alloc(20), Buffer.alloc(20)], 30, undefined, 'too large'],
    ['a body that breaks off', [Buffer.alloc(20)], undefined, new Error('socket hang up'), 'read failed: socket hang up'],
  ])('gives everything back on %s', async (_label, chunks, announced, failAfter, message) => {
    const { budget: b } = budget({ bytes: 1_000 });
    const source = stream(chunks, failAfter);
    await expect(readBody(b, source, { announced, limit: 100, tooLarge, readError })).rejects.toThrow(message);
    expect(b.state()).toEqual({ held: 0, waiting: 0 });
    expect(source.destroyed).toBe(true);
  });

  it('destroys the body unread when the budget refuses', async () => {
    const { budget: b } = budget({ bytes: 100, waiters: 0 });
    const held = await b.acquire(100);
    const source = stream([Buffer.alloc(10)]);
    await expect(readBody(b, source, { announced: 10, limit: 100, tooLarge, readError })).rejects.toBeInstanceOf(MemoryBudgetError);
    expect(source.destroyed).toBe(true);
    held.release();
  });
});
