import type { IncomingMessage, ServerResponse } from 'node:http';
import { type CredentialHash, hashCredential } from '../auth/access-memory.ts';
import { addPrefix, mapScopes, rewriteChallenge } from '../auth/challenge-rewrite.ts';
import { AccessDeniedError, AuthRequiredError } from '../auth/errors.ts';
import { realmKey } from '../auth/token-grants.ts';
import type { Mirror } from '../mirror/mirror.ts';
import { randomBytes } from 'node:crypto';
import { OciError } from '../oci/errors.ts';
import { type HeldBody, readBody } from '../memory/held-body.ts';
import { contentLength } from '../mirror/upstream-status.ts';
import type { UpstreamResponse } from '../upstream/client.ts';
import { UpstreamError, fromTransportError } from '../upstream/errors.ts';
import { toOciError } from './errors.ts';
import { whileClientWaits } from './client-gone.ts';
import type { Outcome } from './handlers.ts';
import { releaseWithResponse } from './held-response.ts';
import { ClientGoneError } from './respond.ts';
import type { MirrorSet } from './mirror-set.ts';

/** Turns a passthrough auth failure into the 401 the puller needs, with the challenge pointed at the agent. */
export function authError(error: AuthRequiredError | AccessDeniedError, mirror: Mirror, agentBase: string): OciError {
  const challenge = error instanceof AuthRequiredError ? error.challenge : undefined;
  // A realm the agent would not contact itself is not handed to the puller as the agent's either
  // (what its URL settles; a name is judged by address when the puller's token request is forwarded).
  try {
    if (challenge !== undefined) mirror.upstream.destinations.checkRealm(challenge);
  } catch (refused) {
    return toOciError(refused);
  }
  const headers: Record<string, string> = {};
  if (challenge) {
    headers['www-authenticate'] = rewriteChallenge(challenge, {
      agentBase,
      registry: mirror.registry,
      realms: mirror.realms,
      repositoryPrefix: mirror.config.repositoryPrefix,
      upstreamBase: mirror.config.upstream,
    });
  }
  return new OciError('UNAUTHORIZED', error.message, { headers, detail: { registry: mirror.registry } });
}

const TOKEN_PATH = /^\/_token\/([^/?]+)\/([0-9a-f]{16})(?:\?(.*))?$/;
const MAX_FORM_BYTES = 64 * 1024;
/** Real token answers are a few KiB (a JWT and some fields); this is held in memory until the puller took it. */
const MAX_TOKEN_RESPONSE_BYTES = 64 * 1024;

export function isTokenRequest(target: string): boolean {
  return target.startsWith('/_token/');
}

/**
 * The agent's token endpoint (passthrough): forwards a puller's token request, GET with query or
 * POST with an OAuth2 form, to a realm learned from that mirror's own upstream challenge, through
 * the mirror's route. Status, content type and body come back unchanged so the puller's
 * POST-then-GET fallback keeps working. Scopes gain the mirror's repository_prefix.
 */
export async function handleTokenRequest(mirrors: MirrorSet, req: IncomingMessage, res: ServerResponse, outcome: Outcome): Promise<void> {
  const match = TOKEN_PATH.exec(req.url ?? '');
  if (!match) throw new OciError('NAME_INVALID', 'malformed token endpoint path', { status: 404 });
  let registry: string;
  try {
    registry = decodeURIComponent(match[1] ?? '');
  } catch {
    throw new OciError('NAME_INVALID', 'malformed token endpoint path', { status: 404 });
  }
  const mirror = mirrors.select(registry);
  // Known from here: failures of this request count for its mirror, not for none.
  outcome.registry = mirror.registry;
  const realm = mirror.realms.get(match[2] ?? '');
  if (!realm || !mirror.passthrough) throw new OciError('NAME_UNKNOWN', 'unknown token realm for this registry', { status: 404 });
  const method = req.method === 'POST' ? 'POST' : req.method === 'GET' ? 'GET' : undefined;
  if (!method) throw new OciError('UNSUPPORTED', 'token endpoint takes GET or POST', { headers: { allow: 'GET, POST' } });
  const prefix = mirror.config.repositoryPrefix;
  const target = new URL(realm.href);
  const repositories: string[] = [];
  const mapScope = (scope: string): string =>
    mapScopes(scope, (name) => {
      repositories.push(name);
      return addPrefix(name, prefix);
    });
  for (const [key, value] of new URLSearchParams(match[3] ?? '')) {
    target.searchParams.append(key, key === 'scope' ? mapScope(value) : value);
  }
  const headers: Record<string, string> = { accept: req.headers.accept ?? 'application/json' };
  if (req.headers.authorization) headers['authorization'] = req.headers.authorization;
  let body: Buffer | undefined;
  if (method === 'POST') {
    const form = new URLSearchParams((await readRequestBody(req, MAX_FORM_BYTES)).toString('utf8'));
    const rewritten = new URLSearchParams();
    for (const [key, value] of form) rewritten.append(key, key === 'scope' ? mapScope(value) : value);
    body = Buffer.from(rewritten.toString());
    headers['content-type'] = 'application/x-www-form-urlencoded';
  }
  const credential = hashCredential(tokenCredential(req.headers.authorization, body));
  let response;
  try {
    response = await mirror.upstream.forwardTokenRequest(target, method, headers, body);
  } catch (error) {
    if (error instanceof UpstreamError && error.unavailable && offlineToken(mirror, credential, repositories, res)) return;
    throw error;
  }
  const answer = await readTokenAnswer(mirror, response, res);
  if (res.closed || res.destroyed) {
    // The puller left while the realm answered: nobody to give the answer to.
    answer.release();
    throw new ClientGoneError();
  }
  // From here the response owns the answer: its bytes go back to the budget when it is done.
  releaseWithResponse(res, answer);
  // Not access yet (realms answer 200 with an empty grant too): the credential counts as accepted
  // for a repository only once upstream accepts this token for it (Mirror confirms it then).
  if (response.status === 200) mirror.tokenGrants.record(answer.bytes, credential, repositories);
  const out: Record<string, string> = { 'content-length': String(answer.length), 'cache-control': 'no-store' };
  const type = response.headers['content-type'];
  if (typeof type === 'string') out['content-type'] = type;
  const authenticate = response.headers['www-authenticate'];
  if (typeof authenticate === 'string') out['www-authenticate'] = authenticate;
  res.writeHead(response.status, out);
  res.end(answer.bytes);
}

