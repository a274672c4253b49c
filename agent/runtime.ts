import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { BlobCache } from './cache/blob-cache.ts';
import { isLoopback } from './config/address.ts';
import { type WiringState, wireContainerd } from './containerd/wiring.ts';
import type { AgentConfig, ConnectivityProxyConfig, ListenAddress, MirrorConfig, PeersConfig } from './config/types.ts';
import { createHealthServer } from './health.ts';
import type { GuardEvents, ListenerLimits } from './http/guard.ts';
import { type Instrumentation, type ListenerName, instrument } from './metrics/instrument.ts';
import { AgentMetrics } from './metrics/metrics.ts';
import { MirrorSet } from './http/mirror-set.ts';
import { BodyBudget, DEFAULT_BODY_BUDGET } from './memory/body-budget.ts';
import { createMirrorServer } from './http/server.ts';
import { UpstreamStateLog } from './observe/logs.ts';
import { type RequestRecord, causeChain } from './observe/request-record.ts';
import { Mirror, type ProbeResult } from './mirror/mirror.ts';
import { TagStore, tagMaxAge } from './mirror/tag-store.ts';
import { type BudgetEvents, type TunnelGate, connectivityProxyGate } from './mirror/tunnel-gate.ts';
import { UpstreamClient, type UpstreamTimeouts } from './upstream/client.ts';
import { readCredentials, readSecretFile } from './upstream/credentials.ts';
import type { DestinationRefusal } from './upstream/destination.ts';
import { DestinationPolicy } from './upstream/destination-policy.ts';
import { ClientCredentialsTokenSource, type OAuthTokenSource } from './upstream/oauth.ts';
import { refusalReporter } from './upstream/refusal-log.ts';
import { ConnectivityProxyRoute, DirectRoute, HttpProxyRoute, type Route } from './upstream/routes.ts';
import { FileIdentity } from './peers/file-identity.ts';
import type { PeerIdentitySource } from './peers/identity.ts';
import type { PeerMember } from './peers/rendezvous.ts';
import type { PeerNetwork } from './peers/network.ts';
import { PeerService } from './peers/service.ts';
import { Preloader } from './preload/preloader.ts';
import { nodePlatform } from './preload/platform.ts';
import type { PreloadImageState } from './preload/state.ts';

export interface RuntimeOptions {
  readonly onRequest?: (record: RequestRecord) => void;
  /** Period of the upstream reachability probe (default 30 s; 0 disables it). */
  readonly probeIntervalMs?: number;
  /** Period of the hosts.toml repair and containerd-config re-check (default 60 s; 0 disables it). */
  readonly rewireIntervalMs?: number;
  /** The peer key material when it does not come from files (`[peers.tls] secret`: Kubernetes, wired by main). */
  readonly peerIdentity?: PeerIdentitySource;
}

/**
 * A running agent: cache, mirrors, the mirror listener and the health listener. `main.ts` adds
 * process concerns (CLI, signals); tests start this directly.
 */
export class AgentRuntime {
  #config: AgentConfig;
  readonly cache: BlobCache;
  readonly mirrors: MirrorSet;
  readonly metrics: AgentMetrics;
  readonly #instrumentation: Instrumentation;
  readonly #log: Logger;
  readonly #mirrorServer: Server;
  readonly #healthServer: Server;
  #listening = false;
  #scan: Promise<void> = Promise.resolve();
  #wiring: WiringState | undefined;
  /** Peer sharing (`[peers] enabled`): undefined when off. */
  #peers: PeerService | undefined;

  /** What every mirror is built from besides its own configuration. */
  readonly #parts: MirrorParts;
  /** Bodies held whole in memory (manifests, token answers), across every mirror. */
  readonly bodies: BodyBudget;
  /** Every mirror's `preload` list, and the pins (preloaded and imported images). */
  readonly preloader: Preloader;

