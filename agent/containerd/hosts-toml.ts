/**
 * containerd's `hosts.toml` (see containerd docs/hosts.md) as a typed model: parse, render, merge.
 *
 * Pure: no file system. Keys the model does not name are kept in `extra` and rendered back, so an admin's
 * file never loses data when the agent adds its mirror to it.
 */
import {
  TomlTextError,
  basicString,
  inlineValue,
  isTomlTable,
  keyValueLines,
  parseTomlLossless,
  sectionLines,
  tableLines,
  tomlPath,
} from './toml-text.ts';
import type { TomlTable } from './toml-text.ts';

/** A path, a list of paths, or a list of [certificate, key] pairs. */
export type ClientCertificates = string | string[] | string[][];

/** Header name → value or values, sent with every request to the host. */
export type HeaderValues = Record<string, string | string[]>;

/** Settings shared by the top level (they apply to `server`) and every `[host."<url>"]` table. */
export interface HostSettings {
  capabilities?: string[];
  ca?: string | string[];
  client?: ClientCertificates;
  skipVerify?: boolean;
  overridePath?: boolean;
  header?: HeaderValues;
  /**
   * Keys this model does not name (`dial_timeout`, `proxy`, future ones), as parsed: strings, booleans,
   * integers as `bigint`, floats as `number`, dates as `TomlDateTime`, arrays and tables.
   */
  extra?: Record<string, unknown>;
}

/** One `[host."<url>"]` table: a mirror tried before `server`, in file order. */
export interface HostEntry extends HostSettings {
  url: string;
}

export interface HostsToml extends HostSettings {
  /** The upstream used after every host failed; absent means "the registry namespace itself". */
  server?: string;
  /** In file order: containerd tries them first to last. */
  hosts: HostEntry[];
}

export interface RenderOptions {
  /** Comment text put first; each line becomes a `# ` comment line. */
  header?: string;
}

/** The text is not TOML, a known key has a type containerd would reject, or a model cannot be rendered. */
export class HostsTomlError extends Error {
  override readonly name = 'HostsTomlError';
  readonly line: number | undefined;
  readonly column: number | undefined;

  constructor(message: string, options?: { cause?: unknown; line?: number | undefined; column?: number | undefined }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.line = options?.line;
    this.column = options?.column;
  }
}

/** Capabilities of the agent's host entry: it is a trusted private mirror, never a push target. */
export const AGENT_CAPABILITIES: readonly string[] = ['pull', 'resolve'];

const SETTING_KEYS = ['capabilities', 'ca', 'client', 'skip_verify', 'override_path', 'header'];
const TOP_LEVEL_KEYS = ['server', 'host', ...SETTING_KEYS];

export function parseHostsToml(text: string): HostsToml {
  let raw: TomlTable;
  try {
    raw = parseTomlLossless(text);
  } catch (err) {
    if (!(err instanceof TomlTextError)) throw err;
    throw new HostsTomlError(err.message, { cause: err, line: err.line, column: err.column });
  }
  const model: HostsToml = { ...readSettings(raw, TOP_LEVEL_KEYS, 'top level'), hosts: readHosts(raw['host']) };
  if (raw['server'] !== undefined) model.server = expectString(raw['server'], 'server', 'top level');
  return model;
}

function readHosts(value: unknown): HostEntry[] {
  if (value === undefined) return [];
  if (!isTomlTable(value)) throw schemaError('host', 'top level', 'a table of [host."<url>"] tables', value);
  return Object.entries(value).map(([url, table]) => {
    const where = `[host.${basicString(url)}]`;
    if (!isTomlTable(table)) throw schemaError(url, '[host]', 'a table', table);
    return { url, ...readSettings(table, SETTING_KEYS, where) };
  });
}

function readSettings(table: TomlTable, known: readonly string[], where: string): HostSettings {
  const out: HostSettings = {};
  const capabilities = table['capabilities'];
  if (capabilities !== undefined) {
    if (!isStringArray(capabilities)) throw schemaError('capabilities', where, 'an array of strings', capabilities);
    out.capabilities = capabilities;
  }
  const ca = table['ca'];
  if (ca !== undefined) {
    if (typeof ca !== 'string' && !isStringArray(ca)) throw schemaError('ca', where, 'a string or an array of strings', ca);
    out.ca = ca;
  }
  const client = table['client'];
  if (client !== undefined) {
    if (!isClientCertificates(client)) {
      throw schemaError('client', where, 'a string, an array of strings or an array of string pairs', client);
    }
    out.client = client;
  }
  if (table['skip_verify'] !== undefined) out.skipVerify = expectBoolean(table['skip_verify'], 'skip_verify', where);
  if (table['override_path'] !== undefined) out.overridePath = expectBoolean(table['override_path'], 'override_path', where);
  if (table['header'] !== undefined) out.header = readHeader(table['header'], where);
  const extra = Object.entries(table).filter(([key]) => !known.includes(key));
  if (extra.length > 0) out.extra = Object.fromEntries(extra);
  return out;
}

function readHeader(value: unknown, where: string): HeaderValues {
  if (!isTomlTable(value)) throw schemaError('header', where, 'a table', value);
  for (const [name, v] of Object.entries(value)) {
    if (typeof v !== 'string' && !isStringArray(v)) {
      throw schemaError(name, `${where} header`, 'a string or an array of strings', v);
    }
  }
  return value as HeaderValues;
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === 'string');
}

function isClientCertificates(value: unknown): value is ClientCertificates {
  return typeof value === 'string' || isStringArray(value) || (Array.isArray(value) && value.every(isStringArray));
}

