import { describe, expect, it } from 'vitest';
import { parseDuration } from './duration.ts';

const HINT = 'expected a duration such as "90s", "15m", "1h30m", "500ms" or "7d" (units ms, s, m, h, d)';

describe('parseDuration', () => {
  it.each([
    [0, 0],
    ['0', 0],
    ['0s', 0],
    ['500ms', 500],
    ['90s', 90_000],
    ['15m', 900_000],
    ['24h', 86_400_000],
    ['1h30m', 5_400_000],
    ['1.5h', 5_400_000],
    ['0.1s', 100],
    ['7d', 604_800_000],
    ['1d2h3m4s5ms', 93_784_005],
    [' 90s ', 90_000],
  ])('%j → %d ms', (input, expected) => {
    expect(parseDuration(input)).toBe(expected);
  });

  it.each([
    [90, `${HINT}, got integer`],
    [1.5, `${HINT}, got float`],
    [true, `${HINT}, got boolean`],
    [null, `${HINT}, got null`],
    ['90', `invalid duration "90": ${HINT}`],
    ['', `invalid duration "": ${HINT}`],
    ['h', `invalid duration "h": ${HINT}`],
    ['1 h', `invalid duration "1 h": ${HINT}`],
    ['1H', `invalid duration "1H": ${HINT}`],
    ['-5m', 'invalid duration "-5m": must not be negative'],
    ['5w', `invalid duration "5w": unknown unit "w"; ${HINT}`],
    ['10us', `invalid duration "10us": unknown unit "us"; ${HINT}`],
    ['1h30', `invalid duration "1h30": ${HINT}`],
    ['999999999999d', 'duration "999999999999d" is too large'],
  ])('%j is rejected', (input, message) => {
    expect(() => parseDuration(input)).toThrow(new Error(message));
  });
});
