import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError } from './errors.ts';
import { defaultConfig, loadConfig, parseConfig, parseMirrorTable } from './load.ts';
import type { AgentConfig, ConnectivityProxyConfig, MirrorConfig } from './types.ts';
import { rejection, thrown } from '../../test/fixtures/thrown.ts';

const GiB = 1024 ** 3;
const DEFAULT_LIMITS = {
  maxConnections: 1024,
  metricsMaxConnections: 64,
  requestTimeoutMs: 20_000,
  sendTimeoutMs: 60_000,
  maxFillsPerMirror: 8,
  maxQueuedFillsPerMirror: 64,
};
const FILE = '/etc/rpa/agent.toml';
const BASE = '/etc/rpa';
const MIRROR = '[[mirror]]\nregistry = "docker.io"\nupstream = "https://registry-1.docker.io"\n';
const LISTEN_HINT = 'expected host:port with an IP address or localhost, e.g. 127.0.0.1:5050 or [::1]:5050';
const REGISTRY_HINT = 'write the host as in image references, e.g. registry.corp.example:5000';
const DURATION_HINT = 'expected a duration such as "90s", "15m", "1h30m", "500ms" or "7d" (units ms, s, m, h, d)';
const PROXY_HINT = 'expected an absolute http: URL, e.g. http://proxy.corp:3128';
const PROXY_SCHEME = `scheme must be http (the proxy is spoken to in plain HTTP); ${PROXY_HINT}`;
const LOCATION_ID_PROBLEM = 'must be printable ASCII without whitespace or control characters, e.g. "onprem-1"';
const ROUTE_PROBLEM = 'must be one of "direct", "connectivity-proxy", "http-proxy"';
const CP_HTTPS_UPSTREAM =
  "the Connectivity Proxy's HTTP port takes plain http:// virtual hosts and the Cloud Connector does the TLS " +
  'to the real registry; use http://<virtual-host>:<port> as configured in the Cloud Connector';
const NO_MIRROR = 'no [[mirror]] configured (or set [kubernetes] enabled = true to take mirrors from RegistryMirror resources)';
const CP = '[connectivity_proxy]\nurl = "http://cp.example:20003"\n';
/** A mirror on the connectivity-proxy route; `[connectivity_proxy]` is not included. */
const CP_MIRROR =
  '[[mirror]]\nregistry = "registry.corp.example"\nupstream = "http://registry-corp:5000"\nroute = "connectivity-proxy"\n';

const EXAMPLE = `
listen = "127.0.0.1:5050"           # mirror endpoint for containerd; loopback only
metrics_listen = "127.0.0.1:9402"   # health (and later metrics)
cache_dir = "/var/lib/registry-proxy-agent"
cache_max_bytes = "20GiB"           # integer bytes or a size string
hosts_dir = "/etc/containerd/certs.d"
log_level = "info"

[[mirror]]
registry = "registry.corp.example:5000"   # host[:port] exactly as written in image references
upstream = "http://127.0.0.1:5001"        # base URL the agent fetches from
tag_ttl = "0s"
max_stale = "24h"
repository_prefix = ""
username = "alice"
password_file = "/path/to/password"
`;

/** Every route, auth mode and [connectivity_proxy] key. */
const ROUTES_EXAMPLE = `
[connectivity_proxy]
url = "http://connectivity-proxy.kyma-system.svc.cluster.local:20003"
location_id = "onprem-1"
token_url = "https://auth.example/oauth/token"
client_id = "sb-123"
client_secret_file = "secrets/cp/clientsecret"

[[mirror]]
registry = "registry.corp.example:5000"
upstream = "http://registry-corp.virtual:5000"   # Cloud Connector virtual host
route = "connectivity-proxy"
location_id = "onprem-2"
auth = "passthrough"

[[mirror]]
registry = "ghcr.io"
upstream = "https://ghcr.io"
route = "http-proxy"
http_proxy = "http://proxy.corp:3128"
auth = "agent"
docker_config_file = "/path/.dockerconfigjson"

[[mirror]]
registry = "quay.io"
upstream = "http://registry-quay.virtual:443"
route = "connectivity-proxy"

[[mirror]]
registry = "docker.io"
upstream = "https://registry-1.docker.io"
route = "direct"
username = "alice"
password_file = "/path/to/password"
`;

type PlainMirror = Omit<MirrorConfig, 'upstream' | 'httpProxy'> & { upstream: string; httpProxy?: string };
type PlainConnectivityProxy = Omit<ConnectivityProxyConfig, 'url' | 'tokenUrl'> & { url: string; tokenUrl?: string };
type PlainConfig = Omit<AgentConfig, 'connectivityProxy' | 'mirrors'> & {
  connectivityProxy?: PlainConnectivityProxy;
  mirrors: PlainMirror[];
};

/** The config with URLs as strings, so that equality compares them. */
function plain(config: AgentConfig): PlainConfig {
  const { connectivityProxy, mirrors, ...rest } = config;
  return {
    ...rest,
    ...(connectivityProxy && { connectivityProxy: plainConnectivityProxy(connectivityProxy) }),
    mirrors: mirrors.map(({ upstream, httpProxy, ...mirror }) => ({
      ...mirror,
      upstream: upstream.href,
      ...(httpProxy && { httpProxy: httpProxy.href }),
    })),
  };
}

function plainConnectivityProxy({ url, tokenUrl, ...rest }: ConnectivityProxyConfig): PlainConnectivityProxy {
  return { ...rest, url: url.href, ...(tokenUrl && { tokenUrl: tokenUrl.href }) };
}

/** One [[mirror]] with `line` added; registry and upstream get defaults unless `line` sets them. */
function mirrorText(line: string): string {
  const registry = line.startsWith('registry') ? '' : 'registry = "docker.io"\n';
  const upstream = line.startsWith('upstream') ? '' : 'upstream = "https://registry-1.docker.io"\n';
  return `[[mirror]]\n${registry}${upstream}${line}\n`;
}

function parse(text: string): AgentConfig {
  return parseConfig(text, FILE, { baseDir: BASE });
}

const errorOf = (run: () => unknown): ConfigError => thrown(ConfigError, run);

const asyncErrorOf = (run: () => Promise<unknown>): Promise<ConfigError> => rejection(ConfigError, run());

/** What every parsed mirror has besides its own keys: online, no preload, no tunnel budget. */
const MIRROR_DEFAULTS = { mode: 'online', preload: [], preloadIntervalMs: 15 * 60_000, budget: {} };

