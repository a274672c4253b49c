import type { BlobCache } from '../cache/blob-cache.ts';
import type { PreloadReport } from '../preload/state.ts';
import { DigestMismatchError, SizeMismatchError } from '../cache/errors.ts';
import type { WiringState } from '../containerd/wiring.ts';
import type { BodyBudgetState } from '../memory/body-budget.ts';
import type { RequestRecord } from '../observe/request-record.ts';
import type { UpstreamObservation } from '../upstream/client.ts';
import type { PeerEvents } from '../peers/network.ts';
import { AgentMetrics, statusClass } from './metrics.ts';

const HOSTS_STATES = ['written', 'unchanged', 'restored', 'removed', 'admin_file_invalid', 'error'] as const;
const CONTAINERD_STATES = [
  'ok',
  'config_path_unset',
  'config_path_mismatch',
  'config_path_list',
  'legacy_mirrors_conflict',
  'config_not_found',
  'config_unreadable',
  'config_invalid',
] as const;

/** The agent's hooks into its metrics: each event source calls one method. Counts only: what is logged is decided in observe/. */
export interface Instrumentation {
  readonly metrics: AgentMetrics;
  request(record: RequestRecord): void;
  upstream(observation: UpstreamObservation): void;
  upstreamUp(registry: string, up: boolean): void;
  corrupt(error: Error): void;
  fillFailed(error: Error): void;
  evicted(): void;
  bypassed(): void;
  wiring(state: WiringState): void;
  /** A client connection opened, closed, or was refused at the cap, on `listener` (mirror, metrics). */
  connection(listener: ListenerName, event: 'opened' | 'closed' | 'refused'): void;
  /** A client connection cut: its request did not arrive in time, its client stopped taking the answer, or it pipelined too deep. */
  connectionCut(listener: ListenerName, reason: 'request_timeout' | 'send_timeout' | 'pipelining'): void;
  /** A redirect or token realm of `registry` refused by the destination policy. */
  destinationRefused(registry: string, reason: string): void;
  /** A blob download of `registry` started waiting for a slot (`waiting`), got one after waiting (`started`), or was refused (`rejected`). */
  fillSlot(registry: string, event: 'waiting' | 'started' | 'rejected' | 'abandoned'): void;
  /** A download (kind `slot`) or `bytes` of its body (kind `bytes`) waited `seconds` in the tunnel budget `budget`. */
  budgetWait(budget: string, priority: 'live' | 'background', kind: 'slot' | 'bytes', seconds: number, bytes: number): void;
  /** Bytes held and requests waiting in the body budget, on every change. */
  bodyBudget(state: BodyBudgetState): void;
  /** A request refused for lack of room in the body budget. */
  bodyBudgetRefused(reason: 'queue_full' | 'wait_timeout'): void;
  /** Blob bytes downloaded from `registry`'s upstream. */
  upstreamBlobBytes(registry: string, bytes: number): void;
  /** Peer sharing: owner lookups, fallbacks, bytes received from peers. */
  readonly peers: PeerEvents;
  /** Blob bytes served to other agents on the peer listener. */
  peerServed(bytes: number): void;
  /** Cache figures and this node's preload entries are read at scrape time. */
  scrape(cache: BlobCache, preload?: PreloadReport): Promise<{ contentType: string; body: string }>;
}

/** The agent's two listeners, as metrics label them. */
export type ListenerName = 'mirror' | 'metrics' | 'peer';

