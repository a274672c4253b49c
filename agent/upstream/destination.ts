import { BlockList } from 'node:net';
import type { DestinationRule } from '../config/types.ts';
import { type AddressClass, addressClass, ipFamily, isLoopbackName } from './address-class.ts';

/** Why a destination is refused: the label of `registry_proxy_destinations_refused_total`. */
export type RefusalReason = AddressClass | 'node_address' | 'not_allowed' | 'scheme' | 'credentials';

/** A host and port as a URL names them: host lower-case, IPv6 without brackets, no trailing dot; the scheme's port when none is written. */
export interface Endpoint {
  readonly host: string;
  readonly port: number;
}

/** One refused destination, for the OCI error, the metric and the log line. */
export interface DestinationRefusal {
  readonly registry: string;
  readonly reason: RefusalReason;
  /** `host:port` as the redirect or realm named it (IPv6 in brackets). */
  readonly destination: string;
  /** The address that decided, when it is not the host itself (a resolved name). */
  readonly address: string | undefined;
  /** What to change, in words for the node's admin. */
  readonly fix: string;
}

export function normalHost(hostname: string): string {
  const bare = hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
  return bare.toLowerCase().replace(/\.$/, '');
}

export function endpointOf(url: URL): Endpoint {
  const port = url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
  return { host: normalHost(url.hostname), port };
}

/** `host:port`, IPv6 in brackets: the form an `allowed_destinations` entry takes. */
export function endpointText(target: Endpoint): string {
  return `${ipFamily(target.host) === 'ipv6' ? `[${target.host}]` : target.host}:${target.port}`;
}

/** What `localhost` and `*.localhost` resolve to, whatever DNS says (RFC 6761). */
const LOOPBACK_NAME_ADDRESSES = ['127.0.0.1', '::1'];

/**
 * One mirror's destination rules (routes direct and http-proxy), as pure decisions: the caller
 * supplies the address (literal, resolved, or about to be connected to) and the node's addresses.
 *
 * - Never: link-local, metadata, unspecified, multicast (also as IPv4-mapped IPv6), not even for
 *   the upstream itself or a listed entry.
 * - Loopback and the node's own addresses: only the upstream itself (exact host and port, as
 *   written in `upstream`) and listed entries. A token server on another port of the upstream's
 *   host is another service and must be listed.
 * - Anything else (private ranges included: on-premise registries, token servers and S3-compatible
 *   storage live there): allowed, unless `allowed_destinations` is set, which is then exhaustive.
 *
 * A `host` rule matches the host as the URL writes it (and its port, when the rule has one); a
 * `cidr` rule matches the address, any port.
 */
export class DestinationRules {
  readonly #upstream: Endpoint;
  readonly #hosts: ReadonlyArray<Extract<DestinationRule, { kind: 'host' }>>;
  readonly #ranges: BlockList;
  /** allowed_destinations is set: only the upstream and listed entries. */
  readonly #exhaustive: boolean;

  constructor(upstream: URL, allowed: readonly DestinationRule[] | undefined) {
    this.#upstream = endpointOf(upstream);
    this.#hosts = (allowed ?? []).filter((rule) => rule.kind === 'host');
    this.#ranges = new BlockList();
    for (const rule of allowed ?? []) if (rule.kind === 'cidr') this.#ranges.addSubnet(rule.address, rule.prefix, rule.family);
    this.#exhaustive = allowed !== undefined;
  }

  /** Whether `target` is the upstream itself or a listed host: its name opens loopback and node addresses. */
  #named(target: Endpoint): boolean {
    if (this.isUpstream(target)) return true;
    return this.#hosts.some((rule) => rule.host === target.host && (rule.port === undefined || rule.port === target.port));
  }

  /** The verdict on `target` reached at `address`: a reason, or undefined when allowed. */
  judgeAddress(target: Endpoint, address: string, nodeAddresses: BlockList): RefusalReason | undefined {
    const family = ipFamily(address);
    const kind = addressClass(address);
    if (kind !== undefined && kind !== 'loopback') return kind;
    if (this.#named(target)) return undefined;
    if (family !== undefined && this.#ranges.check(address, family)) return undefined;
    if (kind === 'loopback') return 'loopback';
    if (family !== undefined && nodeAddresses.check(address, family)) return 'node_address';
    return this.#exhaustive ? 'not_allowed' : undefined;
  }

  /**
   * What the URL alone settles, before any name is resolved: an IP literal is its own address, and
   * `localhost` names are loopback; any other name waits for its addresses (undefined).
   */
  judgeName(target: Endpoint, nodeAddresses: BlockList): RefusalReason | undefined {
    if (ipFamily(target.host) !== undefined) return this.judgeAddress(target, target.host, nodeAddresses);
    if (!isLoopbackName(target.host)) return undefined;
    for (const address of LOOPBACK_NAME_ADDRESSES) {
      const reason = this.judgeAddress(target, address, nodeAddresses);
      if (reason) return reason;
    }
    return undefined;
  }

  /**
   * A name that is not resolved here (route http-proxy, the node cannot resolve it; the proxy
   * will): no address class can be told, so only an exhaustive allow-list refuses it.
   */
  judgeUnresolved(target: Endpoint): RefusalReason | undefined {
    return this.#exhaustive && !this.#named(target) ? 'not_allowed' : undefined;
  }

  /** Whether `target` is exactly the upstream (host as written and port). */
  isUpstream(target: Endpoint): boolean {
    return target.host === this.#upstream.host && target.port === this.#upstream.port;
  }
}
