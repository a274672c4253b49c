import { kindOf } from './kind.ts';
import { scaleDecimal, toSafeInteger } from './decimal.ts';

const UNITS: Readonly<Record<string, bigint>> = {
  b: 1n,
  kb: 1000n,
  mb: 1000n ** 2n,
  gb: 1000n ** 3n,
  tb: 1000n ** 4n,
  kib: 1024n,
  mib: 1024n ** 2n,
  gib: 1024n ** 3n,
  tib: 1024n ** 4n,
};

const SIZE = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i;
const HINT = 'expected bytes or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "20GiB"';

/**
 * Parses a size: a non-negative integer number of bytes, or a string such as "20GiB", "1.5GiB", "10 MB", "4096".
 * Binary suffixes are powers of 1024, decimal ones powers of 1000; the result is rounded down to whole bytes.
 */
export function parseSize(value: unknown): number {
  if (typeof value === 'number') return parseByteCount(value);
  if (typeof value !== 'string') throw new Error(`expected a size (integer or string), got ${kindOf(value)}`);
  const match = SIZE.exec(value.trim());
  const unit = match ? UNITS[(match[2] || 'b').toLowerCase()] : undefined;
  if (!match || unit === undefined) throw new Error(`invalid size ${JSON.stringify(value)}: ${HINT}`);
  return toSafeInteger(scaleDecimal(match[1] ?? '0', unit), `size ${JSON.stringify(value)}`);
}

function parseByteCount(value: number): number {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new Error(`invalid size ${value}: a number must be a non-negative whole number of bytes`);
  }
  return value;
}
