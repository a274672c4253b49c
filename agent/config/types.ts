/** Validated agent configuration. Everything here has passed `loadConfig`; code past the edge trusts it. */

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal' | 'silent';

export interface ListenAddress {
  /** An IP literal (IPv6 without brackets) or `localhost`. */
  readonly host: string;
  /** 0 means "any free port" (tests). */
  readonly port: number;
}

/** How the agent reaches a mirror's upstream. */
export type RouteKind = 'direct' | 'connectivity-proxy' | 'http-proxy';

/**
 * Who authenticates to upstream: `passthrough` forwards the pull secret containerd presents;
 * `agent` uses the mirror's own credentials (node-local clients need none).
 */
export type AuthMode = 'passthrough' | 'agent';

/** The SAP Connectivity Proxy (top-level `[connectivity_proxy]`). */
export interface ConnectivityProxyConfig {
  /** Its HTTP port, e.g. http://connectivity-proxy.kyma-system.svc.cluster.local:20003 */
  readonly url: URL;
  /** Sent as SAP-Connectivity-SCC-Location_ID when set. */
  readonly locationId?: string;
  /** Non-trusted mode: OAuth2 client-credentials token endpoint; with clientId and clientSecretFile. */
  readonly tokenUrl?: URL;
  readonly clientId?: string;
  readonly clientSecretFile?: string;
  /** `max_bytes_per_second` and `max_fetches` for every mirror on this route together. */
  readonly budget: TunnelBudget;
}

/** A mirror's own trust anchors (`ca_file`): trusted on top of Node's default roots, for this mirror only. */
export interface MirrorCa {
  /** Absolute path of the PEM bundle, for messages. */
  readonly file: string;
  /** The bundle as read and checked at load: one or more PEM certificates (compared on reload, so a changed file applies on SIGHUP). */
  readonly pem: string;
}

/** An OS/architecture pair (`linux/amd64`, `linux/arm/v7`): which manifest of an index a node uses. */
export interface Platform {
  readonly os: string;
  readonly architecture: string;
  readonly variant?: string;
}

/** One `preload` entry: an image every agent fetches into its cache in the background and keeps pinned. */
export interface PreloadImage {
  /** The entry as written (for status and logs), e.g. `team/app:1.2`. */
  readonly image: string;
  /** Repository within the mirror's registry (`team/app`). */
  readonly repository: string;
  /** Re-resolved every `preload_interval`; a moved tag is preloaded again. */
  readonly tag?: string;
  /** `sha256:<hex>`: when given, the tag (if any) is not resolved. */
  readonly digest?: string;
  /** For an index: these platforms; absent, the node's own. */
  readonly platforms?: readonly Platform[];
}

/**
 * What one mirror, or the Connectivity Proxy as a whole, may take of the tunnel on this node: bytes
 * per second and upstream blob fetches at once. Absent fields are unlimited (fetches: the mirror's
 * `max_fills_per_mirror`). Preload runs below pulls someone waits for and never takes the last fetch.
 */
export interface TunnelBudget {
  readonly bytesPerSecond?: number;
  readonly maxFetches?: number;
}

/** `online` (default): pull-through. `offline`: serves only what is cached or imported, never contacts upstream. */
export type MirrorMode = 'online' | 'offline';