/** What identifies the puller at the realm: its Basic header, or the password grant's username and password. Hashed at once, never stored. */
function tokenCredential(authorization: string | undefined, form: Buffer | undefined): string {
  if (form) {
    const fields = new URLSearchParams(form.toString('utf8'));
    const user = fields.get('username');
    if (user !== null) return `password:${user}\0${fields.get('password') ?? ''}`;
    const refresh = fields.get('refresh_token');
    if (refresh !== null) return `refresh:${refresh}`;
  }
  return authorization ? `header:${authorization}` : 'anonymous';
}

/** How long a token minted while upstream is unreachable is good for. */
const OFFLINE_TOKEN_TTL_S = 300;

/**
 * The realm is unreachable: if upstream accepted a token issued to this very credential for every
 * requested repository within max_stale, answer with a token of the agent's own. It opens nothing
 * but this mirror's cache (the access guard accepts it for those repositories only); upstream never
 * sees it. A realm's 200 alone never counts (see TokenGrants).
 */
function offlineToken(mirror: Mirror, credential: CredentialHash, repositories: readonly string[], res: ServerResponse): boolean {
  if (repositories.length === 0) return false;
  const now = Date.now();
  let confirmedAt = now;
  for (const repository of repositories) {
    const at = mirror.access.acceptedAt(credential, realmKey(repository));
    if (at === undefined || now - at > mirror.config.maxStaleMs) return false;
    confirmedAt = Math.min(confirmedAt, at);
  }
  const token = `rpa-offline.${randomBytes(24).toString('base64url')}`;
  // Dated like the confirmation it rests on: minting a token never stretches max_stale.
  for (const repository of repositories) mirror.access.remember(hashCredential(`Bearer ${token}`), repository, confirmedAt);
  const body = Buffer.from(JSON.stringify({ token, access_token: token, expires_in: OFFLINE_TOKEN_TTL_S, issued_at: new Date(now).toISOString() }));
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': String(body.length), 'cache-control': 'no-store' });
  res.end(body);
  return true;
}

async function readRequestBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    for await (const chunk of req) {
      total += (chunk as Buffer).length;
      if (total > limit) throw new OciError('SIZE_INVALID', `request body over ${limit} bytes`, { status: 413 });
      chunks.push(chunk as Buffer);
    }
  } catch (error) {
    // A body the client broke off ("aborted"): the client left, nothing failed here.
    if (!(error instanceof OciError) && req.destroyed) throw new ClientGoneError();
    throw error;
  }
  return Buffer.concat(chunks);
}

/**
 * The realm's answer, read whole under the mirror's body budget (room for its Content-Length, or
 * the 64 KiB limit, first). A puller that hangs up while it waits for room leaves the queue.
 */
function readTokenAnswer(mirror: Mirror, response: UpstreamResponse, res: ServerResponse): Promise<HeldBody> {
  return whileClientWaits(res, {}, ({ signal }) =>
    readBody(mirror.bodies, response.body, {
      announced: contentLength(response),
      limit: MAX_TOKEN_RESPONSE_BYTES,
      signal,
      tooLarge: () => new OciError('UNAVAILABLE', 'token endpoint response too large', { status: 502 }),
      // A realm's body cut short is the realm failing, not an internal error.
      readError: (error) => fromTransportError(mirror.registry, error),
    }),
  );
}