  private constructor(config: AgentConfig, mirrors: MirrorSet, options: RuntimeOptions, parts: MirrorParts) {
    const { log, cache, instrumentation } = parts;
    this.#parts = parts;
    this.bodies = parts.bodies;
    this.#config = config;
    this.#log = log;
    this.cache = cache;
    this.mirrors = mirrors;
    this.metrics = instrumentation.metrics;
    this.#instrumentation = instrumentation;
    this.preloader = new Preloader({
      mirrors: () => this.mirrors.list(),
      cache,
      tags: parts.tags,
      pinMaxBytes: config.pinMaxBytes,
      platform: nodePlatform(),
      log: log.child({ component: 'preload' }),
    });
    this.#mirrorServer = createMirrorServer({
      mirrors,
      log: log.child({ component: 'mirror' }),
      onRequest: (record) => {
        instrumentation.request(record);
        options.onRequest?.(record);
      },
      limits: listenerLimits(config.limits, config.limits.maxConnections),
      events: listenerEvents('mirror', 'max_connections', instrumentation, log),
    });
    this.#healthServer = createHealthServer(
      { ready: () => this.#readiness(), metrics: () => instrumentation.scrape(this.cache, this.preloader.report()) },
      listenerLimits(config.limits, config.limits.metricsMaxConnections),
      listenerEvents('metrics', 'metrics_max_connections', instrumentation, log),
    );
  }

  static async start(config: AgentConfig, log: Logger, options: RuntimeOptions = {}): Promise<AgentRuntime> {
    const instrumentation = instrument(new AgentMetrics(), config.cacheMaxBytes, config.pinMaxBytes);
    const cache = new BlobCache(config.cacheDir, config.cacheMaxBytes, {
      corrupt: (digest, error) => {
        instrumentation.corrupt(error);
        log.error({ digest, err: error.message }, 'cached blob failed verification: removed, will refetch');
      },
      fillFailed: (digest, error) => {
        instrumentation.fillFailed(error);
        log.warn({ digest, err: causeChain(error) }, 'blob fetch failed: nothing cached');
      },
      evicted: (digest) => {
        instrumentation.evicted();
        log.debug({ digest }, 'evicted');
      },
      storeError: (operation, error) => log.error({ operation, err: error.message }, 'cache store error'),
      cacheBypassed: (digest, reason) => {
        instrumentation.bypassed();
        log.warn({ digest, err: reason.message }, 'streaming without caching');
      },
    });
    const { removedTemp } = await cache.init();
    if (removedTemp > 0) log.info({ removedTemp }, 'removed partial downloads left by an earlier run');
    const tags = new TagStore(join(config.cacheDir, 'tags'), {
      space: (bytes) => cache.reserveSpace(bytes),
      onPersisting: (persisting) => {
        if (persisting) log.info('tag records are persisted again');
        else log.warn({ fix: 'free space on the cache file system' }, "cache file system at its free-space reserve: tag answers are kept in memory only (a restart forgets them)");
      },
    });
    await tags.init();
    const cpTokens = await connectivityProxyTokens(config.connectivityProxy);
    const upstreamStates = new UpstreamStateLog(log);
    const bodies = new BodyBudget(DEFAULT_BODY_BUDGET, { changed: (state) => instrumentation.bodyBudget(state), refused: (reason) => instrumentation.bodyBudgetRefused(reason) });
    const budgetEvents: BudgetEvents = { waited: (budget, priority, kind, seconds, bytes) => instrumentation.budgetWait(budget, priority, kind, seconds, bytes) };
    // Built once: the tunnel's budget holds across every mirror on the route, and across reloads.
    const tunnel = config.connectivityProxy && connectivityProxyGate(config.connectivityProxy.budget, budgetEvents);
    // The mirror port is bound after the mirrors are built: its URL is looked up when a challenge needs it.
    let runtime: AgentRuntime | undefined;
    const parts: MirrorParts = {
      peers: () => runtime?.peers?.network,
      agentBase: () => (runtime ? agentUrlForContainerd(config.listen, runtime.#mirrorServer) : ''),
      cp: config.connectivityProxy,
      cpTokens,
      cache,
      tags,
      log,
      instrumentation,
      upstreamStates,
      timeouts: config.upstreamTimeouts,
      limits: config.limits,
      bodies,
      tunnel,
      budgetEvents,
    };
    const mirrors = new MirrorSet(await Promise.all(config.mirrors.map((m) => buildMirror(m, parts))));
    runtime = new AgentRuntime(config, mirrors, options, parts);
    await runtime.#startPeers(options.peerIdentity);
    await runtime.#listen();
    runtime.#scan = runtime.#rebuildIndex();
    // Offline catalogs, imported pins and preloads read the cache: they start once it is indexed.
    const started = runtime;
    void runtime.#scan.then(() => started.#afterScan());
    await runtime.rewire();
    runtime.#startProbe(options.probeIntervalMs ?? 30_000);
    runtime.#startRewire(options.rewireIntervalMs ?? 60_000);
    runtime.#startTagSweep();
    return runtime;
  }

  #probeTimer: NodeJS.Timeout | undefined;
  /** Last probe result per registry, for the node report (Kubernetes status). */
  readonly #probes = new Map<string, ProbeResult>();
  #rewireTimer: NodeJS.Timeout | undefined;
  #tagSweepTimer: NodeJS.Timeout | undefined;

  /**
   * containerd's config can change under the agent (an admin sets config_path) and a hosts.toml
   * can be deleted by hand: re-check periodically. Reconciling is idempotent (no rewrite when the
   * content is right) and the verdict is logged only when it changes.
   */
  #startRewire(intervalMs: number): void {
    if (intervalMs <= 0) return;
    this.#rewireTimer = setInterval(() => {
      this.rewire().catch((error: unknown) => this.#log.error({ err: (error as Error).message }, 'hosts.toml reconcile failed'));
    }, intervalMs);
    this.#rewireTimer.unref();
  }

  /**
   * Tag records outlive their use (a tag pulled once, a mirror removed): expired ones are removed
   * after the start-up cache scan and then hourly, by the mirrors configured at that moment.
   */
  #startTagSweep(intervalMs = 3_600_000): void {
    const sweep = async (): Promise<void> => {
      try {
        const { removed, kept } = await this.#parts.tags.sweep(tagMaxAge(this.#config.mirrors));
        if (removed > 0) this.#log.info({ removed, kept }, 'expired tag records removed');
        else this.#log.debug({ kept }, 'no expired tag records');
      } catch (error) {
        this.#log.warn({ err: (error as Error).message }, 'tag record sweep failed');
      }
    };
    void this.#scan.then(sweep);
    this.#tagSweepTimer = setInterval(() => void sweep(), intervalMs);
    this.#tagSweepTimer.unref();
  }

  /** Periodic GET /v2/ through each mirror's route: 200 or 401 means upstream is reachable. */
  #startProbe(intervalMs: number): void {
    if (intervalMs <= 0) return;
    const probe = (): void => {
      for (const mirror of this.mirrors.list()) {
        mirror.probe().then((result) => this.#probed(mirror.registry, result));
      }
    };
    probe();
    this.#probeTimer = setInterval(probe, intervalMs);
    this.#probeTimer.unref();
  }

  async #afterScan(): Promise<void> {
    try {
      await this.#refreshOffline(this.mirrors.list());
      await this.preloader.refreshImports();
    } catch (error) {
      this.#log.error({ err: (error as Error).message }, 'reading offline and imported images failed');
    }
    this.preloader.apply();
  }

  async #refreshOffline(mirrors: readonly Mirror[]): Promise<void> {
    for (const mirror of mirrors) {
      if (!mirror.offline) continue;
      const links = await mirror.refreshOffline();
      this.#log.info({ registry: mirror.registry, content: links }, 'offline mirror: serving its tag records and what they name from the cache');
    }
  }

  /**
   * SIGHUP: files written into the cache by `registry-proxy-agent import` while the agent ran are
   * indexed, tag records are read again, offline mirrors and pins follow.
   */
  async reloadContent(): Promise<void> {
    await this.#scan;
    const { blobs } = await this.cache.scan();
    this.#parts.tags.forgetMemory();
    await this.#refreshOffline(this.mirrors.list());
    await this.preloader.refreshImports();
    this.#log.info({ found: blobs }, 'cache and tag records read again');
  }

  /** This node's preload entries of `registry` (the node report, metrics). */
  preloadStates(registry: string): readonly PreloadImageState[] {
    return this.preloader.states(registry);
  }

  /** Runs the upstream probe once for every mirror (tests, and the first scrape). */
  async probeNow(): Promise<void> {
    await Promise.all(this.mirrors.list().map(async (m) => this.#probed(m.registry, await m.probe())));
  }

  #probed(registry: string, result: ProbeResult): void {
    this.#probes.set(registry, result);
    this.#instrumentation.upstreamUp(registry, result.up);
    this.#parts.upstreamStates.probed(registry, result.up, result.cause);
  }

  /** Why the last probe found `registry`'s upstream unreachable; undefined while it is reachable or not probed yet. */
  upstreamProblem(registry: string): { cause: string; detail: string } | undefined {
    const result = this.#probes.get(registry);
    if (!result || result.up) return undefined;
    return { cause: result.cause ?? 'unreachable', detail: result.detail ?? '' };
  }

  get config(): AgentConfig {
    return this.#config;
  }

  /**
   * Replaces the set of mirrors live (config reload, RegistryMirror changes): unchanged mirrors keep
   * their state (tag answers, access memory, connection pools), changed ones are rebuilt, removed
   * ones close their pools once in-flight requests finished; hosts.toml follows.
   */
  async setMirrors(mirrors: readonly MirrorConfig[]): Promise<{ added: string[]; changed: string[]; removed: string[] }> {
    const current = new Map(this.mirrors.list().map((m) => [m.registry, m]));
    const next: Mirror[] = [];
    const added: string[] = [];
    const changed: string[] = [];
    const retired: Mirror[] = [];
    try {
      for (const config of mirrors) {
        const existing = current.get(config.registry);
        current.delete(config.registry);
        if (existing && sameMirror(existing.config, config)) {
          next.push(existing);
          continue;
        }
        next.push(await buildMirror(config, this.#parts));
        if (existing) {
          changed.push(config.registry);
          retired.push(existing);
        } else {
          added.push(config.registry);
        }
      }
    } catch (error) {
      // Counted here, once, for every caller (SIGHUP and Kubernetes); the running mirrors stay and
      // the ones already built for the new set are closed, not leaked with their connection pools.
      this.metrics.configReloads.inc({ result: 'error' });
      const running = new Set(this.mirrors.list());
      for (const mirror of next) if (!running.has(mirror)) void mirror.upstream.close().catch(() => undefined);
      throw error;
    }
    const removed = [...current.keys()];
    // A removed or rebuilt mirror's last probe says nothing about what serves now.
    for (const registry of [...removed, ...changed]) this.#probes.delete(registry);
    retired.push(...current.values());
    this.mirrors.replace(next);
    this.#config = { ...this.#config, mirrors: [...mirrors] };
    const built = new Set([...added, ...changed]);
    void this.#scan
      .then(() => this.#refreshOffline(next.filter((m) => built.has(m.registry))))
      .catch((error: unknown) => this.#log.error({ err: (error as Error).message }, 'reading an offline mirror\'s tag records failed'))
      .finally(() => this.preloader.apply());
    for (const mirror of retired) void mirror.upstream.close().catch(() => undefined);
    this.metrics.configReloads.inc({ result: 'ok' });
    if (added.length + changed.length + removed.length > 0) {
      this.#log.info({ added, changed, removed }, 'mirrors reconfigured');
      await this.rewire();
    }
    return { added, changed, removed };
  }

  /** hosts.toml files and containerd's config verdict, as last reconciled. */
  get wiring(): WiringState | undefined {
    return this.#wiring;
  }

  /** Writes hosts.toml for the configured mirrors and re-reads containerd's config. */
  async rewire(): Promise<WiringState> {
    this.#wiring = await wireContainerd(this.config, agentUrlForContainerd(this.config.listen, this.#mirrorServer), this.#log, this.#wiring?.containerd);
    this.#instrumentation.wiring(this.#wiring);
    return this.#wiring;
  }

  /** The mirror endpoint containerd is pointed at, with the port actually bound. */
  get mirrorUrl(): string {
    return urlOf(this.#mirrorServer);
  }

  get healthUrl(): string {
    return urlOf(this.#healthServer);
  }

  /** Resolves when the start-up index rebuild finished (tests). */
  scanned(): Promise<void> {
    return this.#scan;
  }

  /** Stops accepting connections and waits (bounded) for in-flight responses to finish. */
  async stop(graceMs = 25_000): Promise<void> {
    this.#listening = false;
    if (this.#probeTimer) clearInterval(this.#probeTimer);
    if (this.#rewireTimer) clearInterval(this.#rewireTimer);
    if (this.#tagSweepTimer) clearInterval(this.#tagSweepTimer);
    this.preloader.stop();
    const timer = setTimeout(() => this.#mirrorServer.closeAllConnections(), graceMs);
    this.#mirrorServer.closeIdleConnections();
    await Promise.all([closeServer(this.#mirrorServer), closeServer(this.#healthServer), this.#peers?.stop(graceMs)]);
    clearTimeout(timer);
    await Promise.all(this.mirrors.list().map((m) => m.upstream.close().catch(() => undefined)));
  }

  /** Peer sharing, when `[peers] enabled`: its listener is up (or waits for key material) before the mirror port. */
  async #startPeers(external: PeerIdentitySource | undefined): Promise<void> {
    const config = this.#config.peers;
    if (!config?.enabled) return;
    const identity = config.tls.kind === 'files' ? new FileIdentity(config.tls) : external;
    if (!identity) throw new Error('[peers.tls] secret needs [kubernetes] enabled = true (or set ca_file, cert_file and key_file)');
    const instrumentation = this.#instrumentation;
    this.#peers = new PeerService({
      config,
      mirrors: this.mirrors,
      identity,
      log: this.#log,
      events: instrumentation.peers,
      onRequest: (record) => instrumentation.peerServed(record.outcome.bytes),
      limits: this.#config.limits,
      guardEvents: listenerEvents('peer', 'peers.max_connections', instrumentation, this.#log),
    });
    await this.#peers.start();
  }

  /** Peer sharing's view of this node and the others; undefined when off. */
  get peers(): PeerService | undefined {
    return this.#peers;
  }

  /** A new member list (EndpointSlices in Kubernetes); ignored when peer sharing is off. */
  setPeerMembers(members: readonly PeerMember[]): void {
    this.#peers?.setMembers(members);
  }

  /** SIGHUP: the file's static members and key material files apply live (turning peers on or off needs a restart). */
  async reloadPeers(next: PeersConfig | undefined): Promise<void> {
    if (!this.#peers || !next) return;
    if (next.members) this.#peers.setMembers(next.members);
    await this.#peers.reloadIdentity(next.tls);
  }

  async #listen(): Promise<void> {
    await listen(this.#mirrorServer, this.config.listen);
    await listen(this.#healthServer, this.config.metricsListen);
    this.#listening = true;
    if (!isLoopback(this.config.listen.host)) {
      this.#log.warn(
        { listen: this.mirrorUrl },
        'the mirror port is reachable from the network (allow_non_loopback_listen = true): anyone who reaches it can pull what the agent caches',
      );
    }
    this.#log.info(
      { listen: this.mirrorUrl, health: this.healthUrl, registries: this.mirrors.list().map((m) => m.registry), config: this.config.source },
      'mirror listening',
    );
  }

  async #rebuildIndex(): Promise<void> {
    try {
      const { blobs, bytes } = await this.cache.scan();
      const { bytes: kept, entries } = this.cache.stats();
      this.#log.info({ found: blobs, foundBytes: bytes, entries, bytes: kept, maxBytes: this.config.cacheMaxBytes }, 'cache index rebuilt');
    } catch (error) {
      this.#log.error({ err: (error as Error).message }, 'cache index rebuild failed');
    }
  }

  #readiness(): { ok: boolean; reason?: string } {
    if (!this.#listening) return { ok: false, reason: 'mirror listener is not up' };
    if (!this.cache.ready) return { ok: false, reason: 'cache index is being rebuilt' };
    return { ok: true };
  }
}

/** What every mirror is built from besides its own configuration: the agent's shared parts. */
interface MirrorParts {
  /** The other agents, once peer sharing started (undefined when off). */
  readonly peers: () => PeerNetwork | undefined;
  /** The agent's URL as pullers reach it: token realms in challenges are rewritten to it. */
  readonly agentBase: () => string;
  readonly cp: ConnectivityProxyConfig | undefined;
  readonly cpTokens: OAuthTokenSource | undefined;
  readonly cache: BlobCache;
  readonly tags: TagStore;
  readonly log: Logger;
  readonly instrumentation: Instrumentation;
  /** Upstream failures and recoveries into the log, once per change of state. */
  readonly upstreamStates: UpstreamStateLog;
  readonly timeouts: UpstreamTimeouts;
  readonly limits: AgentConfig['limits'];
  readonly bodies: BodyBudget;
  /** The Connectivity Proxy's budget (`[connectivity_proxy]` max_fetches, max_bytes_per_second), shared by the mirrors on that route. */
  readonly tunnel: TunnelGate | undefined;
  readonly budgetEvents: BudgetEvents;
}

async function buildMirror(config: MirrorConfig, parts: MirrorParts): Promise<Mirror> {
  const { agentBase, cp, cpTokens, cache, tags, log, instrumentation, upstreamStates, timeouts, limits, bodies, peers, tunnel, budgetEvents } = parts;
  const credentials = config.auth === 'agent' ? await readCredentials(config) : undefined;
  const upstreamLog = log.child({ component: 'upstream', registry: config.registry });
  const onRefused = refusalReporter(upstreamLog, (reason) => instrumentation.destinationRefused(config.registry, reason));
  const route = buildRoute(config, cp, cpTokens, timeouts.connectMs, onRefused);
  const upstream = new UpstreamClient({
    registry: config.registry,
    base: config.upstream,
    credentials,
    route,
    auth: config.auth,
    timeouts,
    observe: (o) => {
      instrumentation.upstream(o);
      upstreamStates.observe(o);
    },
    realmMap: config.realmMap,
    log: upstreamLog,
  });
  return new Mirror({
    config,
    upstream,
    cache,
    tags,
    bodies,
    agentBase,
    peers,
    upstreamBlobBytes: (bytes) => instrumentation.upstreamBlobBytes(config.registry, bytes),
    tunnel: config.route === 'connectivity-proxy' ? tunnel : undefined,
    budgetEvents,
    log: log.child({ component: 'mirror', registry: config.registry }),
    slots: { running: limits.maxFillsPerMirror, queued: limits.maxQueuedFillsPerMirror, onEvent: (event) => instrumentation.fillSlot(config.registry, event) },
  });
}

/** A listener's limits: its own connection cap, the client timeouts both listeners share. */
function listenerLimits(limits: AgentConfig['limits'], maxConnections: number): ListenerLimits {
  return { maxConnections, requestTimeoutMs: limits.requestTimeoutMs, sendTimeoutMs: limits.sendTimeoutMs };
}

/** A listener's connections and timeouts into metrics; reaching the cap (and leaving it) into the log. */
function listenerEvents(listener: ListenerName, capKey: string, instrumentation: Instrumentation, log: Logger): GuardEvents {
  return {
    connection: (event) => instrumentation.connection(listener, event),
    cut: (reason) => instrumentation.connectionCut(listener, reason),
    saturated: (atCap) => {
      if (atCap) log.warn({ listener, fix: `find the client holding the connections (ss -tnp), or raise ${capKey}` }, `${listener} port at its connection cap: new connections are answered 503 and closed`);
      else log.info({ listener }, `${listener} port below its connection cap again`);
    },
  };
}

/** Same configuration, credentials included (compared, never printed). */
function sameMirror(a: MirrorConfig, b: MirrorConfig): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** The mirror's route, with its destination policy (`onRefused`: count and log each refusal). */
function buildRoute(
  config: MirrorConfig,
  cp: ConnectivityProxyConfig | undefined,
  cpTokens: OAuthTokenSource | undefined,
  connectMs: number,
  onRefused: (refusal: DestinationRefusal) => void,
): Route {
  const destinations = new DestinationPolicy({ registry: config.registry, upstream: config.upstream, route: config.route, allowed: config.allowedDestinations, onRefused });
  switch (config.route) {
    case 'connectivity-proxy':
      if (!cp) throw new Error(`mirror ${config.registry}: route connectivity-proxy without [connectivity_proxy]`);
      return new ConnectivityProxyRoute({ proxy: cp.url, locationId: config.locationId ?? cp.locationId, tokens: cpTokens, connectTimeoutMs: connectMs, destinations });
    case 'http-proxy':
      if (!config.httpProxy) throw new Error(`mirror ${config.registry}: route http-proxy without http_proxy`);
      return new HttpProxyRoute(config.httpProxy, connectMs, config.ca, destinations);
    default:
      return new DirectRoute(connectMs, config.ca, destinations);
  }
}

async function connectivityProxyTokens(cp: ConnectivityProxyConfig | undefined): Promise<OAuthTokenSource | undefined> {
  if (!cp?.tokenUrl || !cp.clientId || !cp.clientSecretFile) return undefined;
  return new ClientCredentialsTokenSource({ tokenUrl: cp.tokenUrl, clientId: cp.clientId, clientSecret: await readSecretFile(cp.clientSecretFile) });
}

function listen(server: Server, address: ListenAddress): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** The URL written into hosts.toml: the configured listen host with the port actually bound. */
function agentUrlForContainerd(listen: ListenAddress, server: Server): string {
  const port = (server.address() as AddressInfo).port;
  const host = listen.host.includes(':') ? `[${listen.host}]` : listen.host === 'localhost' ? '127.0.0.1' : listen.host;
  return `http://${host}:${port}`;
}

function urlOf(server: Server): string {
  const address = server.address() as AddressInfo | null;
  if (!address) return '';
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return `http://${host}:${address.port}`;
}
