import { open, readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import toml from 'toml';
import { isLoopback, parseListenAddress, parseRegistry } from './address.ts';
import { parseDuration } from './duration.ts';
import { ConfigError } from './errors.ts';
import { isTable, Section } from './section.ts';
import type { Table } from './section.ts';
import { parseSize } from './size.ts';
import type { AgentConfig, ListenAddress, MirrorConfig } from './types.ts';
import {
  expectBoolean,
  parseLogLevel,
  parsePath,
  parseRepositoryPrefix,
  parseUpstream,
  parseUsername,
  requirePositive,
} from './values.ts';

export interface ParseOptions {
  /** Directory that relative paths are resolved against (default: the process's working directory). */
  readonly baseDir?: string;
}

const TOP_LEVEL_KEYS = [
  'listen',
  'metrics_listen',
  'cache_dir',
  'cache_max_bytes',
  'hosts_dir',
  'manage_hosts',
  'containerd_config',
  'log_level',
  'allow_non_loopback_listen',
  'mirror',
] as const;

const MIRROR_KEYS = [
  'registry',
  'upstream',
  'tag_ttl',
  'max_stale',
  'repository_prefix',
  'username',
  'password_file',
] as const;

/** What `npm start` runs with when no file is given; relative paths land under the working directory. */
const EMBEDDED_DEFAULT = `
cache_dir = ".agent-data/cache"
cache_max_bytes = "10GiB"
hosts_dir = ".agent-data/certs.d"

[[mirror]]
registry = "docker.io"
upstream = "https://registry-1.docker.io"
`;

/** Reads and validates a configuration file, including that every password_file is readable. */
export async function loadConfig(file: string): Promise<AgentConfig> {
  const text = await readText(file);
  const config = parseConfig(text, file, { baseDir: dirname(resolve(file)) });
  await checkPasswordFiles(config);
  return config;
}

/** Parses and validates TOML text without touching the disk. `source` names the text in error messages. */
export function parseConfig(text: string, source: string, opts: ParseOptions = {}): AgentConfig {
  const baseDir = opts.baseDir ?? process.cwd();
  const path = (value: unknown): string => parsePath(value, baseDir);
  const root = new Section(source, '', parseToml(text, source), TOP_LEVEL_KEYS);
  return {
    source,
    listen: readListen(root),
    metricsListen: root.read('metrics_listen', parseListenAddress, '127.0.0.1:9402'),
    cacheDir: root.read('cache_dir', path, '/var/lib/registry-proxy-agent'),
    cacheMaxBytes: root.read('cache_max_bytes', (v) => requirePositive(parseSize(v)), '20GiB'),
    hostsDir: root.read('hosts_dir', path, '/etc/containerd/certs.d'),
    manageHosts: root.read('manage_hosts', expectBoolean, true),
    containerdConfig: root.read('containerd_config', path, '/etc/containerd/config.toml'),
    logLevel: root.read('log_level', parseLogLevel, 'info'),
    mirrors: readMirrors(root, path),
  };
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

function readMirrors(root: Section, path: (value: unknown) => string): MirrorConfig[] {
  const sections = root.tables('mirror', MIRROR_KEYS);
  const mirrors = sections.map((section) => readMirror(section, path));
  const firstIndex = new Map<string, number>();
  mirrors.forEach((mirror, i) => {
    const first = firstIndex.get(mirror.registry);
    if (first !== undefined) {
      sections[i]?.fail('registry', `${mirror.registry} is already configured by mirror[${first}]`);
    }
    firstIndex.set(mirror.registry, i);
  });
  if (mirrors.length === 0) root.fail('', 'no [[mirror]] configured');
  return mirrors;
}

function readMirror(section: Section, path: (value: unknown) => string): MirrorConfig {
  const registry = section.required('registry', parseRegistry);
  const upstream = section.required('upstream', parseUpstream);
  const tagTtlMs = section.read('tag_ttl', parseDuration, '0s');
  const maxStaleMs = section.read('max_stale', parseDuration, '24h');
  const repositoryPrefix = section.read('repository_prefix', parseRepositoryPrefix, '');
  const username = section.optional('username', parseUsername);
  const passwordFile = section.optional('password_file', path);
  const mirror = { registry, upstream, tagTtlMs, maxStaleMs, repositoryPrefix };
  if (username === undefined && passwordFile === undefined) return mirror;
  if (passwordFile === undefined) section.fail('username', 'username requires password_file');
  if (username === undefined) section.fail('password_file', 'password_file requires username');
  return { ...mirror, username, passwordFile };
}

/** Opens (never reads) each password file, so a typo fails at start-up and the secret stays out of every message. */
async function checkPasswordFiles(config: AgentConfig): Promise<void> {
  for (const [i, mirror] of config.mirrors.entries()) {
    if (mirror.passwordFile === undefined) continue;
    const problem = await unreadableFile(mirror.passwordFile);
    if (problem !== undefined) {
      throw new ConfigError(config.source, `mirror[${i}].password_file`, `cannot read: ${messageOf(problem)}`, {
        cause: problem,
      });
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