describe('parseConfig', () => {
  it('parses the example file', () => {
    expect(plain(parse(EXAMPLE))).toEqual({
      source: FILE,
      listen: { host: '127.0.0.1', port: 5050 },
      metricsListen: { host: '127.0.0.1', port: 9402 },
      cacheDir: '/var/lib/registry-proxy-agent',
      cacheMaxBytes: 20 * GiB,
      pinMaxBytes: 10 * GiB,
      hostsDir: '/etc/containerd/certs.d',
      manageHosts: true,
      containerdConfig: '/etc/containerd/config.toml',
      logLevel: 'info',
      upstreamTimeouts: { connectMs: 10_000, headersMs: 30_000, bodyMs: 60_000 },
      limits: DEFAULT_LIMITS,
      hostRoot: '',
      allowOwnRegistryMirror: false,
      mirrors: [
        {
          ...MIRROR_DEFAULTS,
          registry: 'registry.corp.example:5000',
          upstream: 'http://127.0.0.1:5001/',
          tagTtlMs: 0,
          maxStaleMs: 24 * 3600_000,
          repositoryPrefix: '',
          route: 'direct',
          auth: 'agent',
          username: 'alice',
          passwordFile: '/path/to/password',
        },
      ],
    });
  });

  it('parses the example with every route and auth mode', () => {
    const config = plain(parse(ROUTES_EXAMPLE));
    expect(config.connectivityProxy).toEqual({
      url: 'http://connectivity-proxy.kyma-system.svc.cluster.local:20003/',
      locationId: 'onprem-1',
      tokenUrl: 'https://auth.example/oauth/token',
      clientId: 'sb-123',
      clientSecretFile: '/etc/rpa/secrets/cp/clientsecret',
      budget: {},
    });
    const common = { ...MIRROR_DEFAULTS, tagTtlMs: 0, maxStaleMs: 24 * 3600_000, repositoryPrefix: '' };
    expect(config.mirrors).toEqual([
      {
        ...common,
        registry: 'registry.corp.example:5000',
        upstream: 'http://registry-corp.virtual:5000/',
        route: 'connectivity-proxy',
        locationId: 'onprem-2',
        auth: 'passthrough',
      },
      {
        ...common,
        registry: 'ghcr.io',
        upstream: 'https://ghcr.io/',
        route: 'http-proxy',
        httpProxy: 'http://proxy.corp:3128/',
        auth: 'agent',
        dockerConfigFile: '/path/.dockerconfigjson',
      },
      {
        ...common,
        registry: 'quay.io',
        upstream: 'http://registry-quay.virtual:443/',
        route: 'connectivity-proxy',
        auth: 'passthrough',
      },
      {
        ...common,
        registry: 'docker.io',
        upstream: 'https://registry-1.docker.io/',
        route: 'direct',
        auth: 'agent',
        username: 'alice',
        passwordFile: '/path/to/password',
      },
    ]);
  });

  it('leaves unset optional fields out rather than undefined', () => {
    const config = parse(`${CP}${MIRROR}`);
    expect(Object.keys(config.connectivityProxy ?? {})).toEqual(['url', 'budget']);
    expect(Object.keys(config.mirrors[0] ?? {}).sort()).toEqual(
      ['auth', 'budget', 'maxStaleMs', 'mode', 'preload', 'preloadIntervalMs', 'registry', 'repositoryPrefix', 'route', 'tagTtlMs', 'upstream'],
    );
    expect(Object.keys(parse(MIRROR))).not.toContain('connectivityProxy');
  });

  it('fills in defaults for everything but the mirror', () => {
    expect(plain(parse(MIRROR))).toEqual({
      source: FILE,
      listen: { host: '127.0.0.1', port: 5050 },
      metricsListen: { host: '127.0.0.1', port: 9402 },
      cacheDir: '/var/lib/registry-proxy-agent',
      cacheMaxBytes: 20 * GiB,
      pinMaxBytes: 10 * GiB,
      hostsDir: '/etc/containerd/certs.d',
      manageHosts: true,
      containerdConfig: '/etc/containerd/config.toml',
      logLevel: 'info',
      upstreamTimeouts: { connectMs: 10_000, headersMs: 30_000, bodyMs: 60_000 },
      limits: DEFAULT_LIMITS,
      hostRoot: '',
      allowOwnRegistryMirror: false,
      mirrors: [
        {
          ...MIRROR_DEFAULTS,
          registry: 'docker.io',
          upstream: 'https://registry-1.docker.io/',
          tagTtlMs: 0,
          maxStaleMs: 24 * 3600_000,
          repositoryPrefix: '',
          route: 'direct',
          auth: 'passthrough',
        },
      ],
    });
  });

  it('resolves relative paths against the base directory', () => {
    const config = parse(
      'cache_dir = "cache"\nhosts_dir = "../certs.d/"\ncontainerd_config = "./c/../config.toml"\n' +
        `${MIRROR}username = "u"\npassword_file = "secrets/pw"\n`,
    );
    expect(config.cacheDir).toBe('/etc/rpa/cache');
    expect(config.hostsDir).toBe('/etc/certs.d');
    expect(config.containerdConfig).toBe('/etc/rpa/config.toml');
    expect(config.mirrors[0]?.passwordFile).toBe('/etc/rpa/secrets/pw');
  });

  it.each([
    ['listen = "[::1]:5050"', (c: AgentConfig) => c.listen, { host: '::1', port: 5050 }],
    ['listen = "LOCALHOST:0"', (c: AgentConfig) => c.listen, { host: 'localhost', port: 0 }],
    ['listen = "127.8.9.10:65535"', (c: AgentConfig) => c.listen, { host: '127.8.9.10', port: 65535 }],
    [
      'listen = "0.0.0.0:5050"\nallow_non_loopback_listen = true',
      (c: AgentConfig) => c.listen,
      { host: '0.0.0.0', port: 5050 },
    ],
    ['metrics_listen = "0.0.0.0:9402"', (c: AgentConfig) => c.metricsListen, { host: '0.0.0.0', port: 9402 }],
    ['metrics_listen = "[::]:9402"', (c: AgentConfig) => c.metricsListen, { host: '::', port: 9402 }],
    ['cache_max_bytes = 1048576', (c: AgentConfig) => c.cacheMaxBytes, 1048576],
    ['cache_max_bytes = "1.5GiB"', (c: AgentConfig) => c.cacheMaxBytes, 1.5 * GiB],
    ['manage_hosts = false', (c: AgentConfig) => c.manageHosts, false],
    ['log_level = "debug"', (c: AgentConfig) => c.logLevel, 'debug'],
  ])('top level %s', (line, pick, expected) => {
    expect(pick(parse(`${line}\n${MIRROR}`))).toEqual(expected);
  });

  const mirrorCases: [string, keyof PlainMirror, unknown][] = [
    ['registry = "Registry.Corp.Example:5000"', 'registry', 'registry.corp.example:5000'],
    ['registry = "_default"', 'registry', '_default'],
    ['registry = "10.1.2.3:5000"', 'registry', '10.1.2.3:5000'],
    ['registry = "[FD00::1]:5000"', 'registry', '[fd00::1]:5000'],
    ['registry = "localhost"', 'registry', 'localhost'],
    ['upstream = "https://mirror.example/v2/"', 'upstream', 'https://mirror.example/v2'],
    ['upstream = "https://mirror.example/a/b//"', 'upstream', 'https://mirror.example/a/b'],
    ['upstream = "https://mirror.example//"', 'upstream', 'https://mirror.example/'],
    ['tag_ttl = "15m"', 'tagTtlMs', 900_000],
    ['tag_ttl = 0', 'tagTtlMs', 0],
    ['max_stale = "7d"', 'maxStaleMs', 604_800_000],
    ['repository_prefix = "/team/images/"', 'repositoryPrefix', 'team/images'],
    ['repository_prefix = "a.b/c__d/e--f"', 'repositoryPrefix', 'a.b/c__d/e--f'],
    ['repository_prefix = "/"', 'repositoryPrefix', ''],
    ['route = "direct"', 'route', 'direct'],
    ['route = "http-proxy"\nhttp_proxy = "http://proxy.corp:3128"', 'route', 'http-proxy'],
    ['route = "http-proxy"\nhttp_proxy = "http://proxy.corp:3128"', 'httpProxy', 'http://proxy.corp:3128/'],
    ['route = "http-proxy"\nhttp_proxy = "HTTP://Proxy.Corp:3128/"', 'httpProxy', 'http://proxy.corp:3128/'],
    ['route = "http-proxy"\nhttp_proxy = "http://10.0.0.1"', 'httpProxy', 'http://10.0.0.1/'],
    ['route = "http-proxy"\nhttp_proxy = "http://[fd00::1]:3128"', 'httpProxy', 'http://[fd00::1]:3128/'],
    ['auth = "passthrough"', 'auth', 'passthrough'],
    ['username = "a"\npassword_file = "/p"', 'auth', 'agent'],
    ['auth = "agent"\nusername = "a"\npassword_file = "/p"', 'auth', 'agent'],
    ['docker_config_file = "/d/config.json"', 'auth', 'agent'],
    ['docker_config_file = "/d/config.json"', 'dockerConfigFile', '/d/config.json'],
    ['docker_config_file = "auth/.dockerconfigjson"', 'dockerConfigFile', '/etc/rpa/auth/.dockerconfigjson'],
    ['auth = "agent"\ndocker_config_file = "/d"', 'auth', 'agent'],
  ];
  it.each(mirrorCases)('mirror %s', (line, field, expected) => {
    expect(plain(parse(mirrorText(line))).mirrors[0]?.[field]).toEqual(expected);
  });

  const cpMirrorCases: [string, keyof PlainMirror, unknown][] = [
    ['', 'route', 'connectivity-proxy'],
    ['', 'auth', 'passthrough'],
    ['', 'upstream', 'http://registry-corp:5000/'],
    ['location_id = "onprem-2"', 'locationId', 'onprem-2'],
    ['location_id = "a.b_C-9~x"', 'locationId', 'a.b_C-9~x'],
    ['username = "a"\npassword_file = "/p"', 'auth', 'agent'],
  ];
  it.each(cpMirrorCases)('connectivity-proxy mirror %j', (line, field, expected) => {
    expect(plain(parse(`${CP}${CP_MIRROR}${line}\n`)).mirrors[0]?.[field]).toEqual(expected);
  });

  it.each([
    ['url = "http://cp.example:20003"', { url: 'http://cp.example:20003/' }],
    ['url = "HTTP://CP.example:20003/"', { url: 'http://cp.example:20003/' }],
    ['url = "http://10.96.0.20"', { url: 'http://10.96.0.20/' }],
    ['url = "http://cp:20003"\nlocation_id = "onprem-1"', { url: 'http://cp:20003/', locationId: 'onprem-1' }],
    [
      'url = "http://cp:20003"\ntoken_url = "http://auth:8080/token?grant=x"\nclient_id = "sb-1!b2|conn"\n' +
        'client_secret_file = "/s/secret"',
      {
        url: 'http://cp:20003/',
        tokenUrl: 'http://auth:8080/token?grant=x',
        clientId: 'sb-1!b2|conn',
        clientSecretFile: '/s/secret',
      },
    ],
    [
      'url = "http://cp:20003"\ntoken_url = "https://auth.example/oauth/token"\nclient_id = "sb"\n' +
        'client_secret_file = "cp/../secret"',
      {
        url: 'http://cp:20003/',
        tokenUrl: 'https://auth.example/oauth/token',
        clientId: 'sb',
        clientSecretFile: '/etc/rpa/secret',
      },
    ],
  ])('connectivity_proxy %j', (lines, expected) => {
    expect(plain(parse(`[connectivity_proxy]\n${lines}\n${MIRROR}`)).connectivityProxy).toEqual({ ...expected, budget: {} });
  });

  it.each([
    // unknown keys
    [`cache_dri = "/x"\n${MIRROR}`, 'cache_dri: unknown key (did you mean cache_dir?)'],
    [`cacheDir = "/x"\n${MIRROR}`, 'cacheDir: unknown key (did you mean cache_dir?)'],
    [`colour = "blue"\n${MIRROR}`, 'colour: unknown key'],
    [`[cache]\nsize = 1\n${MIRROR}`, 'cache: unknown key'],
    [`${MIRROR}upstram = "https://x"\n`, 'mirror[0].upstram: unknown key (did you mean upstream?)'],
    [`${MIRROR}${MIRROR.replace('docker.io', 'quay.io')}tagttl = "1s"\n`, 'mirror[1].tagttl: unknown key (did you mean tag_ttl?)'],
    // wrong types
    [`listen = 5050\n${MIRROR}`, 'listen: expected a string, got integer'],
    [`manage_hosts = "yes"\n${MIRROR}`, 'manage_hosts: expected a boolean, got string'],
    [`allow_non_loopback_listen = 1\n${MIRROR}`, 'allow_non_loopback_listen: expected a boolean, got integer'],
    [`cache_dir = ["/a"]\n${MIRROR}`, 'cache_dir: expected a string, got array'],
    [`log_level = 1.5\n${MIRROR}`, 'log_level: expected a string, got float'],
    [`hosts_dir = 1979-05-27T07:32:00Z\n${MIRROR}`, 'hosts_dir: expected a string, got datetime'],
    [`cache_max_bytes = true\n${MIRROR}`, 'cache_max_bytes: expected a size (integer or string), got boolean'],
    ['mirror = "docker.io"', 'mirror: expected an array of tables ([[mirror]]), got string'],
    ['[mirror]\nregistry = "docker.io"', 'mirror: expected an array of tables ([[mirror]]), got table'],
    ['mirror = [1]', 'mirror[0]: expected a table, got integer'],
    [`${MIRROR}username = 7\npassword_file = "/p"`, 'mirror[0].username: expected a string, got integer'],
    // [connectivity_proxy]: shape, unknown keys, wrong types
    [`connectivity_proxy = "http://cp:20003"\n${MIRROR}`, 'connectivity_proxy: expected a table ([connectivity_proxy]), got string'],
    [`[[connectivity_proxy]]\nurl = "http://cp:20003"\n${MIRROR}`, 'connectivity_proxy: expected a table ([connectivity_proxy]), got array'],
    [`[connectivity-proxy]\nurl = "http://cp:20003"\n${MIRROR}`, 'connectivity-proxy: unknown key (did you mean connectivity_proxy?)'],
    [`connectivityproxy = {}\n${MIRROR}`, 'connectivityproxy: unknown key (did you mean connectivity_proxy?)'],
    [`${CP}location = "x"\n${MIRROR}`, 'connectivity_proxy.location: unknown key (did you mean location_id?)'],
    [`${CP}tokenUrl = "https://a/t"\n${MIRROR}`, 'connectivity_proxy.tokenUrl: unknown key (did you mean token_url?)'],
    [`${CP}client-id = "x"\n${MIRROR}`, 'connectivity_proxy.client-id: unknown key (did you mean client_id?)'],
    [`${CP}client_secretfile = "/s"\n${MIRROR}`, 'connectivity_proxy.client_secretfile: unknown key (did you mean client_secret_file?)'],
    [`${CP}client_secret = "s"\n${MIRROR}`, 'connectivity_proxy.client_secret: unknown key'],
    [`[connectivity_proxy]\nurl = 20003\n${MIRROR}`, 'connectivity_proxy.url: expected a string, got integer'],
    [`${CP}location_id = 1\n${MIRROR}`, 'connectivity_proxy.location_id: expected a string, got integer'],
    [`${CP}token_url = true\n${MIRROR}`, 'connectivity_proxy.token_url: expected a string, got boolean'],
    [`${CP}token_url = "https://a/t"\nclient_id = 5\n${MIRROR}`, 'connectivity_proxy.client_id: expected a string, got integer'],
    [`${CP}client_secret_file = ["/s"]\n${MIRROR}`, 'connectivity_proxy.client_secret_file: expected a string, got array'],
    // [[mirror]] new keys: unknown keys, wrong types
    [`${MIRROR}rout = "direct"\n`, 'mirror[0].rout: unknown key (did you mean route?)'],
    [`${MIRROR}httpProxy = "http://p:1"\n`, 'mirror[0].httpProxy: unknown key (did you mean http_proxy?)'],
    [`${MIRROR}location = "x"\n`, 'mirror[0].location: unknown key (did you mean location_id?)'],
    [`${MIRROR}docker-config-file = "/d"\n`, 'mirror[0].docker-config-file: unknown key (did you mean docker_config_file?)'],
    [`${MIRROR}autho = "agent"\n`, 'mirror[0].autho: unknown key (did you mean auth?)'],
    [`${MIRROR}route = 1\n`, 'mirror[0].route: expected a string, got integer'],
    [`${MIRROR}route = "http-proxy"\nhttp_proxy = 3128\n`, 'mirror[0].http_proxy: expected a string, got integer'],
    [`${MIRROR}auth = true\n`, 'mirror[0].auth: expected a string, got boolean'],
    [`${MIRROR}docker_config_file = 1\n`, 'mirror[0].docker_config_file: expected a string, got integer'],
    [`${CP}${CP_MIRROR}location_id = ["a"]\n`, 'mirror[0].location_id: expected a string, got array'],
    // listen addresses
    [`listen = "localhost"\n${MIRROR}`, `listen: port is missing; ${LISTEN_HINT}`],
    [`listen = "::1:5050"\n${MIRROR}`, 'listen: an IPv6 address must be written in brackets, e.g. [::1]:5050'],
    [`listen = ":5050"\n${MIRROR}`, 'listen: host is missing'],
    [`listen = ""\n${MIRROR}`, 'listen: must not be empty'],
    [`listen = "[::1"\n${MIRROR}`, 'listen: expected [ipv6] or [ipv6]:port'],
    [`listen = "[127.0.0.1]:5050"\n${MIRROR}`, `listen: host must be an IP address or localhost; ${LISTEN_HINT}`],
    [`listen = "node1.example:5050"\n${MIRROR}`, `listen: host must be an IP address or localhost; ${LISTEN_HINT}`],
    [`listen = "127.0.0.1:65536"\n${MIRROR}`, 'listen: port must be an integer from 0 to 65535'],
    [`listen = "127.0.0.1:http"\n${MIRROR}`, 'listen: port must be an integer from 0 to 65535'],
    [
      `listen = "0.0.0.0:5050"\n${MIRROR}`,
      'listen: 0.0.0.0 is not a loopback address; the mirror port must not be reachable from the network ' +
        '(set allow_non_loopback_listen = true to override)',
    ],
    [
      `listen = "[::]:5050"\nallow_non_loopback_listen = false\n${MIRROR}`,
      'listen: :: is not a loopback address; the mirror port must not be reachable from the network ' +
        '(set allow_non_loopback_listen = true to override)',
    ],
    [`metrics_listen = "9402"\n${MIRROR}`, `metrics_listen: port is missing; ${LISTEN_HINT}`],
    // sizes, paths, levels
    [
      `cache_max_bytes = "20G"\n${MIRROR}`,
      'cache_max_bytes: invalid size "20G": expected bytes or a number with a unit ' +
        '(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. "20GiB"',
    ],
    [`cache_max_bytes = 0\n${MIRROR}`, 'cache_max_bytes: must be greater than 0'],
    [`cache_dir = ""\n${MIRROR}`, 'cache_dir: must not be empty'],
    [`log_level = "verbose"\n${MIRROR}`, 'log_level: must be one of trace, debug, info, warn, error, fatal, silent'],
    // mirrors
    ['listen = "127.0.0.1:5050"', NO_MIRROR],
    ['mirror = []', NO_MIRROR],
    ['[kubernetes]\nenabled = false\nnode_name = "n1"', NO_MIRROR],
    ['[[mirror]]\nupstream = "https://x"', 'mirror[0].registry: required key is missing'],
    ['[[mirror]]\nregistry = "x"', 'mirror[0].upstream: required key is missing'],
    [
      `${MIRROR}${MIRROR.replace('docker.io', 'DOCKER.IO')}`,
      'mirror[1].registry: docker.io is already configured by mirror[0]',
    ],
  ])('%j fails with %j', (text, expected) => {
    expect(errorOf(() => parse(text)).message).toBe(`${FILE}: ${expected}`);
  });

  it.each([
    ['https://registry.corp.example', `must not contain a scheme; ${REGISTRY_HINT}`],
    ['registry.corp.example/team', `must not contain a path; ${REGISTRY_HINT}`],
    ['alice@registry.corp.example', `must not contain userinfo (use username and password_file); ${REGISTRY_HINT}`],
    ['', 'must not be empty'],
    ['bad_host', `host must be a DNS name, an IPv4 address or a bracketed IPv6 address; ${REGISTRY_HINT}`],
    ['-x.example', `host must be a DNS name, an IPv4 address or a bracketed IPv6 address; ${REGISTRY_HINT}`],
    ['x..example', `host must be a DNS name, an IPv4 address or a bracketed IPv6 address; ${REGISTRY_HINT}`],
    ['999.1.1.1', `host must be a DNS name, an IPv4 address or a bracketed IPv6 address; ${REGISTRY_HINT}`],
    ['[nope]:5000', `host must be a DNS name, an IPv4 address or a bracketed IPv6 address; ${REGISTRY_HINT}`],
    ['fd00::1', 'an IPv6 address must be written in brackets, e.g. [::1]:5050'],
    ['x.example:0', 'port must be an integer from 1 to 65535'],
    ['x.example:', 'port must be an integer from 1 to 65535'],
  ])('registry %j fails with %j', (registry, problem) => {
    const error = errorOf(() => parse(`[[mirror]]\nregistry = "${registry}"\nupstream = "https://x"\n`));
    expect(error.message).toBe(`${FILE}: mirror[0].registry: ${problem}`);
  });

  it.each([
    ['upstream = "registry-1.docker.io"', 'upstream: expected an absolute http: or https: URL, e.g. https://registry-1.docker.io'],
    ['upstream = "ftp://x.example"', 'upstream: scheme must be http or https'],
    ['upstream = "https://alice:pw@x.example"', 'upstream: must not contain userinfo; use username and password_file'],
    ['upstream = "https://x.example/?a=1"', 'upstream: must not contain a query or fragment'],
    ['upstream = "https://x.example/?"', 'upstream: must not contain a query or fragment'],
    ['upstream = "https://x.example/#top"', 'upstream: must not contain a query or fragment'],
    ['tag_ttl = 90', `tag_ttl: ${DURATION_HINT}, got integer`],
    ['max_stale = "-1h"', 'max_stale: invalid duration "-1h": must not be negative'],
    ['max_stale = "1 day"', `max_stale: invalid duration "1 day": ${DURATION_HINT}`],
    [
      'repository_prefix = "Library"',
      'repository_prefix: must be lower-case repository path components separated by "/", e.g. "library" or "team/images"',
    ],
    [
      'repository_prefix = "a//b"',
      'repository_prefix: must be lower-case repository path components separated by "/", e.g. "library" or "team/images"',
    ],
    ['username = "alice"', 'username: username requires password_file'],
    ['password_file = "/p"', 'password_file: password_file requires username'],
    // route
    ['route = "cp"', `route: ${ROUTE_PROBLEM}`],
    ['route = "http_proxy"', `route: ${ROUTE_PROBLEM}`],
    ['route = "Direct"', `route: ${ROUTE_PROBLEM}`],
    ['route = "http-proxy"', 'route: route = "http-proxy" needs http_proxy, e.g. http_proxy = "http://proxy.corp:3128"'],
    ['http_proxy = "http://proxy.corp:3128"', 'http_proxy: http_proxy is only used with route = "http-proxy"'],
    ['route = "direct"\nhttp_proxy = "http://proxy.corp:3128"', 'http_proxy: http_proxy is only used with route = "http-proxy"'],
    ['route = "http-proxy"\nhttp_proxy = "https://proxy.corp:3128"', `http_proxy: ${PROXY_SCHEME}`],
    ['route = "http-proxy"\nhttp_proxy = "socks5://proxy.corp:1080"', `http_proxy: ${PROXY_SCHEME}`],
    ['route = "http-proxy"\nhttp_proxy = "http://u:p@proxy.corp:3128"', 'http_proxy: must not contain userinfo'],
    ['route = "http-proxy"\nhttp_proxy = "http://proxy.corp:3128/proxy"', `http_proxy: must not contain a path; ${PROXY_HINT}`],
    ['route = "http-proxy"\nhttp_proxy = "http://proxy.corp:3128?x"', 'http_proxy: must not contain a query or fragment'],
    ['route = "http-proxy"\nhttp_proxy = "//proxy.corp:3128"', `http_proxy: ${PROXY_HINT}`],
    ['route = "http-proxy"\nhttp_proxy = ""', `http_proxy: ${PROXY_HINT}`],
    ['location_id = "onprem-1"', 'location_id: location_id is only used with route = "connectivity-proxy"'],
    [
      'route = "http-proxy"\nhttp_proxy = "http://p:1"\nlocation_id = "x"',
      'location_id: location_id is only used with route = "connectivity-proxy"',
    ],
    ['route = "connectivity-proxy"', 'route: route = "connectivity-proxy" needs a [connectivity_proxy] table with url'],
    // auth and credentials
    ['auth = "none"', 'auth: must be one of "passthrough", "agent"'],
    ['auth = "agent"', 'auth: auth = "agent" needs username + password_file or docker_config_file'],
    [
      'auth = "passthrough"\nusername = "a"\npassword_file = "/p"',
      'auth: credentials are only used with auth = "agent"; remove them or set auth = "agent"',
    ],
    [
      'auth = "passthrough"\ndocker_config_file = "/d"',
      'auth: credentials are only used with auth = "agent"; remove them or set auth = "agent"',
    ],
    [
      'docker_config_file = "/d"\nusername = "a"\npassword_file = "/p"',
      'docker_config_file: docker_config_file cannot be combined with username and password_file; use one or the other',
    ],
    [
      'docker_config_file = "/d"\nusername = "a"',
      'docker_config_file: docker_config_file cannot be combined with username and password_file; use one or the other',
    ],
    [
      'docker_config_file = "/d"\npassword_file = "/p"',
      'docker_config_file: docker_config_file cannot be combined with username and password_file; use one or the other',
    ],
    ['docker_config_file = ""', 'docker_config_file: must not be empty'],
    ['username = "a:b"\npassword_file = "/p"', "username: must not contain ':'"],
    ['username = ""\npassword_file = "/p"', 'username: must not be empty'],
  ])('mirror %j fails with %j', (line, problem) => {
    expect(errorOf(() => parse(mirrorText(line))).message).toBe(`${FILE}: mirror[0].${problem}`);
  });

  it.each([
    ['upstream = "https://registry.corp.example"', `upstream: ${CP_HTTPS_UPSTREAM}`],
    ['upstream = "HTTPS://registry-corp:443/v2"', `upstream: ${CP_HTTPS_UPSTREAM}`],
    ['location_id = ""', 'location_id: must not be empty'],
    ['location_id = "on prem"', `location_id: ${LOCATION_ID_PROBLEM}`],
    ['http_proxy = "http://proxy.corp:3128"', 'http_proxy: http_proxy is only used with route = "http-proxy"'],
    ['auth = "agent"', 'auth: auth = "agent" needs username + password_file or docker_config_file'],
  ])('connectivity-proxy mirror %j fails with %j', (line, problem) => {
    const text = line.startsWith('upstream')
      ? `${CP}[[mirror]]\nregistry = "registry.corp.example"\n${line}\nroute = "connectivity-proxy"\n`
      : `${CP}${CP_MIRROR}${line}\n`;
    expect(errorOf(() => parse(text)).message).toBe(`${FILE}: mirror[0].${problem}`);
  });

  it('names the failing mirror on the connectivity-proxy route', () => {
    const text = `${MIRROR}${CP}${CP_MIRROR.replace('"http://', '"https://')}`;
    expect(errorOf(() => parse(text)).message).toBe(`${FILE}: mirror[1].upstream: ${CP_HTTPS_UPSTREAM}`);
  });

  it.each([
    ['location_id = "x"', 'url: required key is missing'],
    ['url = "https://cp.example:20003"', `url: ${PROXY_SCHEME}`],
    ['url = "connectivity-proxy.kyma-system:20003"', `url: ${PROXY_SCHEME}`],
    ['url = "cp.example"', `url: ${PROXY_HINT}`],
    ['url = "http://user:pw@cp.example:20003"', 'url: must not contain userinfo'],
    ['url = "http://cp.example:20003/proxy"', `url: must not contain a path; ${PROXY_HINT}`],
    ['url = "http://cp.example:20003/?a=1"', 'url: must not contain a query or fragment'],
    ['url = "http://cp.example:20003#x"', 'url: must not contain a query or fragment'],
    ['url = "http://cp.example:99999"', `url: ${PROXY_HINT}`],
    ['url = "http://cp:1"\nlocation_id = ""', 'location_id: must not be empty'],
    ['url = "http://cp:1"\nlocation_id = "on prem"', `location_id: ${LOCATION_ID_PROBLEM}`],
    ['url = "http://cp:1"\nlocation_id = "a\\tb"', `location_id: ${LOCATION_ID_PROBLEM}`],
    ['url = "http://cp:1"\nlocation_id = "a\\nb"', `location_id: ${LOCATION_ID_PROBLEM}`],
    ['url = "http://cp:1"\nlocation_id = "a\\u007fb"', `location_id: ${LOCATION_ID_PROBLEM}`],
    ['url = "http://cp:1"\nlocation_id = "münchen"', `location_id: ${LOCATION_ID_PROBLEM}`],
    ['url = "http://cp:1"\ntoken_url = "https://a/t"', 'token_url: token_url requires client_id and client_secret_file'],
    ['url = "http://cp:1"\ntoken_url = "https://a/t"\nclient_id = "sb"', 'token_url: token_url requires client_secret_file'],
    ['url = "http://cp:1"\ntoken_url = "https://a/t"\nclient_secret_file = "/s"', 'token_url: token_url requires client_id'],
    ['url = "http://cp:1"\nclient_id = "sb"', 'client_id: client_id is only used with token_url (non-trusted mode)'],
    [
      'url = "http://cp:1"\nclient_secret_file = "/s"',
      'client_secret_file: client_secret_file is only used with token_url (non-trusted mode)',
    ],
    [
      'url = "http://cp:1"\nclient_id = "sb"\nclient_secret_file = "/s"',
      'client_id: client_id is only used with token_url (non-trusted mode)',
    ],
    [
      'url = "http://cp:1"\ntoken_url = "auth.example/token"\nclient_id = "sb"\nclient_secret_file = "/s"',
      'token_url: expected an absolute http: or https: URL, e.g. https://auth.example/oauth/token',
    ],
    [
      'url = "http://cp:1"\ntoken_url = "ftp://auth.example/token"\nclient_id = "sb"\nclient_secret_file = "/s"',
      'token_url: scheme must be http or https',
    ],
    [
      'url = "http://cp:1"\ntoken_url = "https://sb:pw@auth.example/token"\nclient_id = "sb"\nclient_secret_file = "/s"',
      'token_url: must not contain userinfo; use client_id and client_secret_file',
    ],
    [
      'url = "http://cp:1"\ntoken_url = "https://auth.example/token#x"\nclient_id = "sb"\nclient_secret_file = "/s"',
      'token_url: must not contain a fragment',
    ],
    [
      'url = "http://cp:1"\ntoken_url = "https://a/t"\nclient_id = ""\nclient_secret_file = "/s"',
      'client_id: must not be empty',
    ],
    [
      'url = "http://cp:1"\ntoken_url = "https://a/t"\nclient_id = "a\\u0000b"\nclient_secret_file = "/s"',
      'client_id: must not contain control characters',
    ],
    [
      'url = "http://cp:1"\ntoken_url = "https://a/t"\nclient_id = "sb"\nclient_secret_file = ""',
      'client_secret_file: must not be empty',
    ],
  ])('connectivity_proxy %j fails with %j', (lines, problem) => {
    const error = errorOf(() => parse(`[connectivity_proxy]\n${lines}\n${MIRROR}`));
    expect(error.message).toBe(`${FILE}: connectivity_proxy.${problem}`);
  });

  it('reports TOML syntax errors with line and column', () => {
    const error = errorOf(() => parse('# agent\n\nlisten = \n'));
    expect(error.key).toBe('');
    expect(error.problem).toMatch(/^invalid TOML at line 3, column 10: Expected .+ but "\\n" found\.$/);
    expect(error.message).toBe(`${FILE}: ${error.problem}`);
    expect(error.cause).toBeInstanceOf(Error);
  });

  it('reports TOML semantic errors with line and column', () => {
    const error = errorOf(() => parse(`listen = "a"\n\n\n\nlisten = "b"\n${MIRROR}`));
    expect(error.message).toBe(`${FILE}: invalid TOML at line 5, column 1: Cannot redefine existing key 'listen'.`);
  });

  it('keeps the validator error as cause', () => {
    const error = errorOf(() => parse(`listen = 1\n${MIRROR}`));
    expect(error).toMatchObject({ file: FILE, key: 'listen', problem: 'expected a string, got integer' });
    expect(error.cause).toEqual(new Error('expected a string, got integer'));
  });

  it.each([
    `${MIRROR}password = "hunter2"\n`,
    `password = "hunter2"\n${MIRROR}`,
    '[[mirror]]\nregistry = "docker.io"\nupstream = "https://alice:hunter2@registry-1.docker.io"\n',
    '[[mirror]]\nregistry = "alice:hunter2@docker.io"\nupstream = "https://registry-1.docker.io"\n',
    '[[mirror]]\nregistry = "https://alice:hunter2@docker.io"\nupstream = "https://registry-1.docker.io"\n',
    `${MIRROR}username = "alice"\npassword_file = "hunter2"\npassword_file = "x"\n`,
    `${MIRROR}username = "alice"\npassword = "hunter2`,
    `${MIRROR}route = "http-proxy"\nhttp_proxy = "http://alice:hunter2@proxy.corp:3128"\n`,
    `[connectivity_proxy]\nurl = "http://alice:hunter2@cp:20003"\n${MIRROR}`,
    `${CP}client_secret = "hunter2"\n${MIRROR}`,
    `${CP}token_url = "https://sb:hunter2@auth.example/token"\nclient_id = "sb"\nclient_secret_file = "/s"\n${MIRROR}`,
    `${CP}token_url = "https://a/t"\nclient_id = "sb"\nclient_secret_file = "x"\nclient_secret_file = "hunter2"\n${MIRROR}`,
  ])('never echoes a password: %j', (text) => {
    const error = errorOf(() => parse(text));
    expect(error.message).not.toContain('hunter2');
    expect(String(error.cause)).not.toContain('hunter2');
  });
});

