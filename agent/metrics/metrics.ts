import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Every metric the agent exports, on its own registry. Labels are bounded: mirror registry
 * (from config), kind, result, status class, cause. Never repository, tag or digest.
 */
export class AgentMetrics {
  readonly registry = new Registry();

  readonly requests = new Counter({
    name: 'registry_proxy_requests_total',
    help: 'Requests answered by the mirror endpoint.',
    labelNames: ['registry', 'kind', 'method', 'status_class', 'cache'] as const,
    registers: [this.registry],
  });

  readonly requestDuration = new Histogram({
    name: 'registry_proxy_request_duration_seconds',
    help: 'Time from request to the end of the response.',
    labelNames: ['registry', 'kind', 'cache'] as const,
    buckets: [0.001, 0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30, 120, 600],
    registers: [this.registry],
  });

  readonly servedBytes = new Counter({
    name: 'registry_proxy_served_bytes_total',
    help: 'Response body bytes sent to pullers, by where they came from (cache or upstream).',
    labelNames: ['registry', 'source'] as const,
    registers: [this.registry],
  });

  readonly upstreamRequests = new Counter({
    name: 'registry_proxy_upstream_requests_total',
    help: 'Requests sent upstream (through the mirror route), by status class or failure.',
    labelNames: ['registry', 'route', 'result'] as const,
    registers: [this.registry],
  });

  readonly upstreamDuration = new Histogram({
    name: 'registry_proxy_upstream_request_duration_seconds',
    help: 'Time until upstream response headers (or failure).',
    labelNames: ['registry', 'route'] as const,
    buckets: [0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30],
    registers: [this.registry],
  });

  readonly upstreamErrors = new Counter({
    name: 'registry_proxy_upstream_errors_total',
    help:
      'Upstream failures by cause: refused (connection refused), unreachable (DNS, reset), timeout, tls (certificate or handshake refused), status_5xx, invalid, redirect, body_cut and body_timeout (a response body broke off), ' +
      'the forward proxy causes proxy_unreachable, proxy_refused, and the Connectivity Proxy causes cp_https_refused (405), cp_auth_failed (407), cp_no_cloud_connector (503), cp_denied (403), cp_unreachable.',
    labelNames: ['registry', 'cause'] as const,
    registers: [this.registry],
  });

  readonly upstreamUp = new Gauge({
    name: 'registry_proxy_upstream_up',
    help: 'Whether the periodic probe (GET /v2/ through the mirror route) reached upstream: 200 or 401 is up.',
    labelNames: ['registry'] as const,
    registers: [this.registry],
  });

  readonly tokenRequests = new Counter({
    name: 'registry_proxy_token_requests_total',
    help: 'Token requests: forwarded for pullers (passthrough), or fetched by the agent from a registry token realm (agent auth).',
    labelNames: ['registry', 'for', 'status_class'] as const,
    registers: [this.registry],
  });

  readonly fillsInflight = new Gauge({
    name: 'registry_proxy_fills_inflight',
    help: 'Blob downloads from upstream in progress.',
    registers: [this.registry],
  });

  readonly fillJoins = new Counter({
    name: 'registry_proxy_fill_joined_total',
    help: 'Requests that joined a download already in progress instead of fetching again.',
    registers: [this.registry],
  });

  readonly fillsWaiting = new Gauge({
    name: 'registry_proxy_fills_waiting',
    help: 'Blob downloads waiting for one of the mirror\'s download slots (max_fills_per_mirror).',
    labelNames: ['registry'] as const,
    registers: [this.registry],
  });

  readonly fillWaits = new Counter({
    name: 'registry_proxy_fill_waits_total',
    help: 'Blob downloads that had to wait for a download slot.',
    labelNames: ['registry'] as const,
    registers: [this.registry],
  });

  readonly fillsRejected = new Counter({
    name: 'registry_proxy_fills_rejected_total',
    help: 'Blob downloads refused with TOOMANYREQUESTS because the mirror\'s wait queue was full (max_queued_fills_per_mirror).',
    labelNames: ['registry'] as const,
    registers: [this.registry],
  });

