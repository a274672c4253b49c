import { open, readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import toml from 'toml';
import { isLoopback, parseListenAddress, parseRegistry } from './address.ts';
import { readCaFile } from './ca.ts';
import { parseDuration } from './duration.ts';
import { ownImageProblem } from './own-image.ts';
import { ConfigError } from './errors.ts';
import { isTable, Section } from './section.ts';
import type { Table } from './section.ts';
import { parseDestinations } from './destinations.ts';
import { readPeers } from './peers.ts';
import { parsePreload, parsePreloadInterval, readBudget } from './preload.ts';
import { parseRealmMap } from './realm-map.ts';
import { parseSize } from './size.ts';
import type { AgentConfig, AuthMode, ConnectivityProxyConfig, KubernetesConfig, ListenAddress, MirrorConfig, MirrorMode } from './types.ts';
import {
  expectBoolean,
  expectString,
  parseAuthMode,
  parseCount,
  parseClientId,
  parseLocationId,
  parseLogLevel,
  parsePath,
  parseProxyUrl,
  parseRepositoryPrefix,
  parseRoute,
  parseTokenUrl,
  parseUpstream,
  parseUsername,
  requirePositive,
} from './values.ts';

export interface ParseOptions {
  /** Directory that relative paths are resolved against (default: the process's working directory). */
  readonly baseDir?: string;
  /** false for commands that need no mirror (`cleanup` only uses hosts_dir). Default true. */
  readonly requireMirrors?: boolean;
  /** Environment for `[kubernetes]` defaults (NODE_NAME, POD_NAMESPACE); default `process.env`. */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

/** How a mirror table outside the file (a RegistryMirror spec, the Kubernetes state file) is read. */
export interface MirrorTableOptions {
  /** The agent's `[connectivity_proxy]`: route = "connectivity-proxy" needs one. */
  readonly connectivityProxy?: ConnectivityProxyConfig;
  /** Directory that relative paths are resolved against (default: the process's working directory). */
  readonly baseDir?: string;
  /** Dotted path of the table in error keys (default: none, keys are named bare). */
  readonly path?: string;
  /** Credentials handed over in memory (a Kubernetes Secret); they count as credentials for `auth`. */
  readonly inlineCredentials?: { readonly username: string; readonly password: string };
}

const TOP_LEVEL_KEYS = [
  'listen',
  'metrics_listen',
  'cache_dir',
  'cache_max_bytes',
  'pin_max_bytes',
  'hosts_dir',
  'manage_hosts',
  'containerd_config',
  'host_root',
  'log_level',
  'allow_non_loopback_listen',
  'upstream_connect_timeout',
  'upstream_response_timeout',
  'upstream_idle_timeout',
  'max_connections',
  'metrics_max_connections',
  'client_request_timeout',
  'send_timeout',
  'max_fills_per_mirror',
  'max_queued_fills_per_mirror',
  'own_image',
  'allow_own_registry_mirror',
  'connectivity_proxy',
  'kubernetes',
  'peers',
  'mirror',
] as const;

const KUBERNETES_KEYS = ['enabled', 'namespace', 'node_name', 'kubeconfig', 'state_file'] as const;
const DEFAULT_NAMESPACE = 'registry-proxy-agent';
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

const CONNECTIVITY_PROXY_KEYS = ['url', 'location_id', 'token_url', 'client_id', 'client_secret_file', 'max_bytes_per_second', 'max_fetches'] as const;

const MIRROR_KEYS = [
  'registry',
  'upstream',
  'tag_ttl',
  'max_stale',
  'repository_prefix',
  'username',
  'password_file',
  'docker_config_file',
  'route',
  'http_proxy',
  'location_id',
  'auth',
  'ca_file',
  'realm_map',
  'allowed_destinations',
  'mode',
  'preload',
  'preload_interval',
  'max_bytes_per_second',
  'max_fetches',
] as const;

/**
 * Keys of a mirror table given outside the file (a RegistryMirror spec): no ca_file, whose bundle
 * would have to come from a Kubernetes object (handed over in memory, like credentials), not a path
 * on the node.
 */
const TABLE_MIRROR_KEYS = MIRROR_KEYS.filter((key) => key !== 'ca_file');

const CP_CA_FILE =
  'ca_file is not used with route = "connectivity-proxy": upstreams there are http:// Cloud Connector virtual hosts, ' +
  "and the Cloud Connector does the TLS to the real registry (trust the registry's CA in the Cloud Connector)";
const REALM_MAP_ROUTE =
  'realm_map is only used with route = "connectivity-proxy" (where a token realm on the real host name cannot be ' +
  'reached); on other routes the agent contacts the realm itself';

const CP_DESTINATIONS =
  'allowed_destinations is not used with route = "connectivity-proxy": every host there is a Cloud Connector ' +
  "virtual host, and the Cloud Connector's access control decides what it reaches";

const CP_HTTPS_UPSTREAM =
  "the Connectivity Proxy's HTTP port takes plain http:// virtual hosts and the Cloud Connector does the TLS " +
  'to the real registry; use http://<virtual-host>:<port> as configured in the Cloud Connector';

type PathParser = (value: unknown) => string;
type Credentials = Pick<MirrorConfig, 'username' | 'passwordFile' | 'dockerConfigFile' | 'inlineCredentials'>;
type Route = Pick<MirrorConfig, 'route' | 'httpProxy' | 'locationId'>;

/** What `npm start` runs with when no file is given; relative paths land under the working directory. */
const EMBEDDED_DEFAULT = `
cache_dir = ".agent-data/cache"
cache_max_bytes = "10GiB"
hosts_dir = ".agent-data/certs.d"

[[mirror]]
registry = "docker.io"
upstream = "https://registry-1.docker.io"
`;

/**
 * Reads and validates a configuration file, including that every password_file, docker_config_file
 * and client_secret_file is readable.
 */
export async function loadConfig(file: string, opts: Pick<ParseOptions, 'requireMirrors'> = {}): Promise<AgentConfig> {
  const text = await readText(file);
  const config = parseConfig(text, file, { ...opts, baseDir: dirname(resolve(file)) });
  await checkSecretFiles(config);
  return config;
}

/**
 * Parses and validates TOML text. It reads nothing from the disk but the CA bundles named by
 * `ca_file` (certificates, needed in the validated config and checked here so that a bad one names
 * its key); secret files are only opened, by loadConfig. `source` names the text in error messages.
 */
export function parseConfig(text: string, source: string, opts: ParseOptions = {}): AgentConfig {
  const baseDir = opts.baseDir ?? process.cwd();
  const path: PathParser = (value) => parsePath(value, baseDir);
  const root = new Section(source, '', parseToml(text, source), TOP_LEVEL_KEYS);
  const connectivityProxy = readConnectivityProxy(root, path);
  const listen = readListen(root);
  const metricsListen = root.read('metrics_listen', parseListenAddress, '127.0.0.1:9402');
  const cacheDir = root.read('cache_dir', path, '/var/lib/registry-proxy-agent');
  const cacheMaxBytes = root.read('cache_max_bytes', (v) => requirePositive(parseSize(v)), '20GiB');
  const pinMaxBytes = root.read('pin_max_bytes', parseSize, Math.floor(cacheMaxBytes / 2));
  if (pinMaxBytes > cacheMaxBytes) root.fail('pin_max_bytes', `must not exceed cache_max_bytes (${cacheMaxBytes} bytes): pinned blobs live in the cache`);
  const env = opts.env ?? process.env;
  const kubernetes = readKubernetes(root, path, cacheDir, env);
  const ownImage = root.optional('own_image', expectString) ?? (env['AGENT_IMAGE'] || undefined);
  const allowOwnRegistryMirror = root.read('allow_own_registry_mirror', expectBoolean, false);
  return {
    source,
    listen,
    metricsListen,
    cacheDir,
    cacheMaxBytes,
    pinMaxBytes,
    hostsDir: root.read('hosts_dir', path, '/etc/containerd/certs.d'),
    manageHosts: root.read('manage_hosts', expectBoolean, true),
    containerdConfig: root.read('containerd_config', path, '/etc/containerd/config.toml'),
    hostRoot: root.optional('host_root', path) ?? '',
    logLevel: root.read('log_level', parseLogLevel, 'info'),
    upstreamTimeouts: {
      connectMs: root.read('upstream_connect_timeout', (v) => requirePositive(parseDuration(v)), '10s'),
      headersMs: root.read('upstream_response_timeout', (v) => requirePositive(parseDuration(v)), '30s'),
      bodyMs: root.read('upstream_idle_timeout', (v) => requirePositive(parseDuration(v)), '60s'),
    },
    limits: readLimits(root),
    ...present('ownImage', ownImage),
    allowOwnRegistryMirror,
    ...present('connectivityProxy', connectivityProxy),
    ...present('kubernetes', kubernetes),
    ...present('peers', readPeers(root, { path, env, kubernetesNodeName: nonEmpty(kubernetes?.nodeName), kubernetesEnabled: kubernetes?.enabled === true })),
    mirrors: refuseOwnRegistry(
      root,
      readMirrors(root, path, connectivityProxy !== undefined, kubernetes?.enabled === true || opts.requireMirrors === false),
      allowOwnRegistryMirror ? undefined : ownImage,
    ),
  };
}

/**
 * Validates one mirror table given outside the file (a RegistryMirror spec translated to the TOML keys,
 * an entry of the Kubernetes state file) exactly like a `[[mirror]]` table. Throws ConfigError naming
 * `source` and the key.
 */
export function parseMirrorTable(table: Table, source: string, opts: MirrorTableOptions = {}): MirrorConfig {
  const baseDir = opts.baseDir ?? process.cwd();
  const section = new Section(source, opts.path ?? '', table, TABLE_MIRROR_KEYS);
  return readMirror(section, (value) => parsePath(value, baseDir), opts.connectivityProxy !== undefined, opts.inlineCredentials);
}

/** The embedded default configuration, with its data under `<cwd>/.agent-data`. */
export function defaultConfig(cwd: string): AgentConfig {
  return parseConfig(EMBEDDED_DEFAULT, '<embedded default>', { baseDir: cwd });
}

async function readText(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (error) {
    throw new ConfigError(file, '', `cannot read: ${messageOf(error)}`, { cause: error });
  }
}

function parseToml(text: string, file: string): Table {
  let document: unknown;
  try {
    document = toml.parse(text);
  } catch (error) {
    const at = positionOf(error);
    const where = at === undefined ? '' : ` at line ${at.line}, column ${at.column}`;
    throw new ConfigError(file, '', `invalid TOML${where}: ${messageOf(error)}`, { cause: error });
  }
  if (!isTable(document)) throw new ConfigError(file, '', 'invalid TOML: the document is not a table');
  return document;
}

/** The mirror port serves cached images to anyone who can reach it, so it stays on loopback unless overridden. */
function readListen(root: Section): ListenAddress {
  const allowNonLoopback = root.read('allow_non_loopback_listen', expectBoolean, false);
  const listen = root.read('listen', parseListenAddress, '127.0.0.1:5050');
  if (!allowNonLoopback && !isLoopback(listen.host)) {
    root.fail(
      'listen',
      `${listen.host} is not a loopback address; the mirror port must not be reachable from the network ` +
        '(set allow_non_loopback_listen = true to override)',
    );
  }
  return listen;
}

/** Connection caps, client timeouts and download slots (see ClientLimits). */
function readLimits(root: Section): AgentConfig['limits'] {
  const count = (max: number) => (value: unknown) => parseCount(value, max);
  const timeout = (value: unknown) => requirePositive(parseDuration(value));
  return {
    maxConnections: root.read('max_connections', count(100_000), 1024),
    metricsMaxConnections: root.read('metrics_max_connections', count(10_000), 64),
    requestTimeoutMs: root.read('client_request_timeout', timeout, '20s'),
    sendTimeoutMs: root.read('send_timeout', timeout, '60s'),
    maxFillsPerMirror: root.read('max_fills_per_mirror', count(1_000), 8),
    maxQueuedFillsPerMirror: root.read('max_queued_fills_per_mirror', count(100_000), 64),
  };
}

/** `[connectivity_proxy]`: trusted mode with just url, non-trusted mode with token_url, client_id and client_secret_file. */
function readConnectivityProxy(root: Section, path: PathParser): ConnectivityProxyConfig | undefined {
  const section = root.table('connectivity_proxy', CONNECTIVITY_PROXY_KEYS);
  if (section === undefined) return undefined;
  const url = section.required('url', parseProxyUrl);
  const locationId = section.optional('location_id', parseLocationId);
  const tokenUrl = section.optional('token_url', parseTokenUrl);
  const clientId = section.optional('client_id', parseClientId);
  const clientSecretFile = section.optional('client_secret_file', path);
  const budget = readBudget((name, parse) => section.optional(name, parse));
  const proxy = { url, ...present('locationId', locationId), budget };
  if (tokenUrl === undefined) {
    if (clientId !== undefined) section.fail('client_id', 'client_id is only used with token_url (non-trusted mode)');
    if (clientSecretFile !== undefined) {
      section.fail('client_secret_file', 'client_secret_file is only used with token_url (non-trusted mode)');
    }
    return proxy;
  }
  if (clientId === undefined || clientSecretFile === undefined) {
    const given = { client_id: clientId, client_secret_file: clientSecretFile };
    const missing = Object.entries(given).flatMap(([key, value]) => (value === undefined ? [key] : []));
    section.fail('token_url', `token_url requires ${missing.join(' and ')}`);
  }
  return { ...proxy, tokenUrl, clientId, clientSecretFile };
}

/** `[kubernetes]`: node name and namespace default to the Downward API variables the DaemonSet sets. */
function readKubernetes(
  root: Section,
  path: PathParser,
  cacheDir: string,
  env: Readonly<Record<string, string | undefined>>,
): KubernetesConfig | undefined {
  const section = root.table('kubernetes', KUBERNETES_KEYS);
  if (section === undefined) return undefined;
  const enabled = section.read('enabled', expectBoolean, false);
  const namespace = section.read('namespace', (v) => matching(v, DNS_LABEL, 'a DNS label'), nonEmpty(env.POD_NAMESPACE) ?? DEFAULT_NAMESPACE);
  const nodeName = section.optional('node_name', (v) => matching(v, DNS_SUBDOMAIN, 'a node name (DNS subdomain)'));
  const envNodeName = nonEmpty(env.NODE_NAME);
  if (enabled && nodeName === undefined && envNodeName === undefined) {
    section.fail('node_name', 'required with enabled = true: set node_name or NODE_NAME (the DaemonSet sets it from spec.nodeName)');
  }
  const kubeconfig = section.optional('kubeconfig', path);
  const stateFile = section.read('state_file', path, join(cacheDir, 'kubernetes-mirrors.json'));
  return { enabled, namespace, nodeName: nodeName ?? envNodeName ?? '', ...present('kubeconfig', kubeconfig), stateFile };
}

function matching(value: unknown, pattern: RegExp, what: string): string {
  const text = expectString(value);
  if (!pattern.test(text)) throw new Error(`must be ${what}: lower-case letters, digits and '-'`);
  return text;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}

/** A mirror of the registry the agent's own image comes from is refused unless confirmed (bootstrap deadlock). */
function refuseOwnRegistry(root: Section, mirrors: MirrorConfig[], ownImage: string | undefined): MirrorConfig[] {
  mirrors.forEach((mirror, i) => {
    const problem = ownImageProblem(mirror.registry, ownImage);
    if (problem) root.fail(`mirror[${i}].registry`, problem);
  });
  return mirrors;
}

function readMirrors(root: Section, path: PathParser, hasConnectivityProxy: boolean, kubernetesEnabled: boolean): MirrorConfig[] {
  const sections = root.tables('mirror', MIRROR_KEYS);
  const mirrors = sections.map((section) => readMirror(section, path, hasConnectivityProxy));
  const firstIndex = new Map<string, number>();
  mirrors.forEach((mirror, i) => {
    const first = firstIndex.get(mirror.registry);
    if (first !== undefined) {
      sections[i]?.fail('registry', `${mirror.registry} is already configured by mirror[${first}]`);
    }
    firstIndex.set(mirror.registry, i);
  });
  if (mirrors.length === 0 && !kubernetesEnabled) {
    root.fail('', 'no [[mirror]] configured (or set [kubernetes] enabled = true to take mirrors from RegistryMirror resources)');
  }
  return mirrors;
}

function readMirror(
  section: Section,
  path: PathParser,
  hasConnectivityProxy: boolean,
  inlineCredentials?: MirrorTableOptions['inlineCredentials'],
): MirrorConfig {
  const registry = section.required('registry', parseRegistry);
  const mode = section.read('mode', parseMode, 'online');
  // Offline: upstream is never contacted and may be left out (a placeholder keeps the type whole).
  const upstream = mode === 'offline' ? (section.optional('upstream', parseUpstream) ?? new URL(`https://${registry}`)) : section.required('upstream', parseUpstream);
  const tagTtlMs = section.read('tag_ttl', parseDuration, '0s');
  const maxStaleMs = section.read('max_stale', parseDuration, '24h');
  const repositoryPrefix = section.read('repository_prefix', parseRepositoryPrefix, '');
  const route = readRoute(section, upstream, hasConnectivityProxy);
  const credentials = readCredentials(section, path, inlineCredentials);
  const auth = readAuth(section, credentials !== undefined);
  const tls = readTls(section, path, route.route);
  const preload = section.read('preload', (v) => parsePreload(v, registry), []);
  const preloadIntervalMs = section.read('preload_interval', parsePreloadInterval, '15m');
  const budget = readBudget((name, parse) => section.optional(name, parse));
  if (mode === 'offline' && preload.length > 0) {
    section.fail('preload', 'an offline mirror never contacts upstream, so it cannot preload: import the images instead (registry-proxy-agent import)');
  }
  return { registry, upstream, tagTtlMs, maxStaleMs, repositoryPrefix, ...route, auth, ...credentials, ...tls, mode, preload, preloadIntervalMs, budget };
}

/**
 * ca_file (routes that do TLS to upstream themselves), realm_map (route connectivity-proxy only) and
 * allowed_destinations (routes direct and http-proxy).
 */
function readTls(section: Section, path: PathParser, route: Route['route']): Pick<MirrorConfig, 'ca' | 'realmMap'> {
  if (section.optional('ca_file', path) !== undefined && route === 'connectivity-proxy') section.fail('ca_file', CP_CA_FILE);
  const ca = section.optional('ca_file', (value) => readCaFile(path(value)));
  const realmMap = section.optional('realm_map', parseRealmMap);
  if (realmMap !== undefined && route !== 'connectivity-proxy') section.fail('realm_map', REALM_MAP_ROUTE);
  const allowedDestinations = section.optional('allowed_destinations', parseDestinations);
  if (allowedDestinations !== undefined && route === 'connectivity-proxy') section.fail('allowed_destinations', CP_DESTINATIONS);
  return { ...present('ca', ca), ...present('realmMap', realmMap), ...present('allowedDestinations', allowedDestinations) };
}

/** route with the keys that belong to it: http_proxy for `http-proxy`, location_id for `connectivity-proxy`. */
function readRoute(section: Section, upstream: URL, hasConnectivityProxy: boolean): Route {
  const route = section.read('route', parseRoute, 'direct');
  const httpProxy = section.optional('http_proxy', parseProxyUrl);
  const locationId = section.optional('location_id', parseLocationId);
  if (route === 'http-proxy' && httpProxy === undefined) {
    section.fail('route', 'route = "http-proxy" needs http_proxy, e.g. http_proxy = "http://proxy.corp:3128"');
  }
  if (route !== 'http-proxy' && httpProxy !== undefined) {
    section.fail('http_proxy', 'http_proxy is only used with route = "http-proxy"');
  }
  if (route !== 'connectivity-proxy' && locationId !== undefined) {
    section.fail('location_id', 'location_id is only used with route = "connectivity-proxy"');
  }
  if (route === 'connectivity-proxy' && !hasConnectivityProxy) {
    section.fail('route', 'route = "connectivity-proxy" needs a [connectivity_proxy] table with url');
  }
  if (route === 'connectivity-proxy' && upstream.protocol === 'https:') section.fail('upstream', CP_HTTPS_UPSTREAM);
  return { route, ...present('httpProxy', httpProxy), ...present('locationId', locationId) };
}

/** username + password_file, or docker_config_file, or credentials handed over in memory, or none. */
function readCredentials(
  section: Section,
  path: PathParser,
  inline: MirrorTableOptions['inlineCredentials'],
): Credentials | undefined {
  const username = section.optional('username', parseUsername);
  const passwordFile = section.optional('password_file', path);
  const dockerConfigFile = section.optional('docker_config_file', path);
  if (inline !== undefined) {
    const given = { username, password_file: passwordFile, docker_config_file: dockerConfigFile };
    for (const [key, value] of Object.entries(given)) {
      if (value !== undefined) section.fail(key, 'credentials are handed over in memory (a Secret); remove this key');
    }
    return { inlineCredentials: { username: inline.username, password: inline.password } };
  }
  if (dockerConfigFile !== undefined) {
    if (username !== undefined || passwordFile !== undefined) {
      section.fail(
        'docker_config_file',
        'docker_config_file cannot be combined with username and password_file; use one or the other',
      );
    }
    return { dockerConfigFile };
  }
  if (username === undefined && passwordFile === undefined) return undefined;
  if (passwordFile === undefined) section.fail('username', 'username requires password_file');
  if (username === undefined) section.fail('password_file', 'password_file requires username');
  return { username, passwordFile };
}

/** auth defaults to `agent` exactly when the mirror has credentials, and must agree with them when set. */
function readAuth(section: Section, hasCredentials: boolean): AuthMode {
  const auth = section.read('auth', parseAuthMode, hasCredentials ? 'agent' : 'passthrough');
  if (auth === 'agent' && !hasCredentials) {
    section.fail('auth', 'auth = "agent" needs username + password_file or docker_config_file');
  }
  if (auth === 'passthrough' && hasCredentials) {
    section.fail('auth', 'credentials are only used with auth = "agent"; remove them or set auth = "agent"');
  }
  return auth;
}

function parseMode(value: unknown): MirrorMode {
  const text = expectString(value);
  if (text !== 'online' && text !== 'offline') throw new Error('must be "online" (pull-through, the default) or "offline" (cache and imports only, upstream never contacted)');
  return text;
}

/** `{ [key]: value }`, or `{}` for undefined, so that unset optional fields are absent rather than undefined. */
function present<K extends string, V>(key: K, value: V | undefined): Partial<Record<K, V>> {
  return value === undefined ? {} : ({ [key]: value } as Partial<Record<K, V>>);
}

/**
 * Opens (never reads) each file holding a secret, so a typo fails at start-up and the secret stays out
 * of every message.
 */
async function checkSecretFiles(config: AgentConfig): Promise<void> {
  const files: [key: string, file: string | undefined][] = [
    ['connectivity_proxy.client_secret_file', config.connectivityProxy?.clientSecretFile],
    ...config.mirrors.flatMap((mirror, i): [string, string | undefined][] => [
      [`mirror[${i}].password_file`, mirror.passwordFile],
      [`mirror[${i}].docker_config_file`, mirror.dockerConfigFile],
    ]),
  ];
  for (const [key, file] of files) {
    if (file === undefined) continue;
    const problem = await unreadableFile(file);
    if (problem !== undefined) {
      throw new ConfigError(config.source, key, `cannot read: ${messageOf(problem)}`, { cause: problem });
    }
  }
}

/** Why `file` cannot be read as a regular file, or undefined if it can. */
async function unreadableFile(file: string): Promise<unknown> {
  try {
    const handle = await open(file, 'r');
    try {
      if (!(await handle.stat()).isFile()) return new Error(`${file} is not a regular file`);
    } finally {
      await handle.close();
    }
    return undefined;
  } catch (error) {
    return error;
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** toml reports semantic errors as `line`/`column`, syntax errors (from its generated parser) as `location.start`. */
function positionOf(error: unknown): { line: number; column: number } | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const direct = error as { line?: unknown; column?: unknown; location?: { start?: { line?: unknown; column?: unknown } } };
  const at = typeof direct.line === 'number' ? direct : direct.location?.start;
  if (typeof at?.line !== 'number' || typeof at.column !== 'number') return undefined;
  return { line: at.line, column: at.column };
}