describe('[kubernetes]', () => {
  const env = { NODE_NAME: 'node-env', POD_NAMESPACE: 'agents' };
  const parseWith = (text: string, e: Record<string, string | undefined> = env): AgentConfig =>
    parseConfig(text, FILE, { baseDir: BASE, env: e });

  it('allows zero [[mirror]] tables when enabled, with defaults from the Downward API variables', () => {
    const config = parseWith('cache_dir = "/var/cache/rpa"\n[kubernetes]\nenabled = true\n');
    expect(config.mirrors).toEqual([]);
    expect(config.kubernetes).toEqual({ enabled: true, namespace: 'agents', nodeName: 'node-env', stateFile: '/var/cache/rpa/kubernetes-mirrors.json' });
  });

  it('takes explicit keys over the environment, resolves paths, and defaults the namespace without POD_NAMESPACE', () => {
    const text = '[kubernetes]\nenabled = true\nnode_name = "worker-1.example"\nkubeconfig = "kube/config"\nstate_file = "state.json"\n';
    expect(parseWith(text, {}).kubernetes).toEqual({
      enabled: true,
      namespace: 'registry-proxy-agent',
      nodeName: 'worker-1.example',
      kubeconfig: '/etc/rpa/kube/config',
      stateFile: '/etc/rpa/state.json',
    });
  });

  it.each([
    ['[kubernetes]\nenabled = true\n', 'kubernetes.node_name: required with enabled = true: set node_name or NODE_NAME (the DaemonSet sets it from spec.nodeName)'],
    ['[kubernetes]\nenabled = "yes"\nnode_name = "n"\n', 'kubernetes.enabled: expected a boolean, got string'],
    ['[kubernetes]\nenabled = true\nnode_name = "N_1"\n', "kubernetes.node_name: must be a node name (DNS subdomain): lower-case letters, digits and '-'"],
    ['[kubernetes]\nenabled = true\nnode_name = "n"\nnamespace = "a.b"\n', "kubernetes.namespace: must be a DNS label: lower-case letters, digits and '-'"],
    ['[kubernetes]\nenabled = true\nnode_name = "n"\nwatch = true\n', 'kubernetes.watch: unknown key'],
  ])('%j fails with %j', (text, expected) => {
    expect(errorOf(() => parseWith(text, {})).message).toBe(`${FILE}: ${expected}`);
  });
});