  readonly budgetThrottledBytes = new Counter({
    name: 'registry_proxy_budget_throttled_bytes_total',
    help:
      'Blob bytes from upstream that had to wait for a byte rate (max_bytes_per_second), by budget (a mirror\'s registry, or connectivity-proxy for the tunnel as a whole) ' +
      'and priority (live: a pull someone waits for; background: preload).',
    labelNames: ['budget', 'priority'] as const,
    registers: [this.registry],
  });

  readonly budgetWaitSeconds = new Counter({
    name: 'registry_proxy_budget_wait_seconds_total',
    help:
      'Time blob downloads waited in a tunnel budget, by budget, priority and kind: slot (for one of max_fetches download slots) or bytes (for max_bytes_per_second, summed over the chunks that waited).',
    labelNames: ['budget', 'priority', 'kind'] as const,
    registers: [this.registry],
  });

  readonly budgetWaits = new Counter({
    name: 'registry_proxy_budget_waits_total',
    help: 'Waits in a tunnel budget, by budget, priority and kind: downloads that waited for a slot (slot), body chunks that waited for the byte rate (bytes).',
    labelNames: ['budget', 'priority', 'kind'] as const,
    registers: [this.registry],
  });

  readonly destinationsRefused = new Counter({
    name: 'registry_proxy_destinations_refused_total',
    help:
      'Redirects and token realms the agent refused to contact, by reason: link_local, metadata, unspecified, multicast, loopback, node_address, ' +
      'not_allowed (outside allowed_destinations), scheme, credentials.',
    labelNames: ['registry', 'reason'] as const,
    registers: [this.registry],
  });

  readonly connectionsOpen = new Gauge({
    name: 'registry_proxy_connections_open',
    help: 'Client connections open, by listener (mirror, metrics).',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });

  readonly connectionsRefused = new Counter({
    name: 'registry_proxy_connections_refused_total',
    help: 'Client connections answered 503 and closed because the listener was at its cap (max_connections, metrics_max_connections).',
    labelNames: ['listener'] as const,
    registers: [this.registry],
  });

  readonly connectionsCut = new Counter({
    name: 'registry_proxy_connections_cut_total',
    help:
      'Client connections cut by the agent, by listener and reason: request_timeout (the request did not arrive within client_request_timeout), ' +
      'send_timeout (the client took nothing of its answer for send_timeout, or less than 1 MiB in 4 × send_timeout), pipelining (more than the allowed requests queued on one connection).',
    labelNames: ['listener', 'reason'] as const,
    registers: [this.registry],
  });

  readonly bodyBudgetBytes = new Gauge({
    name: 'registry_proxy_body_budget_bytes',
    help: 'Bytes of response bodies held whole in memory until their clients take them (manifests, token answers), against a 64 MiB budget.',
    registers: [this.registry],
  });

  readonly bodyBudgetWaiting = new Gauge({
    name: 'registry_proxy_body_budget_waiting',
    help: 'Requests waiting for room in the body budget (at most 256 wait, each at most 30 s).',
    registers: [this.registry],
  });

