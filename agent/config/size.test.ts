import { describe, expect, it } from 'vitest';
import { parseSize } from './size.ts';

const GiB = 1024 ** 3;

describe('parseSize', () => {
  it.each([
    [0, 0],
    [4096, 4096],
    ['4096', 4096],
    ['0', 0],
    ['12B', 12],
    ['100KB', 100_000],
    ['10 MB', 10_000_000],
    ['2GB', 2_000_000_000],
    ['1TB', 1e12],
    ['1KiB', 1024],
    ['512MiB', 512 * 1024 ** 2],
    ['20GiB', 20 * GiB],
    ['1.5GiB', 1.5 * GiB],
    ['2TiB', 2 * 1024 ** 4],
    ['20gib', 20 * GiB],
    [' 20GiB ', 20 * GiB],
    ['0.29KB', 290],
    ['1.5B', 1],
    ['0.0001KiB', 0],
  ])('%j → %d bytes', (input, expected) => {
    expect(parseSize(input)).toBe(expected);
  });

  it.each([
    [-1, 'invalid size -1: a number must be a non-negative whole number of bytes'],
    [1.5, 'invalid size 1.5: a number must be a non-negative whole number of bytes'],
    [Number.MAX_SAFE_INTEGER + 1, 'invalid size 9007199254740992: a number must be a non-negative whole number of bytes'],
    [true, 'expected a size (integer or string), got boolean'],
    [[], 'expected a size (integer or string), got array'],
    ['', 'invalid size "": expected bytes or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "20GiB"'],
    ['20G', 'invalid size "20G": expected bytes or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "20GiB"'],
    ['-1GiB', 'invalid size "-1GiB": expected bytes or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "20GiB"'],
    ['GiB', 'invalid size "GiB": expected bytes or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "20GiB"'],
    ['1.GiB', 'invalid size "1.GiB": expected bytes or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "20GiB"'],
    ['1 000', 'invalid size "1 000": expected bytes or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "20GiB"'],
    ['9000000TiB', 'size "9000000TiB" is too large'],
  ])('%j is rejected', (input, message) => {
    expect(() => parseSize(input)).toThrow(new Error(message));
  });
});
