import type { IncomingMessage } from 'node:http';
import type { OciError } from '../oci/errors.ts';
import { refusals } from './errors.ts';

/** The OCI error for a request node:http could not parse (it never reaches a handler). */
export function clientErrorFor(code: string | undefined): OciError {
  switch (code) {
    case 'HPE_HEADER_OVERFLOW':
      return refusals.headerOverflow();
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return refusals.chunkExtensions();
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return refusals.requestTimeout();
    default:
      return refusals.malformed(code ?? 'unknown');
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
    return refusals.noHost();
  }
  const expect = req.headers.expect;
  if (expect !== undefined && !CONTINUE.test(expect)) return refusals.expectation();
  return undefined;
}
