/** A satisfiable single byte range, end exclusive. */
export interface ByteRange {
  readonly start: number;
  readonly end: number;
}

export type RangeDecision = { readonly kind: 'full' } | { readonly kind: 'partial'; readonly range: ByteRange } | { readonly kind: 'unsatisfiable' };

const SINGLE = /^bytes=([0-9]{0,15})-([0-9]{0,15})$/;

/**
 * Interprets a Range header against a blob size. Supports `bytes=N-`, `bytes=N-M` and the
 * suffix form `bytes=-N`. Multi-range and malformed headers are ignored (a full 200 answer is
 * allowed by RFC 9110); a well-formed range that cannot be satisfied is a 416.
 */
export function decideRange(header: string | undefined, size: number): RangeDecision {
  if (header === undefined) return { kind: 'full' };
  const match = SINGLE.exec(header.trim());
  if (!match) return { kind: 'full' };
  const [, first = '', last = ''] = match;
  if (first === '' && last === '') return { kind: 'full' };
  if (first === '') {
    const suffix = Number(last);
    if (suffix === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'partial', range: { start: Math.max(0, size - suffix), end: size } };
  }
  const start = Number(first);
  if (last !== '' && Number(last) < start) return { kind: 'full' };
  if (start >= size) return { kind: 'unsatisfiable' };
  const end = last === '' ? size : Math.min(Number(last) + 1, size);
  return { kind: 'partial', range: { start, end } };
}
