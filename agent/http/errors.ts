import { DigestMismatchError, SizeMismatchError } from '../cache/errors.ts';
import { OciError } from '../oci/errors.ts';
import { UpstreamError } from '../upstream/errors.ts';

/**
 * The one place where domain errors become OCI errors with an HTTP status. The original error
 * stays attached as `cause` for logs.
 */
export function toOciError(error: unknown): OciError {
  if (error instanceof OciError) return error;
  if (error instanceof UpstreamError) return fromUpstream(error);
  if (error instanceof DigestMismatchError || error instanceof SizeMismatchError) {
    return new OciError('UNAVAILABLE', 'upstream content did not match its digest; nothing was cached', { status: 502, cause: error });
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
  }
}