export interface MirrorConfig {
  /** host[:port] exactly as written in image references, lower-cased host (`docker.io`, `registry.corp.example:5000`). */
  readonly registry: string;
  /** Base URL the agent fetches from, without trailing slash in `pathname` beyond `/`. */
  readonly upstream: URL;
  /** How long a tag→digest answer is trusted without asking upstream (ms). */
  readonly tagTtlMs: number;
  /** How long a cached tag may be served while upstream is unreachable (ms). */
  readonly maxStaleMs: number;
  /** '' or a slash-separated repository path without leading/trailing slash. */
  readonly repositoryPrefix: string;
  readonly username?: string;
  /** Absolute path of the file holding the password (read at start-up, never logged). */
  readonly passwordFile?: string;
  /** Credentials handed over in memory (from a Kubernetes Secret); never logged, never in a file of ours but the node's last-good state. */
  readonly inlineCredentials?: { readonly username: string; readonly password: string };
  /** Absolute path of a `.dockerconfigjson` file whose entry for the upstream host gives the credentials. */
  readonly dockerConfigFile?: string;
  /** Default `direct`. */
  readonly route: RouteKind;
  /** For route `http-proxy`: the forward proxy (http://host:port). */
  readonly httpProxy?: URL;
  /** For route `connectivity-proxy`: overrides `[connectivity_proxy].location_id`. */
  readonly locationId?: string;
  /** Default `agent` when credentials are configured, `passthrough` otherwise. */
  readonly auth: AuthMode;
  /**
   * `ca_file`: extra trust for https upstreams, token realms and redirect targets of this mirror
   * (routes direct and http-proxy). Absent: Node's default roots (with NODE_EXTRA_CA_CERTS) alone.
   */
  readonly ca?: MirrorCa;
  /**
   * `allowed_destinations`: where redirects and token realms of this mirror may lead besides the
   * upstream itself (exact host and port). Absent: any address but the always-refused classes,
   * loopback and the node's own addresses. Present: exhaustive, only these (the always-refused
   * classes stay refused even when listed).
   */
  readonly allowedDestinations?: readonly DestinationRule[];
  /**
   * `realm_map` (route connectivity-proxy): token realm origin → the http:// origin (a Cloud
   * Connector virtual host) it is reached at, path and query kept. A plain object of normalised
   * origins, so that a changed map compares unequal on reload.
   */
  readonly realmMap?: Readonly<Record<string, string>>;
  /** Default `online`. `offline`: cache only, tags from their last known answer without max_stale expiry. */
  readonly mode: MirrorMode;
  /** Images kept in every node's cache, pinned (default none). */
  readonly preload: readonly PreloadImage[];
  /** How often tags in `preload` are resolved again (default 15 min). */
  readonly preloadIntervalMs: number;
  /** `max_bytes_per_second` and `max_fetches` of this mirror. */
  readonly budget: TunnelBudget;
}

/**
 * One `allowed_destinations` entry: a host (DNS name or IP literal, matched as written in the URL)
 * with an optional port, or an address range (CIDR) matched against the address connected to.
 */
export type DestinationRule =
  | { readonly kind: 'host'; readonly host: string; readonly port: number | undefined; readonly text: string }
  | { readonly kind: 'cidr'; readonly address: string; readonly prefix: number; readonly family: 'ipv4' | 'ipv6'; readonly text: string };

/** Bounds on what clients can hold of the agent: both listeners, and upstream downloads per mirror. */
export interface ClientLimits {
  /** `max_connections`: connections open at once on the mirror port; more are answered 503 and closed. */
  readonly maxConnections: number;
  /** `metrics_max_connections`: the same for the metrics port. */
  readonly metricsMaxConnections: number;
  /** `client_request_timeout` (ms): a whole request must arrive within this, on both ports; idle and half-sent connections are cut. */
  readonly requestTimeoutMs: number;
  /** `send_timeout` (ms): a response the client takes no byte of for this long is cut and its file released. */
  readonly sendTimeoutMs: number;
  /** `max_fills_per_mirror`: blob downloads from one mirror's upstream at once. */
  readonly maxFillsPerMirror: number;
  /** `max_queued_fills_per_mirror`: downloads waiting for a slot, in order; beyond, TOOMANYREQUESTS. */
  readonly maxQueuedFillsPerMirror: number;
}

/** `[kubernetes]`: mirrors from RegistryMirror resources and per-node status reports (agent/kube/). */
export interface KubernetesConfig {
  /** Default false: the table may stay in the file while Kubernetes integration is off. */
  readonly enabled: boolean;
  /** The agent's namespace: credentials Secrets and the report and leader Leases live here. */
  readonly namespace: string;
  /** This node's name (NODE_NAME); '' only when not enabled. */
  readonly nodeName: string;
  /** A kubeconfig file; absent: the in-cluster service account. */
  readonly kubeconfig?: string;
  /** The last good RegistryMirror-derived mirrors (credentials included, mode 0600), served when the API is unreachable. */
  readonly stateFile: string;
}

