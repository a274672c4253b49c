import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { digestFromHex, digestHex, isDigest, parseDigest } from './digest.ts';
import { toOciError } from '../http/errors.ts';
import { InvalidRequestError, OciError } from './errors.ts';

const HEX = createHash('sha256').update('hello').digest('hex');
const DIGEST = `sha256:${HEX}`;
const INVALID = 'invalid digest: expected sha256:<64 lower-case hex characters>';

function rejection(value: string): OciError {
  try {
    parseDigest(value);
  } catch (error) {
    // What the client gets: the HTTP surface translates the parser's error.
    if (error instanceof InvalidRequestError) return toOciError(error);
    throw error;
  }
  throw new Error(`expected ${JSON.stringify(value)} to be rejected`);
}

describe('isDigest', () => {
  it.each<[string, boolean]>([
    [DIGEST, true],
    [`sha256:${'0'.repeat(64)}`, true],
    [`sha256:${HEX.toUpperCase()}`, false],
    [`SHA256:${HEX}`, false],
    [`sha256:${HEX.slice(1)}`, false],
    [`sha256:${HEX}0`, false],
    [`sha256:${HEX}\n`, false],
    [` sha256:${HEX}`, false],
    [`sha512:${'a'.repeat(128)}`, false],
    [HEX, false],
    ['sha256:', false],
    ['', false],
  ])('%j → %s', (value, expected) => {
    expect(isDigest(value)).toBe(expected);
  });
});

describe('parseDigest', () => {
  it('returns a valid sha256 digest unchanged', () => {
    expect(parseDigest(DIGEST)).toBe(DIGEST);
  });

  it.each<[string, string]>([
    [`sha256:${HEX.toUpperCase()}`, 'digest hex must be lower-case'],
    [`sha256:${'aB'.repeat(32)}`, 'digest hex must be lower-case'],
    [`sha512:${'a'.repeat(128)}`, 'unsupported digest algorithm "sha512": only sha256 is supported'],
    ['md5:d41d8cd98f00b204e9800998ecf8427e', 'unsupported digest algorithm "md5": only sha256 is supported'],
    ['multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8', 'unsupported digest algorithm "multihash+base58": only sha256 is supported'],
    [`sha256:${HEX.slice(1)}`, INVALID],
    [`sha256:${HEX}0`, INVALID],
    [`sha256:${'g'.repeat(64)}`, INVALID],
    [`SHA256:${HEX}`, INVALID],
    [`sha256:${HEX}\n`, INVALID],
    [HEX, INVALID],
    ['sha256', INVALID],
    ['sha256:', INVALID],
    [':abc', INVALID],
    ['', INVALID],
  ])('rejects %j: %s', (value, message) => {
    const error = rejection(value);
    expect(error.code).toBe('DIGEST_INVALID');
    expect(error.status).toBe(400);
    expect(error.message).toBe(message);
  });

  it('bounds the digest echoed in the detail', () => {
    const long = `sha256:${'z'.repeat(500)}`;
    expect(rejection(long).detail).toEqual({ digest: long.slice(0, 100) });
  });

  it('renders the OCI error body', () => {
    expect(rejection('nope').toJSON()).toEqual({ errors: [{ code: 'DIGEST_INVALID', message: INVALID, detail: { digest: 'nope' } }] });
  });
});

describe('digestHex / digestFromHex', () => {
  it('round-trips', () => {
    const digest = parseDigest(DIGEST);
    expect(digestHex(digest)).toBe(HEX);
    expect(digestFromHex(HEX)).toBe(DIGEST);
  });

  it.each(['', 'xyz', HEX.toUpperCase(), `${HEX}0`, `../${HEX.slice(3)}`])('digestFromHex(%j) throws DIGEST_INVALID', (hex) => {
    expect(() => digestFromHex(hex)).toThrow(InvalidRequestError);
    try {
      digestFromHex(hex);
    } catch (error) {
      expect(toOciError(error).code).toBe('DIGEST_INVALID');
    }
  });
});
