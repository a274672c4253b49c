/** A satisfiable single byte range, end exclusive. */
export interface ByteRange {
  readonly start: number;
  readonly end: number;
}

export type RangeDecision = { readonly kind: 'full' } | { readonly kind: 'partial'; readonly range: ByteRange } | { readonly kind: 'unsatisfiable' };

const SINGLE = /^bytes=([0-9]{0,15})-([0-9]{0,15})$/;

/** The strong entity tag of content named by `digest` (its ETag header). */
export function etagOf(digest: string): string {
  return `"${digest}"`;
}

/**
 * Whether a Range header may be honoured under `If-Range` (RFC 9110 13.1.5): only when the
 * validator is the content's own strong ETag. A date cannot match (no Last-Modified is sent), nor a
 * weak or another tag: the client then gets the whole content.
 */
export function rangeAllowed(ifRange: string | string[] | undefined, etag: string): boolean {
  if (ifRange === undefined) return true;
  // Sent twice: no single validator to compare.
  return typeof ifRange === 'string' && ifRange.trim() === etag;
}

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
