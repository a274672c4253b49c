import { AuthRequiredError, TokenRealmUnknownError, TokenTooLargeError } from '../auth/errors.ts';
import { DigestMismatchError, FillAbandonedError, SizeMismatchError } from '../cache/errors.ts';
import { MemoryBudgetError } from '../memory/errors.ts';
import { FillQueueFullError } from '../mirror/errors.ts';
import { ContentUnknownError, InvalidRequestError, OciError, type OciErrorCode, type RequestProblem } from '../oci/errors.ts';
import { DestinationRefusedError, UpstreamError, UpstreamRefusedError } from '../upstream/errors.ts';
import { RegistryNotMirroredError } from './mirror-set.ts';

/**
 * Seconds a client refused for a full download queue is asked to wait: long enough for a few of
 * the running downloads to finish, short against kubelet's own image pull back-off.
 */
const FILL_QUEUE_RETRY_AFTER_SECONDS = 10;
/** Room in the body budget frees as soon as a few responses were taken: a short wait is enough. */
const MEMORY_BUDGET_RETRY_AFTER_SECONDS = 5;

/**
 * Every status the mirror port can answer is decided in this file: domain errors become OCI errors
 * here (toOciError), and refusals of the HTTP surface itself are built here (`refusals`). The
 * original error stays attached as `cause` for logs.
 */
export function toOciError(error: unknown): OciError {
  if (error instanceof OciError) return error;
  if (error instanceof UpstreamError) return fromUpstream(error);
  if (error instanceof InvalidRequestError) {
    const [code, status] = REQUEST_PROBLEMS[error.problem];
    return new OciError(code, error.message, { status, ...(error.detail === undefined ? {} : { detail: error.detail }), cause: error.cause });
  }
  if (error instanceof ContentUnknownError) {
    return error.kind === 'blob'
      ? new OciError('BLOB_UNKNOWN', 'blob unknown', { detail: { digest: error.reference } })
      : new OciError('MANIFEST_UNKNOWN', 'manifest unknown', { detail: { reference: error.reference } });
  }
  if (error instanceof UpstreamRefusedError) {
    switch (error.refusal) {
      case 'credentials':
        // The node's credential is at fault, not the puller's: no challenge (containerd has nothing else to offer).
        return new OciError('UNAUTHORIZED', error.message, { status: 502 });
      case 'denied':
        return new OciError('DENIED', error.message);
      case 'rate_limited':
        return new OciError('TOOMANYREQUESTS', error.message, error.retryAfter ? { headers: { 'retry-after': error.retryAfter } } : {});
    }
  }
  if (error instanceof RegistryNotMirroredError) {
    return error.ns !== undefined
      ? new OciError('NAME_UNKNOWN', error.message, { detail: { ns: error.ns } })
      : new OciError('NAME_UNKNOWN', error.message, { detail: { registries: error.registries } });
  }
  if (error instanceof AuthRequiredError) {
    return new OciError('UNAUTHORIZED', error.message, {
      headers: error.challenge ? { 'www-authenticate': error.challenge } : {},
      detail: { registry: error.registry },
    });
  }
  if (error instanceof TokenRealmUnknownError) return new OciError('NAME_UNKNOWN', 'unknown token realm for this registry', { status: 404, cause: error });
  if (error instanceof TokenTooLargeError) return new OciError('UNAVAILABLE', 'token endpoint response too large', { status: 502, cause: error });
  if (error instanceof DigestMismatchError || error instanceof SizeMismatchError) {
    return new OciError('UNAVAILABLE', 'upstream content did not match its digest; nothing was cached', { status: 502, cause: error });
  }
  if (error instanceof FillQueueFullError) {
    return new OciError('TOOMANYREQUESTS', `too many blob downloads from ${error.registry} at once; retry later`, {
      detail: { registry: error.registry, running: error.running, queued: error.queued },
      headers: { 'retry-after': String(FILL_QUEUE_RETRY_AFTER_SECONDS) },
      cause: error,
    });
  }
  if (error instanceof MemoryBudgetError) {
    return new OciError('TOOMANYREQUESTS', 'too many responses are being held in memory for their clients; retry later', {
      detail: { reason: error.reason, heldBytes: error.held, waiting: error.waiting },
      headers: { 'retry-after': String(MEMORY_BUDGET_RETRY_AFTER_SECONDS) },
      cause: error,
    });
  }
  if (error instanceof FillAbandonedError) {
    // Only a client that already left should see this; if one did not, it may simply ask again.
    return new OciError('UNAVAILABLE', 'the download was dropped; retry', { cause: error });
  }
  return new OciError('UNKNOWN', 'internal error', { cause: error });
}

