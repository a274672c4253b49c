import { type LookupAddress, promises as dns } from 'node:dns';
import type { BlockList, LookupFunction } from 'node:net';
import { networkInterfaces } from 'node:os';
import type { DestinationRule, RouteKind } from '../config/types.ts';
import { addressSet, ipFamily } from './address-class.ts';
import { parseChallenge } from './challenge.ts';
import { type DestinationRefusal, DestinationRules, type Endpoint, type RefusalReason, endpointOf, endpointText } from './destination.ts';
import { DestinationRefusedError, UpstreamError } from './errors.ts';

/** Resolves a name to all its addresses, as net.connect's lookup would (`family` 0, 4 or 6). */
export type Resolver = (host: string, options: { readonly family: number; readonly hints: number }) => Promise<readonly LookupAddress[]>;

/** The system resolver (getaddrinfo, /etc/hosts included), all addresses. */
export const systemResolver: Resolver = (host, options) => dns.lookup(host, { family: options.family, hints: options.hints, all: true });

/** Every address of this node's interfaces, read afresh: addresses come and go (DHCP, CNI, kube-proxy's dummy interface). */
export function interfaceAddresses(): string[] {
  return Object.values(networkInterfaces()).flatMap((entries) => (entries ?? []).map((entry) => entry.address));
}

export interface DestinationPolicyOptions {
  readonly registry: string;
  /** The mirror's upstream: its exact host and port are always allowed (but for the never-allowed classes). */
  readonly upstream: URL;
  readonly route: RouteKind;
  /** `allowed_destinations`; undefined: everything but the refused classes, loopback and node addresses. */
  readonly allowed?: readonly DestinationRule[] | undefined;
  /** Name resolution for checks and connections (tests inject one); default the system's. */
  readonly resolver?: Resolver;
  /** This node's addresses (tests inject them); default every interface's, read per check. */
  readonly nodeAddresses?: () => Iterable<string>;
  /** Told about every refusal (metrics, log), before it is thrown. */
  readonly onRefused?: (refusal: DestinationRefusal) => void;
}

const DESCRIPTIONS: Readonly<Record<RefusalReason, string>> = {
  link_local: 'a link-local address (169.254.0.0/16, fe80::/10: the cloud metadata service lives there)',
  metadata: 'a cloud metadata address',
  unspecified: 'an unspecified address (0.0.0.0, ::), which reaches this node',
  multicast: 'a multicast address',
  loopback: 'a loopback address of this node, and not the upstream itself',
  node_address: "one of this node's own addresses, and not the upstream itself",
  not_allowed: 'not in allowed_destinations',
  scheme: 'not an http:// or https:// URL',
  credentials: 'a URL carrying credentials',
};

/**
 * Where one mirror's requests may go when an upstream answer chose the URL: a redirect `Location`
 * or a token realm (the agent's own token fetch, a puller's forwarded token request). A
 * compromised or spoofed upstream must not be able to make the agent fetch from the node's own
 * services (kubelet, the agent's metrics port), the metadata service, or anywhere the mirror's
 * allow-list does not name, and hand the bytes to the puller.
 *
 * Checked where the route decides where bytes go:
 * - every route: http(s) only, no credentials in the URL (checkUrl);
 * - direct: the address actually connected to, after DNS, in the route's connector (lookupFor,
 *   refusedLiteral) — a refused destination is never contacted, and a name cannot resolve one way
 *   for the check and another for the connection;
 * - http-proxy: the target as sent to the proxy: a literal, or a name as this node resolves it
 *   (checkProxied); a name the node cannot resolve is left to the proxy;
 * - connectivity-proxy: scheme and credentials only. Every host there is a Cloud Connector virtual
 *   host, never resolved or connected to from this node; the Cloud Connector's access control
 *   decides what it reaches.
 *
 * Connections to the upstream itself pass through the same checks (its exact host and port are
 * allowed, so only a never-allowed address refuses them).
 */
export class DestinationPolicy {
  readonly route: RouteKind;
  readonly #registry: string;
  readonly #upstream: URL;
  /** Undefined on the connectivity-proxy route: no address rules there. */
  readonly #rules: DestinationRules | undefined;
  readonly #resolver: Resolver;
  readonly #nodeAddresses: () => Iterable<string>;
  readonly #onRefused: ((refusal: DestinationRefusal) => void) | undefined;

  constructor(options: DestinationPolicyOptions) {
    this.route = options.route;
    this.#registry = options.registry;
    this.#upstream = options.upstream;
    this.#rules = options.route === 'connectivity-proxy' ? undefined : new DestinationRules(options.upstream, options.allowed);
    this.#resolver = options.resolver ?? systemResolver;
    this.#nodeAddresses = options.nodeAddresses ?? interfaceAddresses;
    this.#onRefused = options.onRefused;
  }

  /**
   * What the URL alone settles, before anything is sent: scheme, credentials, and (routes direct
   * and http-proxy) an IP literal or `localhost` name. Names are judged by address later, where the
   * route connects. Throws DestinationRefusedError.
   */
  checkUrl(url: URL): void {
    const target = endpointOf(url);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw this.#refuse('scheme', target, { destination: `${url.protocol}//${url.host}` });
    if (url.username || url.password) throw this.#refuse('credentials', target);
    const reason = this.#rules?.judgeName(target, this.#nodes());
    if (reason) throw this.#refuse(reason, target);
  }

