import { isIPv4, isIPv6 } from 'node:net';
import { parseListenAddress } from './address.ts';
import { parseDuration } from './duration.ts';
import type { Section } from './section.ts';
import type { ListenAddress, PeerMemberConfig, PeersConfig, PeerTlsConfig } from './types.ts';
import { expectBoolean, expectString, parseCount, requirePositive } from './values.ts';

export const PEERS_KEYS = ['enabled', 'node_name', 'listen', 'port', 'service', 'member', 'tls', 'connect_timeout', 'progress_timeout', 'max_connections'] as const;
const TLS_KEYS = ['secret', 'ca_file', 'cert_file', 'key_file'] as const;
const MEMBER_KEYS = ['name', 'url'] as const;

export const DEFAULT_PEER_PORT = 5443;
const DEFAULT_SERVICE = 'registry-proxy-agent-peers';
const DEFAULT_CA_SECRET = 'registry-proxy-agent-peer-ca';
const NODE_NAME = /^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

interface PeersContext {
  readonly path: (value: unknown) => string;
  readonly env: Readonly<Record<string, string | undefined>>;
  /** `[kubernetes]` node name, when that table names one. */
  readonly kubernetesNodeName: string | undefined;
  readonly kubernetesEnabled: boolean;
}

/**
 * `[peers]`: the node name and listen host default to what the DaemonSet sets (NODE_NAME, NODE_IP).
 * Members are the `[[peers.member]]` tables, or (Kubernetes enabled, none listed) the agents'
 * headless Service; TLS material from files, or from the CA Secret (Kubernetes only).
 */
export function readPeers(root: Section, ctx: PeersContext): PeersConfig | undefined {
  const section = root.table('peers', PEERS_KEYS);
  if (section === undefined) return undefined;
  const enabled = section.read('enabled', expectBoolean, false);
  const nodeName = section.optional('node_name', (v) => matching(v, NODE_NAME, 'a node name (DNS subdomain)')) ?? nonEmpty(ctx.env['NODE_NAME']) ?? ctx.kubernetesNodeName ?? '';
  if (enabled && nodeName === '') section.fail('node_name', 'required with enabled = true: set node_name or NODE_NAME');
  const listen = readListen(section, ctx.env, enabled);
  const memberTables = section.tables('member', MEMBER_KEYS);
  const members = memberTables.length > 0 || !ctx.kubernetesEnabled ? readMembers(section, memberTables) : undefined;
  if (enabled && members !== undefined && !members.some((m) => m.name === nodeName)) {
    section.fail('member', `this node ("${nodeName}") is not among the members: list it too, so that every agent ranks the same members`);
  }
  const own = listenUrl(listen);
  const impostor = members?.findIndex((m) => m.name !== nodeName && m.url === own) ?? -1;
  if (enabled && impostor !== -1) {
    section.fail(`member[${impostor}].url`, `${own} is this node's own peer listener (listen): another member there would make this agent ask itself`);
  }
  return {
    enabled,
    nodeName,
    listen,
    ...(members === undefined ? {} : { members }),
    service: section.read('service', (v) => matching(v, DNS_LABEL, 'a Service name (DNS label)'), DEFAULT_SERVICE),
    tls: readTls(section, ctx, enabled),
    connectTimeoutMs: section.read('connect_timeout', (v) => requirePositive(parseDuration(v)), '1s'),
    progressTimeoutMs: section.read('progress_timeout', (v) => requirePositive(parseDuration(v)), '10s'),
    maxConnections: section.read('max_connections', (v) => parseCount(v, 100_000), 256),
  };
}

function readListen(section: Section, env: Readonly<Record<string, string | undefined>>, enabled: boolean): ListenAddress {
  const listen = section.optional('listen', parseListenAddress);
  if (listen !== undefined) {
    if (section.optional('port', expectPort) !== undefined) section.fail('port', 'give either listen or port (with the host from NODE_IP), not both');
    return listen;
  }
  const port = section.read('port', expectPort, DEFAULT_PEER_PORT);
  const host = nonEmpty(env['NODE_IP']);
  if (host === undefined) {
    if (enabled) section.fail('listen', 'required with enabled = true: set listen ("<node IP>:<port>") or NODE_IP (the DaemonSet sets it from status.hostIP)');
    return { host: '127.0.0.1', port };
  }
  if (!isIPv4(host) && !isIPv6(host)) section.fail('listen', `NODE_IP is not an IP address: ${JSON.stringify(host)}`);
  return { host, port };
}

function readMembers(section: Section, tables: readonly Section[]): PeerMemberConfig[] {
  const members = tables.map((table) => ({
    name: table.required('name', (v) => matching(v, NODE_NAME, 'a node name (DNS subdomain)')),
    url: table.required('url', parseMemberUrl),
  }));
  const seen = new Set<string>();
  members.forEach((member, i) => {
    if (seen.has(member.name)) section.fail(`member[${i}].name`, `"${member.name}" is listed twice`);
    seen.add(member.name);
  });
  return members;
}

function readTls(section: Section, ctx: PeersContext, enabled: boolean): PeerTlsConfig {
  const tls = section.table('tls', TLS_KEYS);
  const files = {
    caFile: tls?.optional('ca_file', ctx.path),
    certFile: tls?.optional('cert_file', ctx.path),
    keyFile: tls?.optional('key_file', ctx.path),
  };
  const given = Object.values(files).filter((v) => v !== undefined).length;
  if (given > 0) {
    if (given < 3) tls!.fail('ca_file', 'ca_file, cert_file and key_file go together');
    if (tls!.optional('secret', expectString) !== undefined) tls!.fail('secret', 'give either the CA Secret or ca_file/cert_file/key_file, not both');
    return { kind: 'files', caFile: files.caFile!, certFile: files.certFile!, keyFile: files.keyFile! };
  }
  if (enabled && !ctx.kubernetesEnabled) {
    section.fail('tls', 'without [kubernetes] enabled, set [peers.tls] ca_file, cert_file and key_file (peers only talk mutual TLS)');
  }
  return { kind: 'kubernetes', secret: tls?.read('secret', (v) => matching(v, NODE_NAME, 'a Secret name'), DEFAULT_CA_SECRET) ?? DEFAULT_CA_SECRET };
}

/** `https://<IP>:<port>`: peers are addressed by node IP (hostNetwork), never by a name to resolve. */
function parseMemberUrl(value: unknown): string {
  const text = expectString(value);
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new Error(`not a URL: ${JSON.stringify(text)}; expected https://<node IP>:<port>`);
  }
  const host = url.hostname.replace(/^\[|\]$/g, '');
  if (url.protocol !== 'https:' || !(isIPv4(host) || isIPv6(host)) || url.port === '' || (url.pathname !== '/' && url.pathname !== '') || url.search || url.username) {
    throw new Error(`expected https://<node IP>:<port>, got ${JSON.stringify(text)}`);
  }
  return `https://${url.host}`;
}

function listenUrl(listen: ListenAddress): string {
  return `https://${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${listen.port}`;
}

function expectPort(value: unknown): number {
  return parseCount(value, 65_535);
}

function matching(value: unknown, pattern: RegExp, what: string): string {
  const text = expectString(value);
  if (!pattern.test(text)) throw new Error(`must be ${what}: lower-case letters, digits, '-' and '.'`);
  return text;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}
