import { BlockList, isIPv4, isIPv6 } from 'node:net';

/**
 * Address classes no redirect or token realm may lead to, whatever `allowed_destinations` says:
 * none of them is where a registry, a token server or storage lives, and each reaches something
 * on or next to the node. Link-local holds 169.254.169.254 (the metadata service of AWS, GCP,
 * Azure and others); `metadata` is the metadata services elsewhere (Alibaba 100.100.100.200, AWS
 * over IPv6 fd00:ec2::254); unspecified (0.0.0.0, ::) connects to the node itself on Linux.
 */
export type ForbiddenClass = 'link_local' | 'metadata' | 'unspecified' | 'multicast';

/** The forbidden classes and loopback, which the allow-list (or the upstream itself) can open. */
export type AddressClass = ForbiddenClass | 'loopback';

function blockList(entries: ReadonlyArray<readonly [string, number]>): BlockList {
  const list = new BlockList();
  for (const [address, prefix] of entries) list.addSubnet(address, prefix, isIPv4(address) ? 'ipv4' : 'ipv6');
  return list;
}

// The ranges do not overlap. BlockList matches IPv4-mapped IPv6 (::ffff:127.0.0.1, ::ffff:7f00:1)
// against the IPv4 entries, so the mapped forms of every class are caught too.
const CLASSES: ReadonlyArray<readonly [AddressClass, BlockList]> = [
  ['metadata', blockList([['100.100.100.200', 32], ['fd00:ec2::254', 128]])],
  ['link_local', blockList([['169.254.0.0', 16], ['fe80::', 10]])],
  ['unspecified', blockList([['0.0.0.0', 8], ['::', 128]])],
  ['multicast', blockList([['224.0.0.0', 4], ['ff00::', 8]])],
  ['loopback', blockList([['127.0.0.0', 8], ['::1', 128]])],
];

/** `ipv4`, `ipv6`, or undefined for anything that is not an IP address literal. */
export function ipFamily(host: string): 'ipv4' | 'ipv6' | undefined {
  if (isIPv4(host)) return 'ipv4';
  if (isIPv6(host)) return 'ipv6';
  return undefined;
}

/** The class of an IP address (IPv4-mapped IPv6 forms included), or undefined for any other address. */
export function addressClass(address: string): AddressClass | undefined {
  const family = ipFamily(address);
  if (family === undefined) return undefined;
  for (const [name, list] of CLASSES) if (list.check(address, family)) return name;
  return undefined;
}

/** Names that resolve to loopback by definition (RFC 6761), whatever DNS says. */
export function isLoopbackName(host: string): boolean {
  return host === 'localhost' || host.endsWith('.localhost');
}

/** A set of addresses matched the way BlockList does (IPv4-mapped forms match their IPv4 entries). */
export function addressSet(addresses: Iterable<string>): BlockList {
  const list = new BlockList();
  for (const address of addresses) {
    const family = ipFamily(address);
    if (family) list.addAddress(address, family);
  }
  return list;
}