  readonly bodyBudgetRefused = new Counter({
    name: 'registry_proxy_body_budget_refused_total',
    help: 'Requests answered 429 TOOMANYREQUESTS for lack of room in the body budget, by reason: queue_full, wait_timeout.',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly upstreamBlobBytes = new Counter({
    name: 'registry_proxy_upstream_blob_bytes_total',
    help: 'Blob bytes downloaded from upstream (through the tunnel on the Connectivity Proxy route), by registry.',
    labelNames: ['registry'] as const,
    registers: [this.registry],
  });

  readonly peerBytes = new Counter({
    name: 'registry_proxy_peer_bytes_total',
    help: 'Blob bytes exchanged with other agents: received (fetched from a peer) or served (to a peer).',
    labelNames: ['direction'] as const,
    registers: [this.registry],
  });

  readonly peerLookups = new Counter({
    name: 'registry_proxy_peer_owner_lookups_total',
    help: 'Owner lookups for blobs not cached here: self (this agent owns it, fetches upstream), peer (fetched from its owner), unusable (alone, or no key material yet).',
    labelNames: ['owner'] as const,
    registers: [this.registry],
  });

  readonly peerFallbacks = new Counter({
    name: 'registry_proxy_peer_fallbacks_total',
    help: 'Peers left for the next step (peer: the next candidate; upstream: directly), by reason: connect, tls, status, stalled, broken, corrupt, penalised, no_identity.',
    labelNames: ['step', 'reason'] as const,
    registers: [this.registry],
  });

  readonly cacheBytes = new Gauge({ name: 'registry_proxy_cache_bytes', help: 'Bytes of verified content in the cache.', registers: [this.registry] });
  readonly cacheMaxBytes = new Gauge({ name: 'registry_proxy_cache_max_bytes', help: 'Configured cache_max_bytes.', registers: [this.registry] });
  readonly cacheEntries = new Gauge({ name: 'registry_proxy_cache_entries', help: 'Blobs and manifests in the cache.', registers: [this.registry] });
  readonly cachePinnedBytes = new Gauge({ name: 'registry_proxy_cache_pinned_bytes', help: 'Bytes of cached content that is pinned (preloaded and imported images): never evicted.', registers: [this.registry] });
  readonly pinMaxBytes = new Gauge({ name: 'registry_proxy_pin_max_bytes', help: 'Configured pin_max_bytes.', registers: [this.registry] });
  readonly preloadImages = new Gauge({
    name: 'registry_proxy_preload_images',
    help: 'Preload entries on this node by phase (pending, ready, failed); unpinned: ready but over the pin budget.',
    labelNames: ['registry', 'phase'] as const,
    registers: [this.registry],
  });
  readonly cacheEvictions = new Counter({ name: 'registry_proxy_cache_evictions_total', help: 'Cache entries evicted to stay under cache_max_bytes.', registers: [this.registry] });
  readonly digestMismatches = new Counter({
    name: 'registry_proxy_digest_mismatches_total',
    help: 'Content that did not match its digest (from upstream, or corrupted on disk); never served.',
    labelNames: ['where'] as const,
    registers: [this.registry],
  });

  readonly cacheBypassed = new Counter({
    name: 'registry_proxy_cache_bypassed_total',
    help: 'Content streamed to pullers without being cached (not enough free disk space, cache dir unusable).',
    registers: [this.registry],
  });

  readonly hostsState = new Gauge({
    name: 'registry_proxy_hosts_toml_state',
    help: 'hosts.toml state per mirror (1 for the current state).',
    labelNames: ['registry', 'state'] as const,
    registers: [this.registry],
  });

  readonly containerdConfigState = new Gauge({
    name: 'registry_proxy_containerd_config_state',
    help: "containerd config verdict (1 for the current state; 'ok' means containerd reads the agent's hosts dir).",
    labelNames: ['state'] as const,
    registers: [this.registry],
  });

  readonly configReloads = new Counter({
    name: 'registry_proxy_config_reloads_total',
    help: 'Configuration reloads by result.',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  constructor(options: { processMetrics?: boolean } = {}) {
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
  }

  /** Sets a one-hot state gauge: 1 for `state`, 0 for the others seen before. */
  static oneHot<T extends string>(gauge: Gauge<T>, labels: Partial<Record<T, string>>, stateLabel: T, state: string, all: readonly string[]): void {
    for (const candidate of all) gauge.set({ ...labels, [stateLabel]: candidate } as Partial<Record<T, string>>, candidate === state ? 1 : 0);
  }
}

export function statusClass(status: number): string {
  if (status <= 0) return 'none';
  return `${Math.floor(status / 100)}xx`;
}
