import { AuthRequiredError, TokenRealmUnknownError, TokenTooLargeError } from '../auth/errors.ts';
import { DigestMismatchError, FillAbandonedError, SizeMismatchError } from '../cache/errors.ts';
import { MemoryBudgetError } from '../memory/errors.ts';
import { FillQueueFullError } from '../mirror/errors.ts';
import { OciError } from '../oci/errors.ts';
import { DestinationRefusedError, UpstreamError } from '../upstream/errors.ts';

/**
 * Seconds a client refused for a full download queue is asked to wait: long enough for a few of
 * the running downloads to finish, short against kubelet's own image pull back-off.
 */
const FILL_QUEUE_RETRY_AFTER_SECONDS = 10;
/** Room in the body budget frees as soon as a few responses were taken: a short wait is enough. */
const MEMORY_BUDGET_RETRY_AFTER_SECONDS = 5;

/**
 * The one place where domain errors become OCI errors with an HTTP status. The original error
 * stays attached as `cause` for logs.
 */
export function toOciError(error: unknown): OciError {
  if (error instanceof OciError) return error;
  if (error instanceof UpstreamError) return fromUpstream(error);
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