function fromUpstream(error: UpstreamError): OciError {
  const detail = { registry: error.registry, cause: error.message };
  switch (error.failure) {
    case 'unreachable':
      return new OciError('UNAVAILABLE', `upstream for ${error.registry} is unreachable and the content is not cached`, { detail, cause: error });
    case 'timeout':
      return new OciError('UNAVAILABLE', `upstream for ${error.registry} timed out`, { status: 504, detail, cause: error });
    case 'status':
      return new OciError('UNAVAILABLE', `upstream for ${error.registry} answered ${error.status ?? 'an error'}`, {
        status: (error.status ?? 500) >= 500 ? 503 : 502,
        detail,
        cause: error,
      });
    case 'proxy': {
      const diagnosis = error.diagnosis;
      const message = diagnosis ? `${diagnosis.cause}; fix: ${diagnosis.fix}` : error.message;
      return new OciError('UNAVAILABLE', message, {
        status: 502,
        detail: { ...detail, ...(diagnosis ? { reason: diagnosis.code, fix: diagnosis.fix } : {}) },
        cause: error,
      });
    }
    case 'invalid':
      return new OciError('UNAVAILABLE', `upstream for ${error.registry} sent an invalid response`, { status: 502, detail, cause: error });
    case 'redirect':
      return new OciError('UNAVAILABLE', `upstream for ${error.registry} sent a redirect the agent does not follow`, { status: 502, detail, cause: error });
    case 'destination':
      return fromRefusal(error);
  }
}

/** A redirect or token realm the destination policy refused: the reason and the fix, as the log line has them. */
function fromRefusal(error: UpstreamError): OciError {
  const refusal = error instanceof DestinationRefusedError ? error.refusal : undefined;
  const detail = { registry: error.registry, cause: error.message, ...(refusal ? { reason: refusal.reason, destination: refusal.destination, fix: refusal.fix } : {}) };
  return new OciError('UNAVAILABLE', refusal ? `${error.message}; fix: ${refusal.fix}` : error.message, { status: 502, detail, cause: error });
}

/** The OCI code and status of each way a request can be malformed (the spec's 400s; a path this mirror does not serve is a 404). */
const REQUEST_PROBLEMS: Readonly<Record<RequestProblem, readonly [OciErrorCode, number]>> = {
  name: ['NAME_INVALID', 400],
  tag: ['TAG_INVALID', 400],
  digest: ['DIGEST_INVALID', 400],
  ns: ['NAME_INVALID', 400],
  target: ['UNSUPPORTED', 400],
  endpoint: ['UNSUPPORTED', 404],
};

const PULL_ONLY = { allow: 'GET, HEAD' } as const;

/** Refusals of the HTTP surface itself: requests it does not accept before any mirror is asked. */
export const refusals = {
  /** node:http's parse errors (they never reach a handler). */
  headerOverflow: () => new OciError('SIZE_INVALID', 'request line and headers exceed 16 KiB', { status: 431 }),
  chunkExtensions: () => new OciError('SIZE_INVALID', 'chunk extensions too large', { status: 413 }),
  requestTimeout: () => new OciError('UNSUPPORTED', 'request not received in time', { status: 408 }),
  malformed: (reason: string) => new OciError('UNSUPPORTED', 'malformed HTTP request', { status: 400, detail: { reason } }),
  noHost: () => new OciError('UNSUPPORTED', 'HTTP/1.1 request without Host header', { status: 400 }),
  expectation: () => new OciError('UNSUPPORTED', 'Expect is not supported', { status: 417 }),
  connect: () => new OciError('UNSUPPORTED', 'CONNECT is not supported: this is a mirror, not a proxy', { headers: PULL_ONLY }),
  method: (method: string) => new OciError('UNSUPPORTED', `${method} is not supported: this mirror is pull-only`, { headers: PULL_ONLY }),
  connectionCap: (maxConnections: number) =>
    new OciError('TOOMANYREQUESTS', `the agent is serving its maximum of ${maxConnections} connections (max_connections); retry shortly`, {
      status: 503,
      headers: { 'retry-after': '1' },
    }),
  rangeNotSatisfiable: (size: number) => new OciError('RANGE_INVALID', 'requested range not satisfiable', { headers: { 'content-range': `bytes */${size}` }, detail: { size } }),
  /** The token endpoint (passthrough). */
  peerMethod: (method: string) => new OciError('UNSUPPORTED', `${method} is not supported: the peer listener takes blob GETs`, { headers: { allow: 'GET' } }),
  peerOnlyBlobs: () => new OciError('UNSUPPORTED', 'the peer listener serves blobs only', { status: 404 }),
  tokenPath: () => new OciError('NAME_INVALID', 'malformed token endpoint path', { status: 404 }),
  tokenMethod: () => new OciError('UNSUPPORTED', 'token endpoint takes GET or POST', { headers: { allow: 'GET, POST' } }),
  bodyTooLarge: (limit: number) => new OciError('SIZE_INVALID', `request body over ${limit} bytes`, { status: 413 }),
} as const;