/** One agent of the cluster as the configuration lists it (`[[peers.member]]`). */
export interface PeerMemberConfig {
  /** The node name: unique, and what blob ownership is computed from. */
  readonly name: string;
  /** Its peer listener, `https://<node IP>:<port>`. */
  readonly url: string;
}

/**
 * Where the peer listener's key material comes from: PEM files (outside Kubernetes, tests), or a CA
 * kept in a Secret of the agent's namespace, created by the leader on first start; every agent
 * issues its own certificate from it (agent/kube/peer-ca.ts).
 */
export type PeerTlsConfig =
  | { readonly kind: 'files'; readonly caFile: string; readonly certFile: string; readonly keyFile: string }
  | { readonly kind: 'kubernetes'; readonly secret: string };

/** `[peers]`: agents fetch blobs from each other so the tunnel carries each blob once (agent/peers/). */
export interface PeersConfig {
  /** Default false: with it off, nothing of this table is used. */
  readonly enabled: boolean;
  /** This agent's member name (default NODE_NAME, or `[kubernetes].node_name`). */
  readonly nodeName: string;
  /** The peer listener: the node's IP (hostNetwork), never loopback-only when other nodes must reach it. */
  readonly listen: ListenAddress;
  /**
   * Static members (`[[peers.member]]`, reloaded on SIGHUP); absent with `[kubernetes]` enabled: the
   * ready endpoints of the headless Service `service` (EndpointSlices).
   */
  readonly members?: readonly PeerMemberConfig[];
  /** The headless Service selecting the agents (Kubernetes membership). */
  readonly service: string;
  readonly tls: PeerTlsConfig;
  /** A peer that does not accept the TCP connection within this is skipped (default 1 s; the TLS handshake gets progressTimeoutMs). */
  readonly connectTimeoutMs: number;
  /** A peer that sends no byte for this long (headers or body) is left for the next (default 10 s). */
  readonly progressTimeoutMs: number;
  /** Connections open at once on the peer listener (default 256). */
  readonly maxConnections: number;
}

export interface AgentConfig {
  /** Where this configuration came from: the file path, or `<embedded default>`. */
  readonly source: string;
  readonly listen: ListenAddress;
  readonly metricsListen: ListenAddress;
  readonly cacheDir: string;
  readonly cacheMaxBytes: number;
  /** `pin_max_bytes`: what preloaded (pinned) blobs may hold of the cache (default half of cacheMaxBytes). */
  readonly pinMaxBytes: number;
  readonly hostsDir: string;
  /** Manage `<hostsDir>/<registry>/hosts.toml` for every mirror (default true). */
  readonly manageHosts: boolean;
  /** The node's containerd config, read (never written) to tell whether containerd uses `hostsDir`. */
  readonly containerdConfig: string;
  /** Where the node's root is mounted ('' = the agent sees node paths directly): absolute containerd imports are read under it. */
  readonly hostRoot: string;
  readonly logLevel: LogLevel;
  /** Upstream timeouts (ms): connect, first byte (response headers), silence while a body streams. */
  readonly upstreamTimeouts: { readonly connectMs: number; readonly headersMs: number; readonly bodyMs: number };
  /** Connection caps, client timeouts and download slots. */
  readonly limits: ClientLimits;
  /** The agent's own image reference (default $AGENT_IMAGE): its registry may not be mirrored unless confirmed. */
  readonly ownImage?: string;
  readonly allowOwnRegistryMirror: boolean;
  readonly connectivityProxy?: ConnectivityProxyConfig;
  /** Present when the file has a `[kubernetes]` table. */
  readonly kubernetes?: KubernetesConfig;
  /** Present when the file has a `[peers]` table. */
  readonly peers?: PeersConfig;
  /** The file's `[[mirror]]` tables; with Kubernetes enabled there may be none. */
  readonly mirrors: readonly MirrorConfig[];
}
