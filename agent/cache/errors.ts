/** Cache-domain errors. They know nothing about HTTP; the HTTP surface translates them. */

export class DigestMismatchError extends Error {
  override readonly name = 'DigestMismatchError';
  readonly expected: string;
  readonly actual: string;
  constructor(expected: string, actual: string) {
    super(`content does not match its digest: expected ${expected}, got ${actual}`);
    this.expected = expected;
    this.actual = actual;
  }
}

export class SizeMismatchError extends Error {
  override readonly name = 'SizeMismatchError';
  readonly expected: number;
  readonly actual: number;
  constructor(expected: number, actual: number) {
    super(`content length ${actual} does not match the announced ${expected} bytes`);
    this.expected = expected;
    this.actual = actual;
  }
}

/** A fill ended without a verified blob; joiners see this (or its cause) and must not complete a response. */
export class FillFailedError extends Error {
  override readonly name = 'FillFailedError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}
