import type { IncomingMessage, ServerResponse } from 'node:http';
import type { BlobReadable } from '../cache/blob-reader.ts';
import type { Mirror, PullContext } from '../mirror/mirror.ts';
import type { Digest } from '../oci/digest.ts';
import { OciError } from '../oci/errors.ts';
import type { DistributionRequest } from '../oci/request.ts';
import { whileClientWaits } from './client-gone.ts';
import { releaseWithResponse } from './held-response.ts';
import { decideRange } from './range.ts';
import { API_VERSION_HEADER, writeAll } from './respond.ts';

/** What a handler learned, for the access log and metrics. */
export interface Outcome {
  kind: 'base' | 'manifest' | 'blob' | 'token';
  registry?: string;
  /** hit | miss | joined | stale */
  cache?: string;
  bytes: number;
}

const IMMUTABLE = 'max-age=31536000, immutable';

export async function handleBase(mirror: Mirror, res: ServerResponse, head: boolean, ctx: PullContext): Promise<void> {
  await mirror.ping(ctx);
  const body = Buffer.from('{}');
  res.writeHead(200, { ...API_VERSION_HEADER, 'content-type': 'application/json', 'content-length': String(body.length) });
  res.end(head ? undefined : body);
}

export async function handleManifest(
  mirror: Mirror,
  request: Extract<DistributionRequest, { kind: 'manifest' }>,
  res: ServerResponse,
  head: boolean,
  outcome: Outcome,
  ctx: PullContext,
): Promise<void> {
  // A client that hangs up while its manifest waits for room in the body budget leaves that queue.
  const result = await whileClientWaits(res, ctx, (waiting) => mirror.manifest(request.name, request.reference, waiting));
  const { body } = result;
  // From here the response owns the body: whatever happens next, its bytes go back when it is done.
  releaseWithResponse(res, body);
  outcome.cache = result.origin;
  res.writeHead(200, {
    ...API_VERSION_HEADER,
    'content-type': result.mediaType,
    'content-length': String(result.size),
    'docker-content-digest': result.digest,
    etag: `"${result.digest}"`,
    'cache-control': request.reference.kind === 'digest' ? IMMUTABLE : 'no-cache',
  });
  if (head) {
    body.release();
    res.end();
    return;
  }
  outcome.bytes = body.length;
  res.end(body.bytes);
}

export async function handleBlobHead(mirror: Mirror, name: Extract<DistributionRequest, { kind: 'blob' }>, res: ServerResponse, ctx: PullContext): Promise<void> {
  const size = await mirror.blobSize(name.name, name.digest, ctx);
  res.writeHead(200, blobHeaders(name.digest, size));
  res.end();
}

export async function handleBlobGet(
  mirror: Mirror,
  request: Extract<DistributionRequest, { kind: 'blob' }>,
  req: IncomingMessage,
  res: ServerResponse,
  outcome: Outcome,
  ctx: PullContext,
): Promise<void> {
  // A client that hangs up while its download waits for a slot gives up its place in the queue.
  const blob = await whileClientWaits(res, ctx, (waiting) => mirror.blob(request.name, request.digest, waiting));
  outcome.cache = blob.origin;
  // A client that hangs up while its answer waits for bytes (a slow upstream, a relay) lets go of
  // the blob at once: a reader nobody reads for must not pace a relay or keep it alive.
  const release = (): void => blob.close();
  res.once('close', release);
  try {
    await sendBlob(blob, request.digest, req, res, outcome);
  } finally {
    res.off('close', release);
    blob.close();
  }
}

async function sendBlob(blob: BlobReadable, digest: Digest, req: IncomingMessage, res: ServerResponse, outcome: Outcome): Promise<void> {
  const size = blob.size();
  const range = size === undefined ? ({ kind: 'full' } as const) : decideRange(req.headers.range, size);
  if (range.kind === 'unsatisfiable') {
    throw new OciError('RANGE_INVALID', 'requested range not satisfiable', { headers: { 'content-range': `bytes */${size}` }, detail: { size } });
  }
  const partial = range.kind === 'partial' && size !== undefined ? range.range : undefined;
  const chunks = partial ? blob.read(partial.start, partial.end) : blob.read(0);
  // The first bytes before the status: a download that fails before any byte was read (wrong
  // content, upstream gone) is answered with its error, not a 200 cut short.
  const first = await chunks.next();
  if (partial) res.writeHead(206, { ...blobHeaders(digest, partial.end - partial.start), 'content-range': `bytes ${partial.start}-${partial.end - 1}/${size}` });
  else res.writeHead(200, blobHeaders(digest, size));
  outcome.bytes = await writeAll(res, startingWith(first, chunks), blob.recycle?.bind(blob));
  res.end();
}

/** `rest`, with the result of its first `next()` (already taken) in front. */
async function* startingWith(first: IteratorResult<Buffer>, rest: AsyncGenerator<Buffer>): AsyncGenerator<Buffer> {
  if (first.done) return;
  yield first.value;
  yield* rest;
}

function blobHeaders(digest: Digest, size: number | undefined): Record<string, string> {
  const headers: Record<string, string> = {
    ...API_VERSION_HEADER,
    'content-type': 'application/octet-stream',
    'docker-content-digest': digest,
    etag: `"${digest}"`,
    'cache-control': IMMUTABLE,
    'accept-ranges': 'bytes',
  };
  if (size !== undefined) headers['content-length'] = String(size);
  return headers;
}
