/**
 * Multiplies a non-negative decimal literal ("1.5", "20") by an integer unit, exactly, rounding down.
 * BigInt arithmetic, because 0.29 * 1000 in floating point is 289.99999999999994.
 */
export function scaleDecimal(literal: string, unit: bigint): bigint {
  const [whole = '0', fraction = ''] = literal.split('.');
  const scale = 10n ** BigInt(fraction.length);
  return (BigInt(whole + fraction) * unit) / scale;
}

/** Converts to a number, or throws when the value is not exactly representable. */
export function toSafeInteger(value: bigint, what: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${what} is too large`);
  return Number(value);
}
