import { InvalidRequestError } from './errors.ts';
import { type Digest, parseDigest } from './digest.ts';

/** A repository name validated against the OCI distribution grammar. */
export type RepositoryName = string & { readonly __repository: unique symbol };

export type Reference = { readonly kind: 'tag'; readonly tag: string } | { readonly kind: 'digest'; readonly digest: Digest };

const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
/** distribution's limit for a repository name. */
export const NAME_MAX_LENGTH = 255;

export function parseRepositoryName(value: string): RepositoryName {
  if (value.length === 0 || value.length > NAME_MAX_LENGTH) {
    throw new InvalidRequestError('name', `repository name must be 1 to ${NAME_MAX_LENGTH} characters`, {
      detail: { length: value.length },
    });
  }
  if (!NAME.test(value)) {
    throw new InvalidRequestError('name', 'invalid repository name', { detail: { name: value.slice(0, 256) } });
  }
  return value as RepositoryName;
}

export function parseReference(value: string): Reference {
  if (value.includes(':')) return { kind: 'digest', digest: parseDigest(value) };
  if (!TAG.test(value)) {
    throw new InvalidRequestError('tag', 'invalid tag: expected [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}', {
      detail: { tag: value.slice(0, 256) },
    });
  }
  return { kind: 'tag', tag: value };
}

/** Joins an optional upstream prefix with a repository name: `app` → `<prefix>/app`. */
export function upstreamRepository(prefix: string, name: RepositoryName): string {
  return prefix === '' ? name : `${prefix}/${name}`;
}
