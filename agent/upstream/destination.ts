import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { parseChallenge } from './challenge.ts';
import type { Route } from './routes.ts';

/**
 * Addresses that mean "this node": loopback, unspecified (0.0.0.0 and :: connect to loopback on
 * Linux) and link-local (169.254.169.254 is the cloud metadata service). IPv4-mapped IPv6 forms
 * (`::ffff:127.0.0.1`) match their IPv4 entries.
 */
const NODE_LOCAL = new BlockList();
NODE_LOCAL.addSubnet('127.0.0.0', 8, 'ipv4');
NODE_LOCAL.addSubnet('0.0.0.0', 8, 'ipv4');
NODE_LOCAL.addSubnet('169.254.0.0', 16, 'ipv4');
NODE_LOCAL.addAddress('::1', 'ipv6');
NODE_LOCAL.addAddress('::', 'ipv6');
NODE_LOCAL.addSubnet('fe80::', 10, 'ipv6');

/**
 * Where the agent may send a request whose URL an upstream answer chose (a redirect `Location`,
 * a Bearer `realm`): http(s), no credentials in the URL, and not a node-local address unless it
 * is the upstream's own host. Registries legitimately redirect to storage on other hosts and name
 * token servers on other hosts, so other hosts are allowed; what is refused is an upstream (or
 * whoever answers in its name) steering the agent at services on the node it runs on: kubelet,
 * the agent itself, the metadata service. Returns why a URL is refused, or undefined.
 *
 * On the connectivity-proxy route every host is a Cloud Connector virtual host: the Connectivity
 * Proxy hands it to the Cloud Connector, nothing connects to it from this node, and the Cloud
 * Connector's access control is the allow-list; only scheme and credentials are checked there.
 *
 * The check is on the URL (WHATWG parsing has already normalised `127.1`, `2130706433`,
 * `0x7f000001` and `[::ffff:127.0.0.1]`); a DNS name that resolves to a node-local address is not
 * caught here.
 */
export function refusedDestination(target: URL, upstream: URL, route: Route['kind']): string | undefined {
  if (target.protocol !== 'http:' && target.protocol !== 'https:') return `unsupported scheme ${target.protocol}`;
  if (target.username || target.password) return 'the URL carries credentials';
  if (route === 'connectivity-proxy') return undefined;
  const host = normalHost(target.hostname);
  if (host === normalHost(upstream.hostname)) return undefined;
  if (isNodeLocal(host)) return `${target.host} is a loopback, link-local or unspecified address and not the upstream's own host`;
  return undefined;
}

/** The same rule for the realm of a `Bearer` challenge (resolved against the upstream); other challenges pass. */
export function refusedRealm(challenge: string, upstream: URL, route: Route['kind']): string | undefined {
  const parsed = parseChallenge(challenge);
  const realm = parsed?.scheme === 'bearer' ? parsed.params['realm'] : undefined;
  if (realm === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(realm, upstream);
  } catch {
    return 'the realm is not a URL';
  }
  return refusedDestination(url, upstream, route);
}

function normalHost(hostname: string): string {
  const bare = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
  return bare.toLowerCase().replace(/\.$/, '');
}

function isNodeLocal(host: string): boolean {
  if (host === 'localhost' || host.endsWith('.localhost')) return true;
  if (isIPv4(host)) return NODE_LOCAL.check(host, 'ipv4');
  if (isIPv6(host)) return NODE_LOCAL.check(host, 'ipv6');
  return false;
}
