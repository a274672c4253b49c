import { kindOf } from './kind.ts';
import { scaleDecimal, toSafeInteger } from './decimal.ts';

const UNIT_MS: Readonly<Record<string, bigint>> = {
  ms: 1n,
  s: 1000n,
  m: 60_000n,
  h: 3_600_000n,
  d: 86_400_000n,
};

const WHOLE = /^(?:\d+(?:\.\d+)?[a-z]+)+$/;
const PART = /(\d+(?:\.\d+)?)([a-z]+)/g;
const HINT = 'expected a duration such as "90s", "15m", "1h30m", "500ms" or "7d" (units ms, s, m, h, d)';

/**
 * Parses a Go-style duration ("0s", "90s", "1h30m", "1.5h", "500ms", plus "7d" for days) into whole milliseconds.
 * A bare number is refused (is 90 seconds or milliseconds?), except 0 and "0".
 */
export function parseDuration(value: unknown): number {
  if (value === 0 || value === '0') return 0;
  if (typeof value !== 'string') throw new Error(`${HINT}, got ${kindOf(value)}`);
  const text = value.trim();
  if (text.startsWith('-')) throw new Error(`invalid duration ${JSON.stringify(value)}: must not be negative`);
  if (!WHOLE.test(text)) throw new Error(`invalid duration ${JSON.stringify(value)}: ${HINT}`);
  let total = 0n;
  for (const [, amount = '0', unit = ''] of text.matchAll(PART)) {
    const ms = UNIT_MS[unit];
    if (ms === undefined) throw new Error(`invalid duration ${JSON.stringify(value)}: unknown unit "${unit}"; ${HINT}`);
    total += scaleDecimal(amount, ms);
  }
  return toSafeInteger(total, `duration ${JSON.stringify(value)}`);
}