describe('parseMirrorTable', () => {
  const cp: ConnectivityProxyConfig = { url: new URL('http://cp.example:20003'), budget: {} };

  it('validates a table like [[mirror]]; in-memory credentials make auth default to agent', () => {
    const table = { registry: 'Registry.Corp.Example:5000', upstream: 'http://registry.virtual:5000/', route: 'connectivity-proxy', location_id: 'onprem-2' };
    const mirror = parseMirrorTable(table, 'RegistryMirror/corp', { connectivityProxy: cp, inlineCredentials: { username: 'u', password: 'p' } });
    expect(mirror).toMatchObject({ registry: 'registry.corp.example:5000', route: 'connectivity-proxy', locationId: 'onprem-2', auth: 'agent', inlineCredentials: { username: 'u', password: 'p' } });
    expect(mirror.upstream.href).toBe('http://registry.virtual:5000/');
  });

  it.each([
    [{ registry: 'r.example', upstream: 'https://r.example', route: 'connectivity-proxy' }, { connectivityProxy: cp }, `spec.upstream: ${CP_HTTPS_UPSTREAM}`],
    [{ registry: 'r.example', upstream: 'http://r.example', route: 'connectivity-proxy' }, {}, 'spec.route: route = "connectivity-proxy" needs a [connectivity_proxy] table with url'],
    [{ registry: 'r.example', upstream: 'http://r.example', auth: 'agent' }, {}, 'spec.auth: auth = "agent" needs username + password_file or docker_config_file'],
    [{ registry: 'r.example', upstream: 'http://r.example', username: 'u' }, { inlineCredentials: { username: 'u', password: 'p' } }, 'spec.username: credentials are handed over in memory (a Secret); remove this key'],
  ])('%j fails', (table, opts, expected) => {
    expect(errorOf(() => parseMirrorTable(table, 'RegistryMirror/x', { ...opts, path: 'spec' })).message).toBe(`RegistryMirror/x: ${expected}`);
  });
});