export function instrument(metrics: AgentMetrics, cacheMaxBytes: number, pinMaxBytes = 0): Instrumentation {
  metrics.cacheMaxBytes.set(cacheMaxBytes);
  metrics.pinMaxBytes.set(pinMaxBytes);
  for (const listener of ['mirror', 'metrics'] as const) metrics.connectionsOpen.set({ listener }, 0);
  let lastJoined = 0;
  return {
    metrics,
    upstreamBlobBytes(registry, bytes) {
      if (bytes > 0) metrics.upstreamBlobBytes.inc({ registry }, bytes);
    },
    peers: {
      lookup: (owner) => metrics.peerLookups.inc({ owner }),
      fallback: (step, reason) => metrics.peerFallbacks.inc({ step, reason }),
      received: (bytes) => metrics.peerBytes.inc({ direction: 'received' }, bytes),
    },
    peerServed(bytes) {
      if (bytes > 0) metrics.peerBytes.inc({ direction: 'served' }, bytes);
    },
    request(record) {
      const registry = record.outcome.registry ?? 'none';
      const cache = record.outcome.cache ?? 'none';
      metrics.requests.inc({ registry, kind: record.outcome.kind, method: record.method, status_class: statusClass(record.status), cache });
      metrics.requestDuration.observe({ registry, kind: record.outcome.kind, cache }, record.durationMs / 1000);
      if (record.outcome.bytes > 0) {
        metrics.servedBytes.inc({ registry, source: cache === 'hit' || cache === 'stale' ? 'cache' : 'upstream' }, record.outcome.bytes);
      }
      if (record.outcome.kind === 'token') metrics.tokenRequests.inc({ registry, for: 'puller', status_class: statusClass(record.status) });
    },
    upstream(o) {
      // A body that broke off belongs to an exchange already counted as a request: only its error counts.
      if (o.phase === 'response') {
        metrics.upstreamRequests.inc({ registry: o.registry, route: o.route, result: o.cause && o.status === undefined ? 'error' : statusClass(o.status ?? 0) });
        metrics.upstreamDuration.observe({ registry: o.registry, route: o.route }, o.seconds);
        // Only the agent's own token fetches: forwarded ones are counted as the puller's, in request().
        if (o.purpose === 'token') metrics.tokenRequests.inc({ registry: o.registry, for: 'agent', status_class: statusClass(o.status ?? 0) });
      }
      if (o.cause) metrics.upstreamErrors.inc({ registry: o.registry, cause: o.cause });
    },
    upstreamUp(registry, up) {
      metrics.upstreamUp.set({ registry }, up ? 1 : 0);
    },
    corrupt(error) {
      if (error instanceof DigestMismatchError || error instanceof SizeMismatchError) metrics.digestMismatches.inc({ where: 'disk' });
    },
    fillFailed(error) {
      if (error instanceof DigestMismatchError || error instanceof SizeMismatchError) metrics.digestMismatches.inc({ where: 'upstream' });
    },
    evicted() {
      metrics.cacheEvictions.inc();
    },
    bypassed() {
      metrics.cacheBypassed.inc();
    },
    wiring(state) {
      for (const report of state.hosts) AgentMetrics.oneHot(metrics.hostsState, { registry: report.registry }, 'state', report.state, HOSTS_STATES);
      AgentMetrics.oneHot(metrics.containerdConfigState, {}, 'state', state.containerd.state, CONTAINERD_STATES);
    },
    connection(listener, event) {
      if (event === 'opened') metrics.connectionsOpen.inc({ listener });
      else if (event === 'closed') metrics.connectionsOpen.dec({ listener });
      else metrics.connectionsRefused.inc({ listener });
    },
    connectionCut(listener, reason) {
      metrics.connectionsCut.inc({ listener, reason });
    },
    destinationRefused(registry, reason) {
      metrics.destinationsRefused.inc({ registry, reason });
    },
    fillSlot(registry, event) {
      if (event === 'waiting') {
        metrics.fillsWaiting.inc({ registry });
        metrics.fillWaits.inc({ registry });
      } else if (event === 'started' || event === 'abandoned') {
        metrics.fillsWaiting.dec({ registry });
      } else {
        metrics.fillsRejected.inc({ registry });
      }
    },
    budgetWait(budget, priority, kind, seconds, bytes) {
      metrics.budgetWaits.inc({ budget, priority, kind });
      metrics.budgetWaitSeconds.inc({ budget, priority, kind }, seconds);
      if (bytes > 0) metrics.budgetThrottledBytes.inc({ budget, priority }, bytes);
    },
    bodyBudget(state) {
      metrics.bodyBudgetBytes.set(state.held);
      metrics.bodyBudgetWaiting.set(state.waiting);
    },
    bodyBudgetRefused(reason) {
      metrics.bodyBudgetRefused.inc({ reason });
    },
    async scrape(cache, preload) {
      const stats = cache.stats();
      metrics.cacheBytes.set(stats.bytes);
      metrics.cacheEntries.set(stats.entries);
      metrics.cachePinnedBytes.set(stats.pinned);
      metrics.preloadImages.reset();
      for (const [registry, entries] of preload ?? []) {
        const counts = { pending: 0, ready: 0, failed: 0, unpinned: 0 };
        for (const entry of entries) {
          counts[entry.phase] += 1;
          if (entry.phase === 'ready' && !entry.pinned) counts.unpinned += 1;
        }
        for (const [phase, count] of Object.entries(counts)) metrics.preloadImages.set({ registry, phase }, count);
      }
      metrics.fillsInflight.set(stats.inflight);
      if (stats.joined > lastJoined) metrics.fillJoins.inc(stats.joined - lastJoined);
      lastJoined = stats.joined;
      return { contentType: metrics.registry.contentType, body: await metrics.registry.metrics() };
    },
  };
}
