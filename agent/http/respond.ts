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

/** An OCI error as raw HTTP/1.1 bytes, for sockets that never got a ServerResponse (parse errors, CONNECT, refusals). */
export function rawOciResponse(error: OciError): string {
  return rawResponse(error.status, { ...API_VERSION_HEADER, ...error.headers, 'content-type': 'application/json; charset=utf-8' }, JSON.stringify(error.toJSON()));
}

/** A whole HTTP/1.1 answer as raw text, with its length, that closes the connection. */
export function rawResponse(status: number, headers: Readonly<Record<string, string>>, body: string): string {
  const head = Object.entries({ ...headers, 'content-length': String(Buffer.byteLength(body)), connection: 'close' })
    .map(([name, value]) => `${name}: ${value}\r\n`)
    .join('');
  return `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\n${head}\r\n${body}`;
}

/**
 * Writes chunks with backpressure. Resolves when all were written, rejects when the client went
 * away (the iterator is then closed, so its `finally` blocks run). `progress` hears the bytes handed
 * to the socket so far after every chunk, so an answer cut short still counts what it sent.
 */
export async function writeAll(
  res: ServerResponse,
  chunks: AsyncIterable<Buffer>,
  recycle?: (chunk: Buffer) => void,
  progress?: (bytes: number) => void,
): Promise<number> {
  let bytes = 0;
  // Once the socket took a chunk, its buffer may be read into again (fewer allocations, less GC).
  const written = recycle ? (chunk: Buffer) => () => recycle(chunk) : undefined;
  let slice = Infinity;
  for await (const chunk of chunks) {
    if (res.destroyed) throw new ClientGoneError();
    bytes += chunk.length;
    // The slice size can shrink between two pieces of one chunk: each piece starts where the last ended.
    for (let offset = 0; offset < chunk.length; ) {
      const end = Math.min(chunk.length, offset + slice);
      const last = end === chunk.length;
      const piece = offset === 0 && last ? chunk : chunk.subarray(offset, end);
      offset = end;
      if (res.write(piece, last ? written?.(chunk) : undefined)) continue;
      const waited = performance.now();
      await drained(res);
      if (performance.now() - waited > SLOW_DRAIN_MS) slice = WRITE_SLICE_BYTES;
    }
    progress?.(bytes);
  }
  // A source that ended because the client went away (a reader closed under it) is no whole answer.
  if (res.destroyed) throw new ClientGoneError();
  return bytes;
}

/**
 * A client that makes the agent wait this long for a write gets its answer in WRITE_SLICE_BYTES
 * slices from then on: what it takes then shows up in steps well below the send watchdog's 1 MiB
 * floor, and it is judged by a silence of its own, not by the size of one write. Fast clients keep
 * the large writes (fewer syscalls: the slices cost ~15% more CPU on a warm GET).
 */
const SLOW_DRAIN_MS = 250;
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
