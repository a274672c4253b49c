import { isIPv4, isIPv6 } from 'node:net';
import { kindOf } from './kind.ts';
import type { DestinationRule } from './types.ts';

const EXAMPLE = 'allowed_destinations = ["127.0.0.1:5001", "s3.corp.example", "10.20.0.0/16"]';
const HOST_NAME = /^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$/;

/**
 * `allowed_destinations`: a list of `host`, `host:port` (`[ipv6]:port`) or CIDR (`10.0.0.0/8`,
 * `fd00::/8`). Hosts are lower-cased DNS names or IP literals and match the host of a redirect or
 * realm URL as written; a CIDR matches the address the agent connects to.
 */
export function parseDestinations(value: unknown): readonly DestinationRule[] {
  if (!Array.isArray(value)) throw new Error(`expected an array of strings, got ${kindOf(value)}; e.g. ${EXAMPLE}`);
  return value.map((entry: unknown, i) => {
    if (typeof entry !== 'string') throw new Error(`entry ${i}: expected a string, got ${kindOf(entry)}`);
    try {
      return parseDestination(entry);
    } catch (error) {
      throw new Error(`entry ${i} "${entry}": ${(error as Error).message}; e.g. ${EXAMPLE}`);
    }
  });
}

function parseDestination(text: string): DestinationRule {
  const lower = text.trim().toLowerCase();
  if (lower === '') throw new Error('must not be empty');
  if (lower.includes('://') || lower.includes('@')) throw new Error('expected host, host:port or a CIDR, not a URL');
  const slash = lower.indexOf('/');
  if (slash !== -1) return parseCidr(lower, slash, text);
  if (lower.startsWith('[')) {
    const match = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(lower);
    if (!match || !isIPv6(match[1] ?? '')) throw new Error('expected [ipv6] or [ipv6]:port');
    return { kind: 'host', host: match[1] ?? '', port: parsePort(match[2]), text };
  }
  if (isIPv6(lower)) return { kind: 'host', host: lower, port: undefined, text };
  const parts = lower.split(':');
  if (parts.length > 2) throw new Error('an IPv6 address with a port must be written in brackets, e.g. [fd00::1]:5001');
  const [host = '', port] = parts;
  if (!(isIPv4(host) || (HOST_NAME.test(host) && !/^[0-9.]+$/.test(host)))) throw new Error('host must be a DNS name or an IP address');
  return { kind: 'host', host: host.replace(/\.$/, ''), port: parsePort(port), text };
}

function parseCidr(lower: string, slash: number, text: string): DestinationRule {
  const address = lower.slice(0, slash);
  const bits = lower.slice(slash + 1);
  const family = isIPv4(address) ? 'ipv4' : isIPv6(address) ? 'ipv6' : undefined;
  if (family === undefined) throw new Error('a CIDR needs an IP address before the "/"');
  const prefix = /^\d{1,3}$/.test(bits) ? Number(bits) : NaN;
  const max = family === 'ipv4' ? 32 : 128;
  if (!(prefix >= 0 && prefix <= max)) throw new Error(`prefix length must be from 0 to ${max}`);
  return { kind: 'cidr', address, prefix, family, text };
}

function parsePort(text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
  if (!(port >= 1 && port <= 65535)) throw new Error('port must be an integer from 1 to 65535');
  return port;
}