describe('loadConfig', () => {
  let dir = '';
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rpa-config-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function write(text: string): Promise<string> {
    const file = join(dir, 'agent.toml');
    await writeFile(file, text);
    return file;
  }

  it('reads a file and resolves paths against its directory', async () => {
    await writeFile(join(dir, 'password'), 'hunter2\n');
    const file = await write(`cache_dir = "cache"\n${MIRROR}username = "alice"\npassword_file = "password"\n`);
    const config = await loadConfig(file);
    expect(config.source).toBe(file);
    expect(config.cacheDir).toBe(join(dir, 'cache'));
    expect(config.mirrors[0]).toMatchObject({ username: 'alice', passwordFile: join(dir, 'password') });
  });

  it('fails on a missing file', async () => {
    const file = join(dir, 'missing.toml');
    const error = await asyncErrorOf(() => loadConfig(file));
    expect(error.message).toBe(`${file}: cannot read: ENOENT: no such file or directory, open '${file}'`);
    expect(error.key).toBe('');
    expect(error.cause).toMatchObject({ code: 'ENOENT' });
  });

  it('fails on an invalid file like parseConfig', async () => {
    const file = await write('listen = 1\n');
    await expect(loadConfig(file)).rejects.toThrow(`${file}: listen: expected a string, got integer`);
  });

  it('fails on a missing password file', async () => {
    const file = await write(`${MIRROR}${MIRROR.replace('docker.io', 'quay.io')}username = "a"\npassword_file = "pw"\n`);
    const error = await asyncErrorOf(() => loadConfig(file));
    const pw = join(dir, 'pw');
    expect(error.message).toBe(
      `${file}: mirror[1].password_file: cannot read: ENOENT: no such file or directory, open '${pw}'`,
    );
  });

  it('fails on a password file that is a directory, without reading it', async () => {
    await mkdir(join(dir, 'pw'));
    const file = await write(`${MIRROR}username = "a"\npassword_file = "pw"\n`);
    const error = await asyncErrorOf(() => loadConfig(file));
    expect(error.message).toBe(`${file}: mirror[0].password_file: cannot read: ${join(dir, 'pw')} is not a regular file`);
  });

  it('checks client_secret_file and docker_config_file without reading them', async () => {
    await mkdir(join(dir, 'cp'));
    await writeFile(join(dir, 'cp', 'clientsecret'), 'hunter2');
    await writeFile(join(dir, 'dockerconfig.json'), '{"auths":{}}');
    const file = await write(
      '[connectivity_proxy]\nurl = "http://cp:20003"\ntoken_url = "https://auth.example/token"\nclient_id = "sb"\n' +
        `client_secret_file = "cp/clientsecret"\n${MIRROR}docker_config_file = "dockerconfig.json"\n`,
    );
    const config = await loadConfig(file);
    expect(config.connectivityProxy?.clientSecretFile).toBe(join(dir, 'cp', 'clientsecret'));
    expect(config.mirrors[0]).toMatchObject({ auth: 'agent', dockerConfigFile: join(dir, 'dockerconfig.json') });
    expect(JSON.stringify(config)).not.toContain('hunter2');
  });

  it('fails on a missing client_secret_file', async () => {
    const file = await write(
      '[connectivity_proxy]\nurl = "http://cp:20003"\ntoken_url = "https://auth.example/token"\nclient_id = "sb"\n' +
        `client_secret_file = "secret"\n${MIRROR}`,
    );
    const error = await asyncErrorOf(() => loadConfig(file));
    const secret = join(dir, 'secret');
    expect(error.message).toBe(
      `${file}: connectivity_proxy.client_secret_file: cannot read: ENOENT: no such file or directory, open '${secret}'`,
    );
  });

  it('fails on a docker_config_file that is a directory', async () => {
    await mkdir(join(dir, 'docker'));
    const file = await write(`${MIRROR}${MIRROR.replace('docker.io', 'quay.io')}docker_config_file = "docker"\n`);
    const error = await asyncErrorOf(() => loadConfig(file));
    expect(error.message).toBe(
      `${file}: mirror[1].docker_config_file: cannot read: ${join(dir, 'docker')} is not a regular file`,
    );
  });

  it('never puts the password into a message', async () => {
    await writeFile(join(dir, 'pw'), 'hunter2');
    const file = await write(`listen = "0.0.0.0:1"\n${MIRROR}username = "a"\npassword_file = "pw"\n`);
    const error = await asyncErrorOf(() => loadConfig(file));
    expect(error.key).toBe('listen');
    expect(error.message).not.toContain('hunter2');
  });
});

