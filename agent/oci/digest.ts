import { createHash } from 'node:crypto';
import { InvalidRequestError } from './errors.ts';

/** A validated `sha256:<64 lowercase hex>` digest. */
export type Digest = string & { readonly __digest: unique symbol };

const SHA256 = /^sha256:[a-f0-9]{64}$/;
const ANY_DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export function isDigest(value: string): value is Digest {
  return SHA256.test(value);
}

/** Validates a digest string; the only algorithm this mirror stores is sha256. */
export function parseDigest(value: string): Digest {
  if (isDigest(value)) return value;
  if (/^sha256:[a-fA-F0-9]{64}$/.test(value)) {
    throw new InvalidRequestError('digest', 'digest hex must be lower-case', { detail: { digest: value } });
  }
  if (ANY_DIGEST.test(value) && !value.startsWith('sha256:')) {
    throw new InvalidRequestError('digest', `unsupported digest algorithm "${value.slice(0, value.indexOf(':'))}": only sha256 is supported`, {
      detail: { digest: value.slice(0, 100) },
    });
  }
  throw new InvalidRequestError('digest', 'invalid digest: expected sha256:<64 lower-case hex characters>', {
    detail: { digest: value.slice(0, 100) },
  });
}

/** The hex part, used as a file name. */
export function digestHex(digest: Digest): string {
  return digest.slice('sha256:'.length);
}

export function digestFromHex(hex: string): Digest {
  return parseDigest(`sha256:${hex}`);
}

/** The sha256 digest of `content`. */
export function sha256Of(content: Uint8Array | string): Digest {
  return `sha256:${createHash('sha256').update(content).digest('hex')}` as Digest;
}
