import { type IncomingMessage, type Server, type ServerOptions, type ServerResponse, createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { SecureContextOptions } from 'node:tls';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { logRequest } from '../observe/logs.ts';
import { type RequestRecord, ResponseRecorder } from '../observe/request-record.ts';
import type { OciError } from '../oci/errors.ts';
import { type DistributionRequest, isReadMethod, parseDistributionRequest } from '../oci/request.ts';
import { handleTokenRequest, isTokenRequest } from './auth.ts';
import { refusals, toOciError } from './errors.ts';
import { type RequestContext, handleBase, handleBlobGet, handleBlobHead, handleManifest, isHead } from './handlers.ts';
import type { MirrorSet } from './mirror-set.ts';
import { clientErrorFor, protocolRefusal } from './client-errors.ts';
import { type GuardEvents, type ListenerLimits, answerAndClose, checkingInterval, guardServer } from './guard.ts';
import { redactedTarget } from './redact.ts';
import { ClientGoneError, rawOciResponse, sendOciError } from './respond.ts';

export interface MirrorServerOptions {
  readonly mirrors: MirrorSet;
  readonly log: Logger;
  /** Called once per finished request (metrics). */
  readonly onRequest?: (record: RequestRecord) => void;
  /** Connection cap and client timeouts of the mirror port. */
  readonly limits: ListenerLimits;
  /** Connections, refusals and timeouts (metrics, logs). */
  readonly events?: GuardEvents;
  /**
   * The peer listener instead of the mirror port: other agents only (mutual TLS with this key
   * material: a client without a certificate from the agents' CA is refused in the handshake),
   * blob GETs only, served without an access decision of its own (the asking agent made it).
   */
  readonly peer?: SecureContextOptions;
}

/** containerd keeps connections to a mirror open between the requests of a pull. */
const KEEP_ALIVE_MS = 30_000;
const MAX_REQUESTS_PER_CONNECTION = 1_000;
/** Requests parsed from one connection that may wait behind the one being answered. */
const MAX_PIPELINED = 16;
/**
 * The peer listener counts connections before their TLS handshake (it cannot know who is who
 * earlier): one address may hold this many (an agent opens at most 8 to a peer), and a handshake
 * must be done within PEER_HANDSHAKE_MS, so a pod cannot fill the cap that agents need.
 */
const PEER_MAX_PER_ADDRESS = 16;
const PEER_HANDSHAKE_MS = 5_000;

/** The mirror's HTTP surface: the only code that knows status codes and headers. */
export function createMirrorServer(options: MirrorServerOptions): Server {
  const serve = (req: IncomingMessage, res: ServerResponse): void => void handle(options, req, res);
  const { limits } = options;
  // Host and Expect are checked in handle() (protocolRefusal), so that those refusals are OCI errors too.
  const http: ServerOptions = { maxHeaderSize: 16 * 1024, requireHostHeader: false, connectionsCheckingInterval: checkingInterval(limits.requestTimeoutMs) };
  const server: Server = options.peer
    ? (createTlsServer(
        { ...http, ...options.peer, requestCert: true, rejectUnauthorized: true, handshakeTimeout: Math.min(limits.requestTimeoutMs, PEER_HANDSHAKE_MS) },
        serve,
      ) as unknown as Server)
    : createServer(http, serve);
  server.on('checkExpectation', serve);
  // A forward-proxy tunnel request is never served: this is a mirror, not a proxy.
  server.on('connect', (_req: IncomingMessage, socket: Duplex) => {
    answerAndClose(socket, rawOciResponse(refusals.connect()));
  });
  guardServer(server, {
    ...limits,
    keepAliveTimeoutMs: KEEP_ALIVE_MS,
    maxRequestsPerSocket: MAX_REQUESTS_PER_CONNECTION,
    maxPipelined: MAX_PIPELINED,
    // Over the cap a peer connection is closed before its handshake: a plain-text answer means nothing to a TLS client.
    refusal: options.peer ? '' : rawOciResponse(refusals.connectionCap(limits.maxConnections)),
    ...(options.peer ? { maxPerAddress: PEER_MAX_PER_ADDRESS } : {}),
    clientErrorAnswer: (code) => rawOciResponse(clientErrorFor(code)),
    ...(options.events ? { events: options.events } : {}),
  });
  return server;
}

async function handle(options: MirrorServerOptions, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const method = req.method ?? 'GET';
  const recorder = new ResponseRecorder(method);
  let error: OciError | undefined;
  let aborted = false;
  res.setHeader('x-request-id', recorder.id);
  try {
    const refusal = protocolRefusal(req);
    if (refusal) {
      req.resume();
      throw refusal;
    }
    if (options.peer) {
      req.resume();
      const request = parsePeer(req);
      recorder.setKind(request.kind);
      const mirror = options.mirrors.select(request.ns);
      recorder.setRegistry(mirror.registry);
      // An agent's preload stays background here too: the owner's tunnel budget ranks it as such.
      const background = req.headers[PEER_PRIORITY_HEADER] === 'background';
      await handleBlobGet({ mirror, request, req, res, recorder, pull: { authorization: req.headers.authorization, fromPeer: true, ...(background ? { priority: 'background' as const } : {}) } });
      return;
    }
    if (isTokenRequest(req.url ?? '')) {
      recorder.setKind('token');
      await handleTokenRequest(options.mirrors, { req, res, recorder });
      return;
    }
    // Request bodies are never used; drain them so keep-alive connections stay usable.
    req.resume();
    const request = parse(req);
    recorder.setKind(request.kind);
    const mirror = options.mirrors.select(request.ns);
    recorder.setRegistry(mirror.registry);
    await dispatch({ mirror, request, req, res, recorder, pull: { authorization: req.headers.authorization } });
  } catch (caught) {
    if (caught instanceof ClientGoneError) {
      aborted = true;
    } else {
      error = toOciError(caught);
      if (res.headersSent) aborted = true;
      sendOciError(res, error, method);
    }
  } finally {
    const record = recorder.finish({ status: res.statusCode, error, aborted });
    logRequest(options.log, record, redactedTarget((req.url ?? '').slice(0, 512)));
    options.onRequest?.(record);
  }
}

function parse(req: IncomingMessage): DistributionRequest {
  if (!isReadMethod(req.method)) {
    throw refusals.method(req.method ?? '');
  }
  return parseDistributionRequest(req.url ?? '');
}

/**
 * Sent by an agent whose peer download is background work (preload); read only on the peer
 * listener, where every client is an agent (mutual TLS).
 */
export const PEER_PRIORITY_HEADER = 'x-registry-proxy-priority';

/** The peer listener answers blob GETs and nothing else. */
function parsePeer(req: IncomingMessage): Extract<DistributionRequest, { kind: 'blob' }> {
  if (req.method !== 'GET') throw refusals.peerMethod(req.method ?? '');
  const request = parseDistributionRequest(req.url ?? '');
  if (request.kind !== 'blob') throw refusals.peerOnlyBlobs();
  return request;
}

async function dispatch(ctx: RequestContext): Promise<void> {
  const { request } = ctx;
  switch (request.kind) {
    case 'base':
      return handleBase(ctx);
    case 'manifest':
      return handleManifest({ ...ctx, request });
    case 'blob':
      return isHead(ctx.req) ? handleBlobHead({ ...ctx, request }) : handleBlobGet({ ...ctx, request });
  }
}