describe('defaultConfig', () => {
  it('is the embedded default under the working directory', () => {
    expect(plain(defaultConfig('/home/me/rpa'))).toEqual({
      source: '<embedded default>',
      listen: { host: '127.0.0.1', port: 5050 },
      metricsListen: { host: '127.0.0.1', port: 9402 },
      cacheDir: '/home/me/rpa/.agent-data/cache',
      cacheMaxBytes: 10 * GiB,
      pinMaxBytes: 5 * GiB,
      hostsDir: '/home/me/rpa/.agent-data/certs.d',
      manageHosts: true,
      containerdConfig: '/etc/containerd/config.toml',
      logLevel: 'info',
      upstreamTimeouts: { connectMs: 10_000, headersMs: 30_000, bodyMs: 60_000 },
      limits: DEFAULT_LIMITS,
      hostRoot: '',
      allowOwnRegistryMirror: false,
      mirrors: [
        {
          ...MIRROR_DEFAULTS,
          registry: 'docker.io',
          upstream: 'https://registry-1.docker.io/',
          tagTtlMs: 0,
          maxStaleMs: 24 * 3600_000,
          repositoryPrefix: '',
          route: 'direct',
          auth: 'passthrough',
        },
      ],
    });
  });
});

describe('ConfigError', () => {
  it.each([
    ['a.toml', 'mirror[1].upstream', 'bad', 'a.toml: mirror[1].upstream: bad'],
    ['a.toml', '', 'no [[mirror]] configured', 'a.toml: no [[mirror]] configured'],
  ])('%s %s %s → %s', (file, key, problem, message) => {
    const cause = new Error('root');
    const error = new ConfigError(file, key, problem, { cause });
    expect(error).toBeInstanceOf(Error);
    expect(error).toMatchObject({ name: 'ConfigError', file, key, problem, message, cause });
  });
});

