import type { IncomingMessage } from 'node:http';
import { OciError } from '../oci/errors.ts';
import { whileClientWaits } from './client-gone.ts';
import { refusals } from './errors.ts';
import type { Exchange } from './handlers.ts';
import { releaseWithResponse } from './held-response.ts';
import type { MirrorSet } from './mirror-set.ts';
import { ClientGoneError } from './respond.ts';

const TOKEN_PATH = /^\/_token\/([^/?]+)\/([0-9a-f]{16})(?:\?(.*))?$/;
const MAX_FORM_BYTES = 64 * 1024;

export function isTokenRequest(target: string): boolean {
  return target.startsWith('/_token/');
}

/**
 * The agent's token endpoint (passthrough): parses a puller's token request, GET with query or
 * POST with an OAuth2 form, and sends back what the mirror's access broker answered.
 */
export async function handleTokenRequest(mirrors: MirrorSet, { req, res, recorder }: Exchange): Promise<void> {
  const match = TOKEN_PATH.exec(req.url ?? '');
  if (!match) throw refusals.tokenPath();
  let registry: string;
  try {
    registry = decodeURIComponent(match[1] ?? '');
  } catch {
    throw refusals.tokenPath();
  }
  const mirror = mirrors.select(registry);
  // Known from here: failures of this request count for its mirror, not for none.
  recorder.setRegistry(mirror.registry);
  const method = req.method === 'POST' ? 'POST' : req.method === 'GET' ? 'GET' : undefined;
  if (!method) throw refusals.tokenMethod();
  const form = method === 'POST' ? await readRequestBody(req, MAX_FORM_BYTES) : undefined;
  if (method === 'GET') req.resume();
  // A puller that hangs up while its answer waits for room in the body budget leaves that queue.
  const answer = await whileClientWaits(res, {}, ({ signal }) =>
    mirror.token({ realmId: match[2] ?? '', method, query: match[3] ?? '', authorization: req.headers.authorization, accept: req.headers.accept, form }, signal),
  );
  if (res.closed || res.destroyed) {
    // The puller left while the realm answered: nobody to give the answer to.
    answer.body.release();
    throw new ClientGoneError();
  }
  // From here the response owns the answer: its bytes go back to the budget when it is done.
  releaseWithResponse(res, answer.body);
  res.writeHead(answer.status, { ...answer.headers, 'content-length': String(answer.body.length) });
  recorder.setBytes(answer.body.length);
  res.end(answer.body.bytes);
}

async function readRequestBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of req) {
      total += (chunk as Buffer).length;
      if (total > limit) throw refusals.bodyTooLarge(limit);
      chunks.push(chunk as Buffer);
    }
  } catch (error) {
    // A body the client broke off ("aborted"): the client left, nothing failed here.
    if (!(error instanceof OciError) && req.destroyed) throw new ClientGoneError();
    throw error;
  }
  return Buffer.concat(chunks);
}
