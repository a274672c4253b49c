import { describe, expect, it } from 'vitest';
import { type RangeDecision, decideRange, etagOf, rangeAllowed } from './range.ts';

const FULL: RangeDecision = { kind: 'full' };
const UNSATISFIABLE: RangeDecision = { kind: 'unsatisfiable' };

function partial(start: number, end: number): RangeDecision {
  return { kind: 'partial', range: { start, end } };
}

describe('decideRange', () => {
  it.each<[string | undefined, number, RangeDecision]>([
    // No header.
    [undefined, 100, FULL],
    [undefined, 0, FULL],
    // bytes=N-
    ['bytes=0-', 100, partial(0, 100)],
    ['bytes=10-', 100, partial(10, 100)],
    ['bytes=99-', 100, partial(99, 100)],
    ['bytes=007-', 100, partial(7, 100)],
    // bytes=N-M (M inclusive; end exclusive)
    ['bytes=0-0', 100, partial(0, 1)],
    ['bytes=10-19', 100, partial(10, 20)],
    ['bytes=0-99', 100, partial(0, 100)],
    ['bytes=99-99', 100, partial(99, 100)],
    [' bytes=5-9 ', 100, partial(5, 10)],
    // M beyond the size clamps to the last byte.
    ['bytes=0-100', 100, partial(0, 100)],
    ['bytes=10-1000', 100, partial(10, 100)],
    ['bytes=99-100000', 100, partial(99, 100)],
    // bytes=-N (suffix)
    ['bytes=-1', 100, partial(99, 100)],
    ['bytes=-10', 100, partial(90, 100)],
    ['bytes=-100', 100, partial(0, 100)],
    ['bytes=-1000', 100, partial(0, 100)],
    ['bytes=-0', 100, UNSATISFIABLE],
    // Start at or past the end.
    ['bytes=100-', 100, UNSATISFIABLE],
    ['bytes=100-200', 100, UNSATISFIABLE],
    ['bytes=1000-', 100, UNSATISFIABLE],
    // Empty blob: no byte can be selected.
    ['bytes=0-', 0, UNSATISFIABLE],
    ['bytes=0-0', 0, UNSATISFIABLE],
    ['bytes=-5', 0, UNSATISFIABLE],
    ['bytes=-0', 0, UNSATISFIABLE],
    // Multi-range: ignored, answered in full.
    ['bytes=0-1,5-6', 100, FULL],
    ['bytes=0-1, 5-6', 100, FULL],
    ['bytes=-5,0-', 100, FULL],
    // Malformed: ignored.
    ['', 100, FULL],
    ['bytes=', 100, FULL],
    ['bytes=-', 100, FULL],
    ['bytes', 100, FULL],
    ['bytes 0-1', 100, FULL],
    ['bytes = 0-1', 100, FULL],
    ['bytes=a-b', 100, FULL],
    ['bytes=1-2-3', 100, FULL],
    ['bytes=1.5-2', 100, FULL],
    ['bytes=+1-2', 100, FULL],
    ['bytes=0x10-', 100, FULL],
    ['items=0-1', 100, FULL],
    ['BYTES=0-1', 100, FULL],
    // Reversed: ignored (RFC 9110 calls it invalid, not unsatisfiable).
    ['bytes=20-10', 100, FULL],
    ['bytes=1-0', 100, FULL],
    ['bytes=200-100', 100, FULL],
    // Huge numbers: up to 15 digits are exact; longer ones are ignored rather than rounded.
    ['bytes=0-999999999999999', 100, partial(0, 100)],
    ['bytes=999999999999999-', 100, UNSATISFIABLE],
    ['bytes=-999999999999999', 100, partial(0, 100)],
    ['bytes=0-9999999999999999', 100, FULL],
    ['bytes=9999999999999999-', 100, FULL],
    ['bytes=-99999999999999999999', 100, FULL],
    ['bytes=0-18446744073709551615', 100, FULL],
  ])('%j of %d bytes', (header, size, expected) => {
    expect(decideRange(header, size)).toEqual(expected);
  });

  it('handles positions beyond 32 bits exactly', () => {
    const size = 2 ** 40;
    expect(decideRange(`bytes=${size - 1}-`, size)).toEqual(partial(size - 1, size));
    expect(decideRange('bytes=-1', size)).toEqual(partial(size - 1, size));
    expect(decideRange(`bytes=4294967296-4294967299`, size)).toEqual(partial(2 ** 32, 2 ** 32 + 4));
  });

  it('never produces an empty or out-of-bounds range', () => {
    for (const size of [0, 1, 2, 7]) {
      for (const header of ['bytes=0-', 'bytes=1-', 'bytes=0-0', 'bytes=3-5', 'bytes=-1', 'bytes=-3', 'bytes=6-100']) {
        const decision = decideRange(header, size);
        if (decision.kind !== 'partial') continue;
        expect(decision.range.start).toBeGreaterThanOrEqual(0);
        expect(decision.range.end).toBeGreaterThan(decision.range.start);
        expect(decision.range.end).toBeLessThanOrEqual(size);
      }
    }
  });
});

describe('rangeAllowed (If-Range)', () => {
  const digest = `sha256:${'a'.repeat(64)}`;
  const etag = etagOf(digest);

  it.each<[string | string[] | undefined, boolean]>([
    [undefined, true],
    [etag, true],
    [` ${etag} `, true],
    // Another tag, a weak one, the digest unquoted, a date (no Last-Modified is sent): the whole content.
    ['"x"', false],
    [`W/${etag}`, false],
    [digest, false],
    ['Sat, 05 Dec 2026 08:00:00 GMT', false],
    ['', false],
    [[etag, etag], false],
  ])('If-Range %j: %s', (ifRange, allowed) => {
    expect(rangeAllowed(ifRange, etag)).toBe(allowed);
  });
});
