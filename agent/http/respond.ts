import { STATUS_CODES, type ServerResponse } from 'node:http';
import type { OciError } from '../oci/errors.ts';

export const API_VERSION_HEADER = { 'docker-distribution-api-version': 'registry/2.0' } as const;

/** Renders an OCI error body, unless headers already went out (then the connection is cut). */
export function sendOciError(res: ServerResponse, error: OciError, method: string): void {
  if (res.headersSent) {
    res.destroy(error);
    return;
  }
  const body = Buffer.from(JSON.stringify(error.toJSON()));
  res.writeHead(error.status, {
    ...API_VERSION_HEADER,
    ...error.headers,
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(body.length),
  });
  res.end(method === 'HEAD' ? undefined : body);
}

/** An OCI error as raw HTTP/1.1 bytes, for sockets that never got a ServerResponse (parse errors, CONNECT). */
export function rawOciResponse(error: OciError): string {
  const body = JSON.stringify(error.toJSON());
  const headers: Record<string, string> = {
    ...API_VERSION_HEADER,
    ...error.headers,
    'content-type': 'application/json; charset=utf-8',
    'content-length': String(Buffer.byteLength(body)),
    connection: 'close',
  };
  const head = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join('');
  return `HTTP/1.1 ${error.status} ${STATUS_CODES[error.status] ?? 'Error'}\r\n${head}\r\n${body}`;
}

/**
 * Writes chunks with backpressure. Resolves when all were written, rejects when the client went
 * away (the iterator is then closed, so its `finally` blocks run).
 */
export async function writeAll(res: ServerResponse, chunks: AsyncIterable<Buffer>, recycle?: (chunk: Buffer) => void): Promise<number> {
  let bytes = 0;
  // Once the socket took a chunk, its buffer may be read into again (fewer allocations, less GC).
  const written = recycle ? (chunk: Buffer) => () => recycle(chunk) : undefined;
  for await (const chunk of chunks) {
    if (res.destroyed) throw new ClientGoneError();
    bytes += chunk.length;
    for (let offset = 0; offset < chunk.length; offset += WRITE_SLICE_BYTES) {
      const last = offset + WRITE_SLICE_BYTES >= chunk.length;
      const slice = offset === 0 && last ? chunk : chunk.subarray(offset, offset + WRITE_SLICE_BYTES);
      if (!res.write(slice, last ? written?.(chunk) : undefined)) await drained(res);
    }
  }
  // A source that ended because the client went away (a reader closed under it) is no whole answer.
  if (res.destroyed) throw new ClientGoneError();
  return bytes;
}

/**
 * Largest single write to a client: what the client takes shows up in steps of at most this much,
 * well below the send watchdog's 1 MiB, so a client that keeps its pace is never judged by a step
 * that happened to land just outside the window. Reads stay up to 1 MiB.
 */
export const WRITE_SLICE_BYTES = 256 * 1024;

export class ClientGoneError extends Error {
  override readonly name = 'ClientGoneError';
  constructor() {
    super('client closed the connection');
  }
}

function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      res.off('close', onClose);
      resolve();
    };
    const onClose = (): void => {
      res.off('drain', onDrain);
      reject(new ClientGoneError());
    };
    res.once('drain', onDrain);
    res.once('close', onClose);
  });
}