  /**
   * The realm of a `Bearer` challenge (resolved against the upstream), checked as checkUrl does;
   * other challenges pass. Throws DestinationRefusedError, or UpstreamError `invalid` for a realm
   * that is not a URL.
   */
  checkRealm(challenge: string): void {
    const parsed = parseChallenge(challenge);
    const realm = parsed?.scheme === 'bearer' ? parsed.params['realm'] : undefined;
    if (realm === undefined) return;
    let url: URL;
    try {
      url = new URL(realm, this.#upstream);
    } catch (cause) {
      throw new UpstreamError(this.#registry, 'invalid', 'Bearer challenge realm is not a URL', { cause });
    }
    this.checkUrl(url);
  }

  /**
   * Route direct, before connecting to `target`: an IP literal is checked here, because
   * net.connect never calls `lookup` for one. Undefined when the connection may go ahead.
   */
  refusedLiteral(target: Endpoint): DestinationRefusedError | undefined {
    if (!this.#rules || ipFamily(target.host) === undefined) return undefined;
    const reason = this.#rules.judgeAddress(target, target.host, this.#nodes());
    return reason ? this.#refuse(reason, target) : undefined;
  }

  /**
   * Route direct: the `lookup` for net/tls.connect to `target`. It resolves the name and checks
   * every address before handing them over; on a refusal the connection fails with the
   * DestinationRefusedError and no address is ever connected to.
   */
  lookupFor(target: Endpoint): LookupFunction {
    return (hostname, options, callback) => {
      this.#resolver(hostname, { family: familyNumber(options.family), hints: options.hints ?? 0 }).then(
        (addresses) => {
          const refused = this.#judgeResolved(target, addresses);
          if (refused) return callback(refused, '', 0);
          const first = addresses[0];
          if (!first) return callback(Object.assign(new Error(`no address for ${hostname}`), { code: 'ENOTFOUND' }), '', 0);
          if (options.all) callback(null, [...addresses]);
          else callback(null, first.address, first.family);
        },
        (error: NodeJS.ErrnoException) => callback(error, '', 0),
      );
    };
  }

  /**
   * Route http-proxy, before a request for `url` goes to the proxy: a literal is checked as it is,
   * a name by the addresses this node resolves it to; a name the node cannot resolve is left to the
   * proxy (unless the allow-list is exhaustive). The upstream itself is not resolved: the node often
   * cannot resolve it (that is why there is a proxy), and it is configured, not chosen by an answer.
   */
  async checkProxied(url: URL): Promise<void> {
    const rules = this.#rules;
    if (!rules) return;
    const target = endpointOf(url);
    const literal = this.refusedLiteral(target);
    if (literal) throw literal;
    if (ipFamily(target.host) !== undefined || rules.isUpstream(target)) return;
    let addresses: readonly LookupAddress[];
    try {
      addresses = await this.#resolver(target.host, { family: 0, hints: 0 });
    } catch {
      // Whatever the resolver's failure (no such name, no DNS reachable from the node), the name
      // is not this node's to judge: the proxy resolves it on its side.
      addresses = [];
    }
    const refused = addresses.length === 0 ? this.#judgeUnresolved(target) : this.#judgeResolved(target, addresses);
    if (refused) throw refused;
  }

  #judgeResolved(target: Endpoint, addresses: readonly LookupAddress[]): DestinationRefusedError | undefined {
    const rules = this.#rules;
    if (!rules) return undefined;
    const nodes = this.#nodes();
    // Every address, not just the first: net.connect tries them in turn (happy eyeballs).
    for (const { address } of addresses) {
      const reason = rules.judgeAddress(target, address, nodes);
      if (reason) return this.#refuse(reason, target, { address });
    }
    return undefined;
  }

  #judgeUnresolved(target: Endpoint): DestinationRefusedError | undefined {
    const reason = this.#rules?.judgeUnresolved(target);
    return reason ? this.#refuse(reason, target, { note: 'the name does not resolve on this node' }) : undefined;
  }

  #nodes(): BlockList {
    return addressSet(this.#nodeAddresses());
  }

  /** `destination` overrides host:port (a URL of another scheme has none); `address` is the resolved address that decided. */
  #refuse(reason: RefusalReason, target: Endpoint, more: { destination?: string; address?: string; note?: string } = {}): DestinationRefusedError {
    const { address, note } = more;
    const destination = more.destination ?? endpointText(target);
    const refusal: DestinationRefusal = { registry: this.#registry, reason, destination, address, fix: this.#fix(reason, target, address) };
    const where = address && address !== target.host ? `${destination} (${address})` : destination;
    const message = `redirects and token realms of ${this.#registry} may not lead to ${where}: ${DESCRIPTIONS[reason]}${note ? ` (${note})` : ''}`;
    this.#onRefused?.(refusal);
    return new DestinationRefusedError(refusal, message);
  }

  #fix(reason: RefusalReason, target: Endpoint, address: string | undefined): string {
    const entry = endpointText(target);
    const mirror = `mirror ${this.#registry}`;
    switch (reason) {
      case 'scheme':
        return 'only http:// and https:// URLs are followed; the upstream sent another scheme';
      case 'credentials':
        return 'URLs with user:password in them are never followed; the upstream must not put credentials in a redirect or realm';
      case 'loopback':
      case 'node_address':
        return `if ${entry} is a token server or storage of this registry, add "${entry}" to allowed_destinations of ${mirror}; otherwise the upstream (or whoever answers in its name) is pointing the agent at a service on this node`;
      case 'not_allowed':
        return `if ${entry} is a token server or storage of this registry, add "${entry}"${address ? ` or a range holding ${address}` : ''} to allowed_destinations of ${mirror}`;
      default:
        return `never allowed, not even through allowed_destinations: check the upstream of ${mirror} and what ${target.host} resolves to`;
    }
  }
}

/** net's lookup options carry the family as 0, 4, 6 or (older callers) 'IPv4' / 'IPv6'. */
function familyNumber(family: number | string | undefined): number {
  if (family === 4 || family === 'IPv4') return 4;
  if (family === 6 || family === 'IPv6') return 6;
  return 0;
}
