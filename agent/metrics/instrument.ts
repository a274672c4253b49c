import type { Logger } from 'pino';
import type { BlobCache } from '../cache/blob-cache.ts';
import { DigestMismatchError, SizeMismatchError } from '../cache/errors.ts';
import type { WiringState } from '../containerd/wiring.ts';
import type { RequestRecord } from '../http/server.ts';
import type { UpstreamObservation } from '../upstream/client.ts';
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

/** The agent's hooks into its metrics: each event source calls one method. */
export interface Instrumentation {
  readonly metrics: AgentMetrics;
  request(record: RequestRecord): void;
  upstream(observation: UpstreamObservation, log: Logger): void;
  upstreamUp(registry: string, up: boolean, log: Logger): void;
  corrupt(error: Error): void;
  fillFailed(error: Error): void;
  evicted(): void;
  bypassed(): void;
  wiring(state: WiringState): void;
  scrape(cache: BlobCache, wiring: WiringState | undefined): Promise<{ contentType: string; body: string }>;
}

export function instrument(metrics: AgentMetrics, cacheMaxBytes: number): Instrumentation {
  metrics.cacheMaxBytes.set(cacheMaxBytes);
  let lastJoined = 0;
  /** Last failure cause per registry, to log a Connectivity Proxy/route problem once per state change. */
  const lastCause = new Map<string, string | undefined>();
  const lastUp = new Map<string, boolean>();
  return {
    metrics,
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
    upstream(o, log) {
      metrics.upstreamRequests.inc({ registry: o.registry, route: o.route, result: o.cause && o.status === undefined ? 'error' : statusClass(o.status ?? 0) });
      metrics.upstreamDuration.observe({ registry: o.registry, route: o.route }, o.seconds);
      if (o.cause) metrics.upstreamErrors.inc({ registry: o.registry, cause: o.cause });
      if (o.purpose === 'token') metrics.tokenRequests.inc({ registry: o.registry, for: 'agent', status_class: statusClass(o.status ?? 0) });
      const previous = lastCause.get(o.registry);
      if (previous !== o.cause) {
        lastCause.set(o.registry, o.cause);
        if (o.cause) log.warn({ registry: o.registry, route: o.route, cause: o.cause, status: o.status }, 'upstream failing');
        else if (previous) log.info({ registry: o.registry, route: o.route, previous }, 'upstream answering again');
      }
    },
    upstreamUp(registry, up, log) {
      metrics.upstreamUp.set({ registry }, up ? 1 : 0);
      if (lastUp.get(registry) !== up) {
        lastUp.set(registry, up);
        if (up) log.info({ registry }, 'upstream reachable');
        else log.warn({ registry }, 'upstream unreachable (probe)');
      }
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
    async scrape(cache, wiring) {
      const stats = cache.stats();
      metrics.cacheBytes.set(stats.bytes);
      metrics.cacheEntries.set(stats.entries);
      metrics.fillsInflight.set(stats.inflight);
      if (stats.joined > lastJoined) metrics.fillJoins.inc(stats.joined - lastJoined);
      lastJoined = stats.joined;
      void wiring;
      return { contentType: metrics.registry.contentType, body: await metrics.registry.metrics() };
    },
  };
}
