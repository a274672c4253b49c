import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError } from './errors.ts';
import { defaultConfig, loadConfig, parseConfig } from './load.ts';
import type { AgentConfig, MirrorConfig } from './types.ts';

const GiB = 1024 ** 3;
const FILE = '/etc/rpa/agent.toml';
const BASE = '/etc/rpa';
const MIRROR = '[[mirror]]\nregistry = "docker.io"\nupstream = "https://registry-1.docker.io"\n';
const LISTEN_HINT = 'expected host:port with an IP address or localhost, e.g. 127.0.0.1:5050 or [::1]:5050';
const REGISTRY_HINT = 'write the host as in image references, e.g. registry.corp.example:5000';
const DURATION_HINT = 'expected a duration such as "90s", "15m", "1h30m", "500ms" or "7d" (units ms, s, m, h, d)';

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

type PlainMirror = Omit<MirrorConfig, 'upstream'> & { upstream: string };
type PlainConfig = Omit<AgentConfig, 'mirrors'> & { mirrors: PlainMirror[] };

/** The config with URLs as strings, so that equality compares them. */
function plain(config: AgentConfig): PlainConfig {
  return { ...config, mirrors: config.mirrors.map((m) => ({ ...m, upstream: m.upstream.href })) };
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

function errorOf(run: () => unknown): ConfigError {
  try {
    run();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error('expected a ConfigError');
}

async function asyncErrorOf(run: () => Promise<unknown>): Promise<ConfigError> {
  try {
    await run();
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
  throw new Error('expected a ConfigError');
}

describe('parseConfig', () => {
  it('parses the example file', () => {
    expect(plain(parse(EXAMPLE))).toEqual({
      source: FILE,
      listen: { host: '127.0.0.1', port: 5050 },
      metricsListen: { host: '127.0.0.1', port: 9402 },
      cacheDir: '/var/lib/registry-proxy-agent',
      cacheMaxBytes: 20 * GiB,
      hostsDir: '/etc/containerd/certs.d',
      manageHosts: true,
      containerdConfig: '/etc/containerd/config.toml',
      logLevel: 'info',
      mirrors: [
        {
          registry: 'registry.corp.example:5000',
          upstream: 'http://127.0.0.1:5001/',
          tagTtlMs: 0,
          maxStaleMs: 24 * 3600_000,
          repositoryPrefix: '',
          username: 'alice',
          passwordFile: '/path/to/password',
        },
      ],
    });
  });

  it('fills in defaults for everything but the mirror', () => {
    expect(plain(parse(MIRROR))).toEqual({
      source: FILE,
      listen: { host: '127.0.0.1', port: 5050 },
      metricsListen: { host: '127.0.0.1', port: 9402 },
      cacheDir: '/var/lib/registry-proxy-agent',
      cacheMaxBytes: 20 * GiB,
      hostsDir: '/etc/containerd/certs.d',
      manageHosts: true,
      containerdConfig: '/etc/containerd/config.toml',
      logLevel: 'info',
      mirrors: [
        {
          registry: 'docker.io',
          upstream: 'https://registry-1.docker.io/',
          tagTtlMs: 0,
          maxStaleMs: 24 * 3600_000,
          repositoryPrefix: '',
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
  ];
  it.each(mirrorCases)('mirror %s', (line, field, expected) => {
    expect(plain(parse(mirrorText(line))).mirrors[0]?.[field]).toEqual(expected);
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
    ['listen = "127.0.0.1:5050"', 'no [[mirror]] configured'],
    ['mirror = []', 'no [[mirror]] configured'],
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
    ['username = "a:b"\npassword_file = "/p"', "username: must not contain ':'"],
    ['username = ""\npassword_file = "/p"', 'username: must not be empty'],
  ])('mirror %j fails with %j', (line, problem) => {
    expect(errorOf(() => parse(mirrorText(line))).message).toBe(`${FILE}: mirror[0].${problem}`);
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
  ])('never echoes a password: %j', (text) => {
    const error = errorOf(() => parse(text));
    expect(error.message).not.toContain('hunter2');
    expect(String(error.cause)).not.toContain('hunter2');
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
      hostsDir: '/home/me/rpa/.agent-data/certs.d',
      manageHosts: true,
      containerdConfig: '/etc/containerd/config.toml',
      logLevel: 'info',
      mirrors: [
        {
          registry: 'docker.io',
          upstream: 'https://registry-1.docker.io/',
          tagTtlMs: 0,
          maxStaleMs: 24 * 3600_000,
          repositoryPrefix: '',
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
