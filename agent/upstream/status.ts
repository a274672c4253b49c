import type { UpstreamResponse } from './client.ts';
import { UpstreamError, UpstreamRefusedError } from './errors.ts';

/**
 * Turns a non-success upstream answer into the error to raise: 404 is `notFound` (the content the
 * caller asked for), 401 (the agent's credentials), 403 and 429 are refusals; everything else is an
 * UpstreamError (5xx counts as upstream unavailable, so stale content may be served).
 */
export async function upstreamFailure(registry: string, response: UpstreamResponse, notFound: () => Error): Promise<Error> {
  await discard(response);
  switch (response.status) {
    case 404:
      return notFound();
    case 401:
      return new UpstreamRefusedError(registry, 'credentials');
    case 403:
      return new UpstreamRefusedError(registry, 'denied');
    case 429: {
      const retryAfter = response.headers['retry-after'];
      return new UpstreamRefusedError(registry, 'rate_limited', typeof retryAfter === 'string' ? retryAfter : undefined);
    }
    default:
      return new UpstreamError(registry, 'status', `upstream ${registry} answered ${response.status}`, { status: response.status });
  }
}

/** Reads and drops a response body nobody needs (a HEAD's, an error's): the connection can be reused. */
export async function discard(response: { readonly body: { dump(): Promise<unknown> } }): Promise<void> {
  await response.body.dump().catch(() => undefined);
}

/** Content-Length as a number, when present and well-formed. */
export function contentLength(response: UpstreamResponse): number | undefined {
  const value = response.headers['content-length'];
  if (typeof value !== 'string' || !/^[0-9]{1,16}$/.test(value)) return undefined;
  return Number(value);
}
