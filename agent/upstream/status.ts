import { OciError } from '../oci/errors.ts';
import type { UpstreamResponse } from './client.ts';
import { UpstreamError } from './errors.ts';

/**
 * Turns a non-success upstream answer into the error to raise: registry-level answers (404, 401,
 * 403, 429) become the matching OCI error; everything else is an UpstreamError (5xx counts as
 * upstream unavailable, so stale content may be served).
 */
export async function upstreamFailure(registry: string, response: UpstreamResponse, notFound: () => OciError): Promise<Error> {
  await response.body.dump().catch(() => undefined);
  switch (response.status) {
    case 404:
      return notFound();
    case 401:
      return new OciError('UNAUTHORIZED', `upstream ${registry} refused the agent's credentials`, { status: 502 });
    case 403:
      return new OciError('DENIED', `upstream ${registry} denied access`);
    case 429:
      return new OciError('TOOMANYREQUESTS', `upstream ${registry} is rate limiting`, retryAfter(response));
    default:
      return new UpstreamError(registry, 'status', `upstream ${registry} answered ${response.status}`, { status: response.status });
  }
}

function retryAfter(response: UpstreamResponse): { headers?: Record<string, string> } {
  const value = response.headers['retry-after'];
  return typeof value === 'string' ? { headers: { 'retry-after': value } } : {};
}

/** Content-Length as a number, when present and well-formed. */
export function contentLength(response: UpstreamResponse): number | undefined {
  const value = response.headers['content-length'];
  if (typeof value !== 'string' || !/^[0-9]{1,16}$/.test(value)) return undefined;
  return Number(value);
}
