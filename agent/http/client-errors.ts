import type { IncomingMessage } from 'node:http';
import { OciError } from '../oci/errors.ts';

/** The OCI error for a request node:http could not parse (it never reaches a handler). */
export function clientErrorFor(code: string | undefined): OciError {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return new OciError('SIZE_INVALID', 'request line and headers exceed 16 KiB', { status: 431 });
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return new OciError('SIZE_INVALID', 'chunk extensions too large', { status: 413 });
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return new OciError('UNSUPPORTED', 'request not received in time', { status: 408 });
    default:
      return new OciError('UNSUPPORTED', 'malformed HTTP request', { status: 400, detail: { reason: code ?? 'unknown' } });
  }
}

/** node:http's test for a 100-continue expectation (it answers those itself). */
const CONTINUE = /(?:^|\W)100-continue(?:$|\W)/i;

/**
 * Requests node:http parsed but the mirror refuses before routing them: HTTP/1.1 without Host
 * (node:http would answer that itself, without an OCI body) and an Expect other than 100-continue.
 */
export function protocolRefusal(req: IncomingMessage): OciError | undefined {
  if (req.httpVersion === '1.1' && req.headers.host === undefined) {
    return new OciError('UNSUPPORTED', 'HTTP/1.1 request without Host header', { status: 400 });
  }
  const expect = req.headers.expect;
  if (expect !== undefined && !CONTINUE.test(expect)) return new OciError('UNSUPPORTED', 'Expect is not supported', { status: 417 });
  return undefined;
}
