/**
 * Kubernetes integration (issue 8): mirrors from RegistryMirror resources, and their status.
 *
 * Why this holds at 5,000 nodes without write storms or lost updates:
 *
 * - **Reads are watches.** Every agent keeps one watch on RegistryMirrors (cluster-wide, a handful of
 *   objects) and one on the Secrets of its own namespace; a reconnect resumes from the last
 *   resourceVersion, a 410 relists. Watches ask for bookmarks, so a quiet watch's resourceVersion keeps
 *   up with the API server instead of falling behind compaction. Nothing polls the API server except the
 *   leader candidates, once per lease duration, from the watch cache (resourceVersion=0).
 * - **Each agent writes only its own object.** A node's state is one Lease `rpa-node-<node>` in the
 *   agent namespace with the report as an annotation. It is written only when the report changes, plus
 *   a renewal every 10 minutes (5,000 nodes: ~8 writes/s cluster-wide at steady state), so "node gone"
 *   (no renewal for 30 minutes) can be told from "node quiet". No two agents ever write the same
 *   object, so there are no conflicts to retry and no update can be lost to another writer.
 * - **A cluster-wide flip is not a write burst.** When every node changes at once (the Cloud Connector
 *   goes down), a node writes its changed report only after the new state has held for 20 s, plus a
 *   random 0–10 s of its own; a state that flips back sooner is never written. One flip of 5,000
 *   nodes is spread over the jitter at least (≤ 500 writes/s, the rate the kubelets' own node Leases
 *   run at all the time) and in practice also over the nodes' 30 s probe periods (~100 writes/s); a
 *   tunnel flapping faster than the settle time costs no writes at all.
 * - **One writer per RegistryMirror status.** A single elected leader (Lease
 *   `registry-proxy-agent-leader`, 30 s, optimistic concurrency) watches the report Leases and folds
 *   them into each RegistryMirror's status with server-side apply (field manager
 *   `registry-proxy-agent`, forced). It compares with what the object already says and applies only a
 *   difference, at most once per 10 s per RegistryMirror, whatever the number of nodes. A new leader
 *   recomputes from the Leases, so nothing is lost on failover.
 * - **Objects stay bounded.** Status holds counts plus at most 10 failing nodes (sorted by name, each
 *   message ≤ 256 characters), and per `spec.preload` image (at most 100) its node counts, digest and
 *   one error; a report holds one small entry per RegistryMirror with its preload entries (8-hex
 *   image keys), within 16 KiB for up to a couple of hundred RegistryMirrors (see report.ts for what
 *   gives way first). Only the leader creates Events: one when a RegistryMirror's Ready
 *   condition changes status or reason, for all nodes together, never per node and never on a timer.
 * - **Preload progress is a report change like any other.** The runtime is the reporter's NodeView:
 *   its preloadStates(registry) feed each report; a changed phase or digest waits for the settle time,
 *   so a node reports its preload progress once it has held for 20 s (plus jitter).
 * - **The data path never waits for the API.** The agent keeps serving its last good configuration
 *   while the API server is down, and after a restart it serves the persisted last good set.
 */
import type { Logger } from 'pino';
import type { AgentConfig, KubernetesConfig, MirrorConfig } from '../config/types.ts';
import type { AgentRuntime } from '../runtime.ts';
import { StatusAggregator } from './aggregator.ts';
import { KubeClient } from './client.ts';
import type { Backoff } from './informer.ts';
import { LeaderElector } from './leader.ts';
import { MirrorSource } from './mirror-source.ts';
import { NodeReporter } from './node-report.ts';
import { KubePeerIdentity } from './peer-ca.ts';
import { EndpointSliceMembers } from './peer-members.ts';
import type { PeerIdentitySource } from '../peers/identity.ts';

/** Timings; the defaults are the production ones, tests shorten them. */
export interface KubernetesOptions {
  /** RegistryMirror/Secret changes within this window are applied together (default 200 ms). */
  readonly debounceMs?: number;
  /** How long start waits for the first list before serving the persisted mirrors (default 5 s). */
  readonly initialSyncTimeoutMs?: number;
  /** Informer restart backoff after errors (default 1 s doubling to 30 s). */
  readonly backoff?: Backoff;
  /** Local re-evaluation of this node's report (default 10 s; no API reads). */
  readonly reportIntervalMs?: number;
  /** Renewal of an unchanged report (default 10 min). */
  readonly reportRenewMs?: number;
  /** A changed report is written once its state has held this long (default 20 s)... */
  readonly reportSettleMs?: number;
  /** ...plus up to this much random jitter per change (default 10 s). */
  readonly reportJitterMs?: number;
  /** Reports older than this are ignored by the leader (default 30 min). */
  readonly staleReportMs?: number;
  /** Leader lease duration (default 30 s). */
  readonly leaseDurationMs?: number;
  /** Status aggregation period of the leader (default 10 s). */
  readonly aggregateIntervalMs?: number;
}

/**
 * Wiring: `prepare` before the runtime starts (it reads the persisted mirrors, so the runtime starts
 * with them and a restart never drops a hosts.toml), `start` once the runtime runs.
 */
