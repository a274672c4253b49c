import { InvalidRequestError } from './errors.ts';
import { type Digest, parseDigest } from './digest.ts';
import { type Reference, type RepositoryName, parseReference, parseRepositoryName } from './reference.ts';

/** A pull request, parsed and validated before any logic runs. */
export type DistributionRequest =
  | { readonly kind: 'base'; readonly ns: string | undefined }
  | { readonly kind: 'manifest'; readonly ns: string | undefined; readonly name: RepositoryName; readonly reference: Reference }
  | { readonly kind: 'blob'; readonly ns: string | undefined; readonly name: RepositoryName; readonly digest: Digest };

export type ReadMethod = 'GET' | 'HEAD';

const ROUTE = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/;
/** containerd puts the registry host in `ns`; host[:port], or `_default`. */
const NS = /^(?:_default|(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::[0-9]{1,5})?|\[[0-9a-f:.]+\](?::[0-9]{1,5})?)$/;

/** The methods a pull-only mirror serves; the others are refused. */
export function isReadMethod(method: string | undefined): method is ReadMethod {
  return method === 'GET' || method === 'HEAD';
}

/**
 * Parses the request target (origin-form path plus query). Percent-encoding is never legal in
 * names, references or digests, so any `%` is refused rather than decoded.
 */
export function parseDistributionRequest(target: string): DistributionRequest {
  if (!target.startsWith('/')) {
    throw new InvalidRequestError('target', 'only origin-form request targets are accepted: this is a mirror, not a proxy');
  }
  const queryAt = target.indexOf('?');
  const path = queryAt === -1 ? target : target.slice(0, queryAt);
  const ns = parseNs(queryAt === -1 ? '' : target.slice(queryAt + 1));
  if (path === '/v2/' || path === '/v2') return { kind: 'base', ns };
  if (/[%\\\0]/.test(path) || path.includes('//')) {
    throw new InvalidRequestError('name', 'request path contains encoded, escaped or empty segments', { detail: { path: path.slice(0, 256) } });
  }
  const match = ROUTE.exec(path);
  if (!match) {
    throw new InvalidRequestError('endpoint', 'endpoint not supported by this pull-only mirror', { detail: { path: path.slice(0, 256) } });
  }
  const [, rawName = '', endpoint, rawRef = ''] = match;
  const name = parseRepositoryName(rawName);
  if (endpoint === 'blobs') return { kind: 'blob', ns, name, digest: parseDigest(rawRef) };
  return { kind: 'manifest', ns, name, reference: parseReference(rawRef) };
}

function parseNs(query: string): string | undefined {
  if (query === '') return undefined;
  let ns: string | undefined;
  for (const pair of query.split('&')) {
    const eq = pair.indexOf('=');
    const key = eq === -1 ? pair : pair.slice(0, eq);
    if (key !== 'ns') continue;
    if (ns !== undefined) throw new InvalidRequestError('ns', 'ns given more than once', { detail: { query: query.slice(0, 256) } });
    let value: string;
    try {
      value = decodeURIComponent(eq === -1 ? '' : pair.slice(eq + 1)).toLowerCase();
    } catch (cause) {
      throw new InvalidRequestError('ns', 'ns is not valid percent-encoding', { cause });
    }
    if (!NS.test(value)) throw new InvalidRequestError('ns', 'ns is not a registry host[:port]', { detail: { ns: value.slice(0, 256) } });
    ns = value;
  }
  return ns;
}
