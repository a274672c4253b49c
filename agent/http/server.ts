import { randomBytes } from 'node:crypto';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import type { Mirror, PullContext } from '../mirror/mirror.ts';
import { OciError } from '../oci/errors.ts';
import { type DistributionRequest, isReadMethod, parseDistributionRequest } from '../oci/request.ts';
import { handleTokenRequest, isTokenRequest } from './auth.ts';
import { toOciError } from './errors.ts';
import { type Outcome, handleBase, handleBlobGet, handleBlobHead, handleManifest } from './handlers.ts';
import type { MirrorSet } from './mirror-set.ts';
import { clientErrorFor, protocolRefusal } from './client-errors.ts';
import { type GuardEvents, type ListenerLimits, answerAndClose, checkingInterval, guardServer } from './guard.ts';
import { redactedTarget } from './redact.ts';
import { ClientGoneError, rawOciResponse, sendOciError } from './respond.ts';

export interface RequestRecord {
  readonly id: string;
  readonly method: string;
  readonly outcome: Outcome;
  readonly status: number;
  readonly durationMs: number;
  readonly error?: OciError;
  readonly aborted: boolean;
}

export interface MirrorServerOptions {
  readonly mirrors: MirrorSet;
  readonly log: Logger;
  /** Called once per finished request (metrics). */
  readonly onRequest?: (record: RequestRecord) => void;
  /** Connection cap and client timeouts of the mirror port. */
  readonly limits: ListenerLimits;
  /** Connections, refusals and timeouts (metrics, logs). */
  readonly events?: GuardEvents;
}

/** containerd keeps connections to a mirror open between the requests of a pull. */
const KEEP_ALIVE_MS = 30_000;
const MAX_REQUESTS_PER_CONNECTION = 1_000;
/** Requests parsed from one connection that may wait behind the one being answered. */
const MAX_PIPELINED = 16;

/** The mirror's HTTP surface: the only code that knows status codes and headers. */
export function createMirrorServer(options: MirrorServerOptions): Server {
  const serve = (req: IncomingMessage, res: ServerResponse): void => void handle(options, req, res);
  const { limits } = options;
  const server = createServer(
    // Host and Expect are checked in handle() (protocolRefusal), so that those refusals are OCI errors too.
    { maxHeaderSize: 16 * 1024, requireHostHeader: false, connectionsCheckingInterval: checkingInterval(limits.requestTimeoutMs) },
    serve,
  );
  server.on('checkExpectation', serve);
  // A forward-proxy tunnel request is never served: this is a mirror, not a proxy.
  server.on('connect', (_req: IncomingMessage, socket: Duplex) => {
    answerAndClose(socket, rawOciResponse(new OciError('UNSUPPORTED', 'CONNECT is not supported: this is a mirror, not a proxy', { headers: { allow: 'GET, HEAD' } })));
  });
  guardServer(server, {
    ...limits,
    keepAliveTimeoutMs: KEEP_ALIVE_MS,
    maxRequestsPerSocket: MAX_REQUESTS_PER_CONNECTION,
    maxPipelined: MAX_PIPELINED,
    refusal: rawOciResponse(
      new OciError('TOOMANYREQUESTS', `the agent is serving its maximum of ${limits.maxConnections} connections (max_connections); retry shortly`, {
        status: 503,
        headers: { 'retry-after': '1' },
      }),
    ),
    clientErrorAnswer: (code) => rawOciResponse(clientErrorFor(code)),
    ...(options.events ? { events: options.events } : {}),
  });
  return server;
}

async function handle(options: MirrorServerOptions, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const started = performance.now();
  const id = randomBytes(8).toString('hex');
  const method = req.method ?? 'GET';
  const outcome: Outcome = { kind: 'base', bytes: 0 };
  let error: OciError | undefined;
  let aborted = false;
  res.setHeader('x-request-id', id);
  try {
    const refusal = protocolRefusal(req);
    if (refusal) {
      req.resume();
      throw refusal;
    }
    if (isTokenRequest(req.url ?? '')) {
      outcome.kind = 'token';
      await handleTokenRequest(options.mirrors, req, res, outcome);
      return;
    }
    // Request bodies are never used; drain them so keep-alive connections stay usable.
    req.resume();
    const request = parse(req);
    outcome.kind = request.kind;
    const mirror = options.mirrors.select(request.ns);
    outcome.registry = mirror.registry;
    await dispatch(mirror, request, req, res, outcome, { authorization: req.headers.authorization });
  } catch (caught) {
    if (caught instanceof ClientGoneError) {
      aborted = true;
    } else {
      error = toOciError(caught);
      if (res.headersSent) aborted = true;
      sendOciError(res, error, method);
    }
  } finally {
    const record: RequestRecord = {
      id,
      method,
      outcome,
      status: res.statusCode,
      durationMs: performance.now() - started,
      ...(error ? { error } : {}),
      aborted,
    };
    logRequest(options.log, req, record);
    options.onRequest?.(record);
  }
}

function parse(req: IncomingMessage): DistributionRequest {
  if (!isReadMethod(req.method)) {
    throw new OciError('UNSUPPORTED', `${req.method ?? ''} is not supported: this mirror is pull-only`, { headers: { allow: 'GET, HEAD' } });
  }
  return parseDistributionRequest(req.url ?? '');
}

async function dispatch(mirror: Mirror, request: DistributionRequest, req: IncomingMessage, res: ServerResponse, outcome: Outcome, ctx: PullContext): Promise<void> {
  const head = req.method === 'HEAD';
  switch (request.kind) {
    case 'base':
      return handleBase(mirror, res, head, ctx);
    case 'manifest':
      return handleManifest(mirror, request, res, head, outcome, ctx);
    case 'blob':
      return head ? handleBlobHead(mirror, request, res, ctx) : handleBlobGet(mirror, request, req, res, outcome, ctx);
  }
}

function logRequest(log: Logger, req: IncomingMessage, record: RequestRecord): void {
  const line = {
    reqId: record.id,
    method: record.method,
    path: redactedTarget((req.url ?? '').slice(0, 512)),
    registry: record.outcome.registry,
    kind: record.outcome.kind,
    cache: record.outcome.cache,
    status: record.status,
    bytes: record.outcome.bytes,
    durationMs: Math.round(record.durationMs),
    ...(record.aborted ? { aborted: true } : {}),
    ...(record.error ? { code: record.error.code, err: causeChain(record.error) } : {}),
  };
  if (record.error && record.status >= 500) log.warn(line, 'request failed');
  else log.info(line, 'request');
}

/** The error and its causes as one readable line (no stack, no headers: nothing secret). */
export function causeChain(error: unknown): string {
  const parts: string[] = [];
  let current: unknown = error;
  for (let depth = 0; depth < 5 && current instanceof Error; depth += 1) {
    parts.push(current.message);
    current = current.cause;
  }
  return parts.join(': ');
}
