import { BlockList, isIPv4, isIPv6 } from 'node:net';
import type { ListenAddress } from './types.ts';
import { expectString } from './values.ts';

const LISTEN_HINT = 'expected host:port with an IP address or localhost, e.g. 127.0.0.1:5050 or [::1]:5050';
const REGISTRY_HINT = 'write the host as in image references, e.g. registry.corp.example:5000';
const DNS_NAME = /^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$/;
const DOTTED_NUMBERS = /^[0-9.]+$/;

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK.addAddress('::1', 'ipv6');

interface HostPort {
  readonly host: string;
  readonly port: string | undefined;
  /** The host was written as `[ipv6]`. */
  readonly bracketed: boolean;
}

/** Parses a listen address "host:port"; the host is an IP literal (IPv6 in brackets) or localhost. */
export function parseListenAddress(value: unknown): ListenAddress {
  const { host, port, bracketed } = splitHostPort(expectString(value).toLowerCase());
  if (port === undefined) throw new Error(`port is missing; ${LISTEN_HINT}`);
  const valid = bracketed ? isIPv6(host) : isIPv4(host) || host === 'localhost';
  if (!valid) throw new Error(`host must be an IP address or localhost; ${LISTEN_HINT}`);
  return { host, port: parsePort(port, 0) };
}

/** True for 127.0.0.0/8, ::1 (also IPv4-mapped) and localhost. */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  return LOOPBACK.check(host, isIPv6(host) ? 'ipv6' : 'ipv4');
}

/** Parses a registry host as written in image references: `host[:port]`, lower-cased, or `_default`. */
export function parseRegistry(value: unknown): string {
  const text = expectString(value).toLowerCase();
  if (text === '_default') return text;
  if (text.includes('://')) throw new Error(`must not contain a scheme; ${REGISTRY_HINT}`);
  if (text.includes('@')) throw new Error(`must not contain userinfo (use username and password_file); ${REGISTRY_HINT}`);
  if (text.includes('/')) throw new Error(`must not contain a path; ${REGISTRY_HINT}`);
  const { host, port, bracketed } = splitHostPort(text);
  if (!(bracketed ? isIPv6(host) : isRegistryHost(host))) {
    throw new Error(`host must be a DNS name, an IPv4 address or a bracketed IPv6 address; ${REGISTRY_HINT}`);
  }
  if (port !== undefined) parsePort(port, 1);
  return text;
}

function isRegistryHost(host: string): boolean {
  return DOTTED_NUMBERS.test(host) ? isIPv4(host) : DNS_NAME.test(host);
}

function splitHostPort(text: string): HostPort {
  if (text === '') throw new Error('must not be empty');
  if (text.startsWith('[')) return splitBracketed(text);
  const parts = text.split(':');
  if (parts.length > 2) throw new Error('an IPv6 address must be written in brackets, e.g. [::1]:5050');
  const [host = '', port] = parts;
  if (host === '') throw new Error('host is missing');
  return { host, port, bracketed: false };
}

function splitBracketed(text: string): HostPort {
  const match = /^\[([^\]]*)\](?::(.*))?$/.exec(text);
  if (!match) throw new Error('expected [ipv6] or [ipv6]:port');
  return { host: match[1] ?? '', port: match[2], bracketed: true };
}

function parsePort(text: string, min: number): number {
  const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
  if (!(port >= min && port <= 65535)) throw new Error(`port must be an integer from ${min} to 65535`);
  return port;
}
