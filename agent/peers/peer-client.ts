import { connect as netConnect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { Agent, type Dispatcher, type buildConnector } from 'undici';
import type { Digest } from '../oci/digest.ts';
import type { RepositoryName } from '../oci/reference.ts';
import { PEER_PRIORITY_HEADER } from '../http/server.ts';
import type { PeerIdentity } from './identity.ts';
import type { PeerMember } from './rendezvous.ts';
import { checkPeerServerIdentity } from './x509.ts';

/** One blob request to a peer: what the owner needs to serve it, or to fetch it for us. */
export interface PeerBlobRequest {
  /** The mirror's registry as configured on every agent (`?ns=`). */
  readonly registry: string;
  readonly name: RepositoryName;
  readonly digest: Digest;
  /** The requester's upstream credential (passthrough mirrors), so the owner fetches with it. */
  readonly authorization?: string | undefined;
  /** Bytes already received from another source: only the rest is asked for. */
  readonly offset: number;
  /**
   * Nobody waits for this download yet (preload): the owner fetches it from upstream at background
   * priority in its tunnel budget, as this agent would have (`PEER_PRIORITY_HEADER`).
   */
  readonly background?: boolean;
}


export interface PeerTimeouts {
  readonly connectMs: number;
  /** No response headers, or no body byte, for this long: the peer is left. */
  readonly progressMs: number;
}

const HIGH_WATER_MARK = 256 * 1024;

/** How blobs are asked of peers: the TLS client, or a scripted one in tests. */
export interface PeerTransport {
  /** False until key material is known: peers are not used then. */
  readonly ready: boolean;
  /** GET of the blob (from `request.offset` on) on the member's peer listener; the caller checks the answer. */
  get(member: PeerMember, request: PeerBlobRequest, signal?: AbortSignal): Promise<Dispatcher.ResponseData>;
}

/**
 * The agent's client for other agents' peer listeners: mutual TLS with this agent's certificate,
 * trusting only the agents' CA. Every agent is an equal member, so the server's identity is
 * "issued by the agents' CA" (checked by the chain), not a host name: peers are addressed by IP.
 */
export class PeerClient implements PeerTransport {
  readonly #timeouts: PeerTimeouts;
  #agent: Agent | undefined;

  constructor(timeouts: PeerTimeouts) {
    this.#timeouts = timeouts;
  }

  /** New key material: new connections use it; the old pool closes once its requests finished. */
  setIdentity(identity: PeerIdentity): void {
    const previous = this.#agent;
    this.#agent = new Agent({
      keepAliveTimeout: 30_000,
      connections: 8,
      connect: peerConnector(identity, this.#timeouts),
    });
    void previous?.close().catch(() => undefined);
  }

  get ready(): boolean {
    return this.#agent !== undefined;
  }

  /** GET of the blob (from `offset` on) on the member's peer listener; the caller checks the answer. */
  get(member: PeerMember, request: PeerBlobRequest, signal?: AbortSignal): Promise<Dispatcher.ResponseData> {
    const agent = this.#agent;
    if (!agent) return Promise.reject(new Error('peer key material is not available yet'));
    const headers: Record<string, string> = { 'user-agent': 'registry-proxy-agent-peer' };
    if (request.authorization !== undefined) headers['authorization'] = request.authorization;
    if (request.offset > 0) headers['range'] = `bytes=${request.offset}-`;
    if (request.background === true) headers[PEER_PRIORITY_HEADER] = 'background';
    const path = `/v2/${request.name}/blobs/${request.digest}?ns=${encodeURIComponent(request.registry)}`;
    return agent.request({
      origin: member.url,
      path,
      method: 'GET',
      headers,
      headersTimeout: this.#timeouts.progressMs,
      bodyTimeout: this.#timeouts.progressMs,
      highWaterMark: HIGH_WATER_MARK,
      ...(signal ? { signal } : {}),
    });
  }

  async close(): Promise<void> {
    await this.#agent?.close().catch(() => undefined);
    this.#agent = undefined;
  }
}

/**
 * Connections to peers: `connectMs` bounds the TCP connect alone (a peer that does not accept within
 * it is down, or its port is dropped); the TLS handshake after it gets `progressMs`, like any other
 * wait for a peer. A busy node (the agent's CPU is throttled under load) can take more than a second
 * to handshake: counted against the connect timeout, that would send pulls through the tunnel.
 */
function peerConnector(identity: PeerIdentity, timeouts: PeerTimeouts): buildConnector.connector {
  return (options, callback) => {
    let settled = false;
    const settle = (...args: [null, import('node:tls').TLSSocket] | [Error, null]): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      callback(...(args as Parameters<buildConnector.Callback>));
    };
    const raw = netConnect({ host: options.hostname, port: Number(options.port), noDelay: true });
    const fail = (error: Error): void => {
      raw.destroy();
      settle(error, null);
    };
    let timer = setTimeout(() => fail(timeoutError('UND_ERR_CONNECT_TIMEOUT', `Connect Timeout Error (${options.hostname}:${options.port}, ${timeouts.connectMs} ms)`)), timeouts.connectMs);
    // Kept for the socket's life: errors after the handshake reach undici through the TLS socket.
    raw.on('error', (error) => {
      if (!settled) fail(error);
    });
    raw.once('connect', () => {
      clearTimeout(timer);
      timer = setTimeout(() => fail(timeoutError('PEER_HANDSHAKE_TIMEOUT', `TLS handshake with ${options.hostname}:${options.port} not done within ${timeouts.progressMs} ms`)), timeouts.progressMs);
      const socket = tlsConnect({
        socket: raw,
        ca: identity.ca,
        cert: identity.cert,
        key: identity.key,
        rejectUnauthorized: true,
        checkServerIdentity: checkPeerServerIdentity,
        ALPNProtocols: ['http/1.1'],
      });
      const onError = (error: Error): void => {
        socket.destroy();
        fail(error);
      };
      socket.once('error', onError);
      socket.once('secureConnect', () => {
        socket.off('error', onError);
        settle(null, socket);
      });
    });
  };
}

function timeoutError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}