function expectString(value: unknown, key: string, where: string): string {
  if (typeof value !== 'string') throw schemaError(key, where, 'a string', value);
  return value;
}

function expectBoolean(value: unknown, key: string, where: string): boolean {
  if (typeof value !== 'boolean') throw schemaError(key, where, 'a boolean', value);
  return value;
}

function schemaError(key: string, where: string, expected: string, got: unknown): HostsTomlError {
  return new HostsTomlError(`${JSON.stringify(key)} (${where}) must be ${expected}, got ${tomlTypeName(got)}`);
}

function tomlTypeName(value: unknown): string {
  if (typeof value === 'bigint') return 'an integer';
  if (typeof value === 'number') return 'a float';
  if (typeof value === 'string' || typeof value === 'boolean') return `a ${typeof value}`;
  if (Array.isArray(value)) return 'an array';
  if (isTomlTable(value)) return 'a table';
  return 'a date/time';
}

/**
 * Deterministic text: top-level keys, `[header]`, other top-level tables, then each `[host."<url>"]` in
 * model order with its keys, `[host."<url>".header]` and other sub-tables. Blank line between sections.
 */
export function renderHostsToml(model: HostsToml, opts: RenderOptions = {}): string {
  try {
    const blocks: string[][] = [];
    if (opts.header !== undefined) blocks.push(commentLines(opts.header));
    const server = model.server === undefined ? [] : [`server = ${basicString(model.server)}`];
    blocks.push([...server, ...settingLines(model, TOP_LEVEL_KEYS, '')]);
    if (model.header !== undefined) blocks.push(tableLines('[header]', ['header'], model.header, 0));
    for (const entry of extraEntries(model, TOP_LEVEL_KEYS)) blocks.push(sectionLines([], [entry], 0));
    for (const host of model.hosts) blocks.push(hostLines(host));
    const text = blocks.filter((b) => b.length > 0).map((b) => b.join('\n')).join('\n\n');
    return text === '' ? '' : `${text}\n`;
  } catch (err) {
    if (!(err instanceof TomlTextError)) throw err;
    throw new HostsTomlError(`cannot render hosts.toml: ${err.message}`, { cause: err });
  }
}

function hostLines(host: HostEntry): string[] {
  const path = ['host', host.url];
  const header = host.header === undefined ? [] : tableLines(`[${tomlPath([...path, 'header'])}]`, [...path, 'header'], host.header, 1);
  return [
    `[${tomlPath(path)}]`,
    ...settingLines(host, SETTING_KEYS, '  '),
    ...header,
    ...sectionLines(path, extraEntries(host, SETTING_KEYS), 1),
  ];
}

function settingLines(settings: HostSettings, known: readonly string[], indent: string): string[] {
  const lines: string[] = [];
  const add = (key: string, value: unknown): void => {
    if (value !== undefined) lines.push(`${indent}${key} = ${inlineValue(value)}`);
  };
  add('capabilities', settings.capabilities);
  add('ca', settings.ca);
  add('client', settings.client);
  add('skip_verify', settings.skipVerify);
  add('override_path', settings.overridePath);
  return [...lines, ...keyValueLines(extraEntries(settings, known), indent)];
}

function extraEntries(settings: HostSettings, known: readonly string[]): Array<[string, unknown]> {
  const entries = Object.entries(settings.extra ?? {});
  const clash = entries.find(([key]) => known.includes(key));
  if (clash !== undefined) throw new TomlTextError(`extra key ${JSON.stringify(clash[0])} is a modelled key`);
  return entries;
}

// TOML comments may hold tabs but no other control characters.
function commentLines(text: string): string[] {
  return text.split(/\r?\n/).map((line) => {
    if (/[\u0000-\u0008\u000a-\u001f\u007f]/.test(line)) throw new TomlTextError('header comment has control characters');
    return line === '' ? '#' : `# ${line}`;
  });
}

/** Whether two host URLs name the same mirror (scheme, host, port, path; trailing slashes ignored). */
export function sameHostUrl(a: string, b: string): boolean {
  return hostUrlKey(a) === hostUrlKey(b);
}

function hostUrlKey(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname.replace(/\/+$/, '')}${u.search}`;
  } catch {
    return url.replace(/\/+$/, '');
  }
}

/**
 * The agent's host goes first with pull+resolve; the admin's hosts follow in their order, minus any entry
 * for the agent's own URL (containerd would otherwise see it twice). Every other admin key stays as is.
 * Without an admin file, `server` is `defaultServer` (absent for `_default`).
 */
export function mergeAgentHost(agentUrl: string, existing: HostsToml | undefined, defaultServer: string | undefined): HostsToml {
  const ours: HostEntry = { url: agentUrl, capabilities: [...AGENT_CAPABILITIES] };
  if (existing === undefined) {
    return defaultServer === undefined ? { hosts: [ours] } : { server: defaultServer, hosts: [ours] };
  }
  return { ...existing, hosts: [ours, ...existing.hosts.filter((h) => !sameHostUrl(h.url, agentUrl))] };
}

/** The upstream containerd falls back to when the agent is down; `_default` has none (each registry's own). */
export function defaultServerFor(registry: string): string | undefined {
  if (registry === '_default') return undefined;
  if (registry === 'docker.io') return 'https://registry-1.docker.io';
  return `https://${registry}`;
}

// Re-exported so callers can build and compare models with date/time extras without reaching into toml-text.
export { TomlDateTime } from './toml-text.ts';