export class KubernetesIntegration {
  readonly #config: AgentConfig;
  readonly #kube: KubernetesConfig;
  readonly #client: KubeClient;
  readonly #log: Logger;
  readonly #options: KubernetesOptions;
  readonly source: MirrorSource;
  #reporter: NodeReporter | undefined;
  #leader: LeaderElector | undefined;
  #aggregator: StatusAggregator | undefined;
  #members: EndpointSliceMembers | undefined;
  /** Peer key material from the CA Secret (`[peers.tls] secret`); undefined when peers are off or use files. */
  readonly peerIdentity: PeerIdentitySource | undefined;

  private constructor(config: AgentConfig, kube: KubernetesConfig, client: KubeClient, source: MirrorSource, log: Logger, options: KubernetesOptions) {
    this.#config = config;
    this.#kube = kube;
    this.#client = client;
    this.source = source;
    this.#log = log;
    this.#options = options;
    const peers = config.peers;
    this.peerIdentity =
      peers?.enabled === true && peers.tls.kind === 'kubernetes'
        ? new KubePeerIdentity({
            client,
            namespace: kube.namespace,
            secret: peers.tls.secret,
            nodeName: peers.nodeName,
            ...(peers.listen.host === '127.0.0.1' || peers.listen.host === 'localhost' ? {} : { nodeIp: peers.listen.host }),
            log: log.child({ component: 'peer-ca' }),
          })
        : undefined;
  }

  static async prepare(config: AgentConfig, log: Logger, options: KubernetesOptions = {}): Promise<KubernetesIntegration> {
    const kube = config.kubernetes;
    if (kube?.enabled !== true) throw new Error('Kubernetes integration is not enabled ([kubernetes] enabled = true)');
    const klog = log.child({ component: 'kubernetes' });
    const client = KubeClient.fromConfig(kube);
    const source = await MirrorSource.create(client, config, klog, {
      ...pick(options, 'debounceMs', 'initialSyncTimeoutMs', 'backoff'),
    });
    return new KubernetesIntegration(config, kube, client, source, klog, options);
  }

  /** The configuration to start the runtime with: the file's mirrors plus the persisted RegistryMirror mirrors. */
  get startConfig(): AgentConfig {
    return { ...this.#config, mirrors: this.source.initialMirrors() };
  }

  /** Applies the RegistryMirrors (or, the API being unreachable, keeps the persisted ones) and starts reporting and leader election. */
  async start(runtime: AgentRuntime): Promise<void> {
    const { namespace, nodeName } = this.#kube;
    await this.source.start(runtime);
    const o = this.#options;
    const reporter = new NodeReporter({
      client: this.#client,
      namespace,
      nodeName,
      source: this.source,
      runtime,
      log: this.#log,
      options: {
        ...rename(o.reportIntervalMs, 'intervalMs'),
        ...rename(o.reportRenewMs, 'renewMs'),
        ...rename(o.staleReportMs, 'staleMs'),
        ...rename(o.reportSettleMs, 'settleMs'),
        ...rename(o.reportJitterMs, 'jitterMs'),
      },
    });
    this.#reporter = reporter;
    this.source.onApplied(() => void reporter.evaluate());
    await reporter.start();
    const aggregator = new StatusAggregator({
      client: this.#client,
      namespace,
      nodeName,
      log: this.#log,
      registryMirrors: () => this.source.registryMirrors(),
      options: { ...rename(o.aggregateIntervalMs, 'intervalMs'), ...rename(o.staleReportMs, 'staleMs'), ...pick(o, 'backoff') },
    });
    this.#aggregator = aggregator;
    this.#leader = new LeaderElector({
      client: this.#client,
      namespace,
      nodeName,
      log: this.#log,
      ...pick(o, 'leaseDurationMs'),
      onStartedLeading: () => aggregator.start(),
      onStoppedLeading: () => void aggregator.stop(),
    });
    this.#leader.start();
    await this.#startPeerMembers(runtime);
  }

  /** Peer members from the agents' headless Service, unless the file lists them. */
  async #startPeerMembers(runtime: AgentRuntime): Promise<void> {
    const peers = this.#config.peers;
    if (peers?.enabled !== true || peers.members !== undefined) return;
    this.#members = new EndpointSliceMembers({
      client: this.#client,
      namespace: this.#kube.namespace,
      service: peers.service,
      log: this.#log,
      onChange: (members) => runtime.setPeerMembers(members),
      ...pick(this.#options, 'backoff'),
    });
    // Not awaited: until the first list (or with the API down) the agent has no members, and its pulls go upstream.
    void this.#members.start();
  }

  /** The configuration file's mirrors after a reload; merged with the RegistryMirrors and applied. */
  setTomlMirrors(mirrors: readonly MirrorConfig[]): Promise<void> {
    return this.source.setTomlMirrors(mirrors);
  }

  get leading(): boolean {
    return this.#leader?.leading ?? false;
  }

  /** Stops watching and reporting; hands the leader lease back. The runtime keeps its mirrors. */
  async stop(): Promise<void> {
    await this.#members?.stop();
    await this.#leader?.stop();
    await this.#aggregator?.stop();
    await this.#reporter?.stop();
    await this.source.stop();
  }
}

function pick<T extends object, K extends keyof T>(from: T, ...keys: K[]): Partial<Pick<T, K>> {
  const out: Partial<Pick<T, K>> = {};
  for (const key of keys) if (from[key] !== undefined) out[key] = from[key];
  return out;
}

function rename<K extends string>(value: number | undefined, key: K): Partial<Record<K, number>> {
  return value === undefined ? {} : ({ [key]: value } as Partial<Record<K, number>>);
}
