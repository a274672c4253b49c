import type { IncomingMessage, ServerResponse } from 'node:http';
import type { BlobReadable } from '../cache/blob-reader.ts';
import type { Mirror, PullContext } from '../mirror/mirror.ts';
import type { ResponseRecorder } from '../observe/request-record.ts';
import type { Digest } from '../oci/digest.ts';
import type { DistributionRequest } from '../oci/request.ts';
import { whileClientWaits } from './client-gone.ts';
import { refusals } from './errors.ts';
import { releaseWithResponse } from './held-response.ts';
import { decideRange, etagOf, rangeAllowed } from './range.ts';
import { API_VERSION_HEADER, writeAll } from './respond.ts';

/** One request and its response, with the record the handlers tell what they learn. */
export interface Exchange {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly recorder: ResponseRecorder;
}

/** A distribution API request routed to its mirror: what every handler of it takes. */
export interface RequestContext<R extends DistributionRequest = DistributionRequest> extends Exchange {
  readonly mirror: Mirror;
  readonly request: R;
  /** The puller's credentials (and, while it waits, its hang-up signal) for the mirror. */
  readonly pull: PullContext;
}

type ManifestRequest = Extract<DistributionRequest, { kind: 'manifest' }>;
type BlobRequest = Extract<DistributionRequest, { kind: 'blob' }>;

const IMMUTABLE = 'max-age=31536000, immutable';

export async function handleBase({ mirror, req, res, pull }: RequestContext): Promise<void> {
  await mirror.ping(pull);
  const body = Buffer.from('{}');
  res.writeHead(200, { ...API_VERSION_HEADER, 'content-type': 'application/json', 'content-length': String(body.length) });
  res.end(isHead(req) ? undefined : body);
}

export async function handleManifest({ mirror, request, req, res, recorder, pull }: RequestContext<ManifestRequest>): Promise<void> {
  // A client that hangs up while its manifest waits for room in the body budget leaves that queue.
  const result = await whileClientWaits(res, pull, (waiting) => mirror.manifest(request.name, request.reference, waiting));
  const { body } = result;
  // From here the response owns the body: whatever happens next, its bytes go back when it is done.
  releaseWithResponse(res, body);
  recorder.setCacheSource(result.origin);
  res.writeHead(200, {
    ...API_VERSION_HEADER,
    'content-type': result.mediaType,
    'content-length': String(result.size),
    'docker-content-digest': result.digest,
    etag: etagOf(result.digest),
    'cache-control': request.reference.kind === 'digest' ? IMMUTABLE : 'no-cache',
  });
  if (isHead(req)) {
    body.release();
    res.end();
    return;
  }
  recorder.setBytes(body.length);
  res.end(body.bytes);
}

export async function handleBlobHead({ mirror, request, res, pull }: RequestContext<BlobRequest>): Promise<void> {
  const size = await mirror.blobSize(request.name, request.digest, pull);
  res.writeHead(200, blobHeaders(request.digest, size));
  res.end();
}

export async function handleBlobGet(ctx: RequestContext<BlobRequest>): Promise<void> {
  const { mirror, request, res, recorder, pull } = ctx;
  // A client that hangs up while its download waits for a slot gives up its place in the queue.
  const blob = await whileClientWaits(res, pull, (waiting) => mirror.blob(request.name, request.digest, waiting));
  recorder.setCacheSource(blob.origin);
  // A client that hangs up while its answer waits for bytes (a slow upstream, a relay) lets go of
  // the blob at once: a reader nobody reads for must not pace a relay or keep it alive.
  const release = (): void => blob.close();
  res.once('close', release);
  try {
    await sendBlob(blob, ctx);
  } finally {
    res.off('close', release);
    blob.close();
  }
}

async function sendBlob(blob: BlobReadable, { request, req, res, recorder }: RequestContext<BlobRequest>): Promise<void> {
  const { digest } = request;
  const size = blob.size();
  const range = size === undefined || !rangeAllowed(req.headers['if-range'], etagOf(digest)) ? ({ kind: 'full' } as const) : decideRange(req.headers.range, size);
  if (range.kind === 'unsatisfiable') throw refusals.rangeNotSatisfiable(size ?? 0);
  const partial = range.kind === 'partial' && size !== undefined ? range.range : undefined;
  const chunks = partial ? blob.read(partial.start, partial.end) : blob.read(0);
  // The first bytes before the status: a download that fails before any byte was read (wrong
  // content, upstream gone) is answered with its error, not a 200 cut short.
  const first = await chunks.next();
  if (partial) res.writeHead(206, { ...blobHeaders(digest, partial.end - partial.start), 'content-range': `bytes ${partial.start}-${partial.end - 1}/${size}` });
  else res.writeHead(200, blobHeaders(digest, size));
  await writeAll(res, startingWith(first, chunks), blob.recycle?.bind(blob), (bytes) => recorder.setBytes(bytes));
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
    etag: etagOf(digest),
    'cache-control': IMMUTABLE,
    'accept-ranges': 'bytes',
  };
  if (size !== undefined) headers['content-length'] = String(size);
  return headers;
}

export function isHead(req: IncomingMessage): boolean {
  return req.method === 'HEAD';
}
