import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { PeersConfig, PeerTlsConfig } from '../config/types.ts';
import type { GuardEvents } from '../http/guard.ts';
import type { MirrorSet } from '../http/mirror-set.ts';
import { createMirrorServer } from '../http/server.ts';
import type { RequestRecord } from '../observe/request-record.ts';
import { FileIdentity } from './file-identity.ts';
import type { PeerIdentity, PeerIdentitySource } from './identity.ts';
import { type PeerEvents, PeerNetwork } from './network.ts';
import { PeerClient } from './peer-client.ts';
import type { PeerMember } from './rendezvous.ts';

export interface PeerServiceDeps {
  readonly config: PeersConfig;
  readonly mirrors: MirrorSet;
  readonly identity: PeerIdentitySource;
  /** The agent's logger: the service logs as `peers`, its listener as `peer-listener`. */
  readonly log: Logger;
  readonly events?: PeerEvents;
  /** Each finished request on the peer listener (bytes served to peers, the access log). */
  readonly onRequest?: (record: RequestRecord) => void;
  readonly limits: { readonly requestTimeoutMs: number; readonly sendTimeoutMs: number };
  readonly guardEvents?: GuardEvents;
}

/**
 * Peer sharing on this node: the network view (members, owners, penalties), the client to other
 * agents, and the peer listener (mutual TLS on the node IP). Both sides take their key material
 * from the identity source and follow it when it changes; until there is one, the listener is not
 * bound and blobs go upstream (fail closed).
 */
export class PeerService {
  readonly network: PeerNetwork;
  readonly #config: PeersConfig;
  readonly #identity: PeerIdentitySource;
  readonly #client: PeerClient;
  readonly #server: Server;
  readonly #log: Logger;
  #unsubscribe: (() => void) | undefined;
  #listening: Promise<void> | undefined;

  constructor(deps: PeerServiceDeps) {
    const { config } = deps;
    const log = deps.log.child({ component: 'peers' });
    this.#config = config;
    this.#identity = deps.identity;
    this.#log = log;
    this.#client = new PeerClient({ connectMs: config.connectTimeoutMs, progressMs: config.progressTimeoutMs });
    this.network = new PeerNetwork({
      self: config.nodeName,
      members: config.members ?? [],
      client: this.#client,
      log,
      progressMs: config.progressTimeoutMs,
      ...(deps.events ? { events: deps.events } : {}),
    });
    this.#server = createMirrorServer({
      mirrors: deps.mirrors,
      log: deps.log.child({ component: 'peer-listener' }),
      ...(deps.onRequest ? { onRequest: deps.onRequest } : {}),
      limits: { requestTimeoutMs: deps.limits.requestTimeoutMs, sendTimeoutMs: deps.limits.sendTimeoutMs, maxConnections: config.maxConnections },
      ...(deps.guardEvents ? { events: deps.guardEvents } : {}),
      peer: {},
    });
  }

  /** Starts the identity source; binds the listener as soon as there is an identity. */
  async start(): Promise<void> {
    // Started before subscribing: the first identity is used once, here, and a listen error is thrown.
    await this.#identity.start();
    this.#unsubscribe = this.#identity.subscribe((identity) => {
      this.#use(identity).catch((error: unknown) => this.#log.error({ err: (error as Error).message, listen: this.#config.listen }, 'peer listener could not start'));
    });
    const identity = this.#identity.current();
    if (identity) await this.#use(identity);
    else this.#log.warn('no peer key material yet: blobs are fetched from upstream until it is there');
  }

  setMembers(members: readonly PeerMember[]): void {
    this.network.setMembers(members);
  }

  /**
   * SIGHUP: reads file key material again, from the paths of the reloaded configuration; other
   * sources follow their own changes. A switch between files and the CA Secret needs a restart.
   */
  async reloadIdentity(tls: PeerTlsConfig): Promise<void> {
    if (this.#identity instanceof FileIdentity && tls.kind === 'files') {
      if (await this.#identity.reload(tls)) this.#log.info({ ca: tls.caFile, cert: tls.certFile }, 'peer key material reloaded');
      return;
    }
    if ((this.#identity instanceof FileIdentity) !== (tls.kind === 'files')) {
      this.#log.warn({ tls: tls.kind }, 'peers.tls switched between files and the CA Secret: restart the agent to apply');
    }
  }

  /** `https://host:port` of the bound listener; '' before it is bound. */
  get url(): string {
    const address = this.#server.address() as AddressInfo | null;
    if (!address) return '';
    return `https://${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`;
  }

  /** Resolves once the listener is bound (tests). */
  listening(): Promise<void> {
    return this.#listening ?? Promise.reject(new Error('the peer listener has no key material yet'));
  }

  async stop(graceMs = 5_000): Promise<void> {
    this.#unsubscribe?.();
    await this.#identity.stop();
    const timer = setTimeout(() => this.#server.closeAllConnections(), graceMs);
    this.#server.closeIdleConnections();
    await new Promise<void>((resolve) => (this.#server.listening ? this.#server.close(() => resolve()) : resolve()));
    clearTimeout(timer);
    await this.#client.close();
  }

  async #use(identity: PeerIdentity): Promise<void> {
    this.#client.setIdentity(identity);
    (this.#server as unknown as { setSecureContext(options: object): void }).setSecureContext({ ca: identity.ca, cert: identity.cert, key: identity.key });
    if (this.#listening) return;
    this.#listening = new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.#config.listen.port, this.#config.listen.host, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    await this.#listening;
    this.#log.info({ listen: this.url, node: this.#config.nodeName, members: this.network.size }, 'peer listener up (mutual TLS)');
  }
}