describe('the agent image registry (bootstrap deadlock)', () => {
  const mirrorOf = (registry: string) => `[[mirror]]\nregistry = "${registry}"\nupstream = "https://${registry}"\n`;

  it.each([
    ['ghcr.io/registry-proxy-agent/registry-proxy-agent:0.1.0', 'ghcr.io'],
    ['registry.corp.example:5000/platform/agent@sha256:' + 'a'.repeat(64), 'registry.corp.example:5000'],
    ['library/node:24', 'docker.io'],
    ['node:24', 'docker.io'],
    ['localhost/agent:1', 'localhost'],
  ])('refuses to mirror the registry of %s unless confirmed', (image, registry) => {
    const text = `own_image = "${image}"\n${mirrorOf(registry)}`;
    expect(() => parseConfig(text, '/etc/rpa/agent.toml', { env: {} })).toThrow(
      new RegExp(`^/etc/rpa/agent.toml: mirror\\[0\\]\\.registry: the agent's own image .* comes from ${registry.replace('.', '\\.')}`),
    );
    expect(parseConfig(`allow_own_registry_mirror = true\n${text}`, 'x', { env: {} }).mirrors).toHaveLength(1);
  });

  it('takes the image from AGENT_IMAGE (set by the DaemonSet) and allows other registries', () => {
    expect(() => parseConfig(mirrorOf('ghcr.io'), 'x', { env: { AGENT_IMAGE: 'ghcr.io/a/b:1' } })).toThrow(/allow_own_registry_mirror/);
    expect(parseConfig(mirrorOf('registry.corp.example'), 'x', { env: { AGENT_IMAGE: 'ghcr.io/a/b:1' } }).ownImage).toBe('ghcr.io/a/b:1');
  });
});

describe('upstream timeouts', () => {
  const mirror = '[[mirror]]\nregistry = "r.example"\nupstream = "http://r.example"\n';
  it('are durations, positive', () => {
    const config = parseConfig(`upstream_connect_timeout = "2s"\nupstream_response_timeout = "1m30s"\nupstream_idle_timeout = "500ms"\n${mirror}`, 'x');
    expect(config.upstreamTimeouts).toEqual({ connectMs: 2_000, headersMs: 90_000, bodyMs: 500 });
    expect(() => parseConfig(`upstream_response_timeout = "0s"\n${mirror}`, 'f.toml')).toThrow(/^f\.toml: upstream_response_timeout: /);
    expect(() => parseConfig(`upstream_idle_timeout = 5\n${mirror}`, 'f.toml')).toThrow(/^f\.toml: upstream_idle_timeout: /);
  });
});

describe('limits and allowed_destinations', () => {
  it('reads every limit', () => {
    const config = parse(
      'max_connections = 10\nmetrics_max_connections = 3\nclient_request_timeout = "5s"\nsend_timeout = "2m"\nmax_fills_per_mirror = 2\nmax_queued_fills_per_mirror = 7\n' + MIRROR,
    );
    expect(config.limits).toEqual({ maxConnections: 10, metricsMaxConnections: 3, requestTimeoutMs: 5_000, sendTimeoutMs: 120_000, maxFillsPerMirror: 2, maxQueuedFillsPerMirror: 7 });
  });

  it.each([
    ['max_connections = 0', 'max_connections', 'must be from 1 to 100000'],
    ['max_connections = 1.5', 'max_connections', 'expected an integer, got 1.5'],
    ['metrics_max_connections = "64"', 'metrics_max_connections', 'expected an integer, got string'],
    ['max_fills_per_mirror = 0', 'max_fills_per_mirror', 'must be from 1 to 1000'],
    ['send_timeout = "0s"', 'send_timeout', 'must be greater than 0'],
    ['client_request_timeout = "soon"', 'client_request_timeout', DURATION_HINT],
  ])('refuses %s', (line, key, problem) => {
    const error = errorOf(() => parse(`${line}\n${MIRROR}`));
    expect(error.key).toBe(key);
    expect(error.problem).toContain(problem);
  });

  it('parses host, host:port, IP literals and CIDRs', () => {
    const config = parse(mirrorText('allowed_destinations = ["127.0.0.1:5001", "S3.Corp.Example", "[fd00::1]:443", "fd00::2", "10.20.0.0/16", "fd00::/8"]'));
    expect(config.mirrors[0]?.allowedDestinations).toEqual([
      { kind: 'host', host: '127.0.0.1', port: 5001, text: '127.0.0.1:5001' },
      { kind: 'host', host: 's3.corp.example', port: undefined, text: 'S3.Corp.Example' },
      { kind: 'host', host: 'fd00::1', port: 443, text: '[fd00::1]:443' },
      { kind: 'host', host: 'fd00::2', port: undefined, text: 'fd00::2' },
      { kind: 'cidr', address: '10.20.0.0', prefix: 16, family: 'ipv4', text: '10.20.0.0/16' },
      { kind: 'cidr', address: 'fd00::', prefix: 8, family: 'ipv6', text: 'fd00::/8' },
    ]);
  });

  it.each([
    ['"127.0.0.1"', 'expected an array of strings'],
    ['[5001]', 'entry 0: expected a string'],
    ['["http://s3.corp"]', 'not a URL'],
    ['["s3.corp:0"]', 'port must be an integer from 1 to 65535'],
    ['["10.0.0.0/33"]', 'prefix length must be from 0 to 32'],
    ['["storage/8"]', 'a CIDR needs an IP address'],
    ['["fd00::1:443:x"]', 'an IPv6 address with a port must be written in brackets'],
    ['["300.1.1.1"]', 'host must be a DNS name or an IP address'],
  ])('refuses allowed_destinations = %s', (value, problem) => {
    const error = errorOf(() => parse(mirrorText(`allowed_destinations = ${value}`)));
    expect(error.key).toBe('mirror[0].allowed_destinations');
    expect(error.problem).toContain(problem);
  });

  it('refuses allowed_destinations on the connectivity-proxy route', () => {
    const error = errorOf(() => parse(`${CP}${CP_MIRROR}allowed_destinations = ["10.0.0.0/8"]\n`));
    expect(error.problem).toContain('Cloud Connector');
  });
});
