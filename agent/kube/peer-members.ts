import { isIPv6 } from 'node:net';
import type { V1EndpointConditions, V1EndpointSlice } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { PeerMember } from '../peers/rendezvous.ts';
import { type KubeClient, messageOf, paths, statusOf } from './client.ts';
import { type Backoff, ResilientInformer } from './informer.ts';

/** The label the EndpointSlice controller puts on every slice of a Service. */
export const SERVICE_NAME_LABEL = 'kubernetes.io/service-name';

export interface EndpointSliceMembersDeps {
  readonly client: KubeClient;
  readonly namespace: string;
  /** The headless Service selecting the agents (`[peers].service`). */
  readonly service: string;
  /** The Service port of the peer listener (default `peer`). */
  readonly portName?: string;
  readonly log: Logger;
  /** Called with the new member list (sorted by name) whenever it changes, the first list included when not empty. */
  readonly onChange: (members: PeerMember[]) => void;
  /** How long start() waits for the first list (default 5 s). */
  readonly initialSyncTimeoutMs?: number;
  readonly backoff?: Backoff;
}

/** An endpoint that could be a member but is not usable, named once in the log. */
export interface SkippedEndpoint {
  readonly slice: string;
  readonly address?: string;
  readonly reason: string;
}

/**
 * Ready per the API: a missing `ready` counts as ready. A terminating endpoint is never a member either:
 * with publishNotReadyAddresses (not ours, but a Service edit away) `ready` stays true while the agent
 * shuts down.
 */
function isMember(conditions: V1EndpointConditions | undefined): boolean {
  return conditions?.ready !== false && conditions?.terminating !== true;
}

function nameOfSlice(slice: V1EndpointSlice): string {
  return slice.metadata?.name ?? '';
}

/**
 * The members the slices describe: per ready endpoint with a node name, `https://<first address>:<port>`
 * with the slice's port named `portName`. A node listed more than once (two slices, or a slice in
 * transition) is one member with the lowest url, so that every agent makes the same choice. Sorted by
 * name (code units, as the ranking compares names).
 */
export function membersOf(slices: readonly V1EndpointSlice[], portName: string): { members: PeerMember[]; skipped: SkippedEndpoint[] } {
  const byNode = new Map<string, PeerMember>();
  const skipped: SkippedEndpoint[] = [];
  for (const slice of slices) {
    const endpoints = (slice.endpoints ?? []).filter((e) => isMember(e.conditions));
    if (endpoints.length === 0) continue;
    const slicename = nameOfSlice(slice);
    // Peers are addressed by node IP (hostNetwork); FQDN slices are not the controller's for a selector Service.
    if (slice.addressType !== 'IPv4' && slice.addressType !== 'IPv6') {
      skipped.push({ slice: slicename, reason: `address type ${slice.addressType}: peers are addressed by IP` });
      continue;
    }
    const port = slice.ports?.find((p) => (p.name ?? '') === portName)?.port;
    if (port === undefined) {
      skipped.push({ slice: slicename, reason: `no port named "${portName}"` });
      continue;
    }
    for (const endpoint of endpoints) {
      const address = endpoint.addresses[0];
      if (address === undefined) continue;
      const name = endpoint.nodeName;
      if (name === undefined || name === '') {
        skipped.push({ slice: slicename, address, reason: 'no nodeName: cannot tell which node it is' });
        continue;
      }
      const url = `https://${isIPv6(address) ? `[${address}]` : address}:${port}`;
      const seen = byNode.get(name);
      if (seen === undefined || url < seen.url) byNode.set(name, { name, url });
    }
  }
  const members = [...byNode.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { members, skipped };
}

/**
 * Peer membership from the EndpointSlices of the agents' headless Service: the agents whose pods are
 * ready. While the API server is unreachable the last list stays (the informer keeps its objects); until
 * the first list there are no members, and this agent fetches from upstream itself.
 */
export class EndpointSliceMembers {
  readonly #deps: EndpointSliceMembersDeps;
  readonly #portName: string;
  readonly #informer: ResilientInformer<V1EndpointSlice>;
  #members: PeerMember[] = [];
  #key = '[]';
  /** The first list has been turned into members. */
  #computed = false;
  #waiters: Array<() => void> = [];
  #pending: NodeJS.Immediate | undefined;
  #stopped = false;
  /** Problems named in the log, as of the last computation: each is logged when it appears. */
  #logged = new Set<string>();
  /** Logged once per denial, again after a list that succeeded. */
  #denied = false;

  constructor(deps: EndpointSliceMembersDeps) {
    this.#deps = deps;
    this.#portName = deps.portName ?? 'peer';
    const { client, namespace, service, log } = deps;
    this.#informer = new ResilientInformer<V1EndpointSlice>({
      client,
      path: paths.endpointSlices(namespace),
      labelSelector: `${SERVICE_NAME_LABEL}=${service}`,
      onListed: () => (this.#denied = false),
      onListFailed: (error) => {
        if (statusOf(error) !== 403 || this.#denied) return;
        this.#denied = true;
        log.error(
          { namespace, service, err: messageOf(error) },
          'peer membership: the ServiceAccount may not list EndpointSlices (RBAC: list and watch on endpointslices.discovery.k8s.io in this namespace); no peers until it may',
        );
      },
      what: `endpointslices of ${service} in ${namespace}`,
      log,
      onChange: () => this.#schedule(),
      ...(deps.backoff === undefined ? {} : { backoff: deps.backoff }),
    });
  }

  /** Starts watching; resolves once the first list is applied, or after the initial-sync timeout (retrying in the background). */
  async start(): Promise<void> {
    this.#stopped = false;
    this.#informer.start();
    const waitedMs = this.#deps.initialSyncTimeoutMs ?? 5_000;
    if (await this.#whenComputed(waitedMs)) return;
    this.#deps.log.warn(
      { namespace: this.#deps.namespace, service: this.#deps.service, waitedMs },
      'peer membership: EndpointSlices not listed yet; no peers meanwhile (pulls go upstream), retrying',
    );
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#pending !== undefined) clearImmediate(this.#pending);
    this.#pending = undefined;
    await this.#informer.stop();
  }

  /** The members as last computed, sorted by name; empty until the first list. */
  current(): PeerMember[] {
    return [...this.#members];
  }

  #whenComputed(timeoutMs: number): Promise<boolean> {
    if (this.#computed) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      timer.unref();
      this.#waiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  /**
   * One computation per burst of informer events. A relist reports its deletions before its additions,
   * and the informer says "listed" before its cache holds the list: computing on the next turn of the
   * event loop sees only the settled cache, never a half-applied list.
   */
  #schedule(): void {
    if (this.#pending !== undefined || this.#stopped) return;
    this.#pending = setImmediate(() => {
      this.#pending = undefined;
      this.#compute();
    });
  }

  #compute(): void {
    if (this.#stopped || !this.#informer.synced) return;
    const { members, skipped } = membersOf(this.#informer.list(), this.#portName);
    this.#logSkipped(skipped);
    const key = JSON.stringify(members);
    const changed = key !== this.#key;
    this.#members = members;
    this.#key = key;
    if (!this.#computed) {
      this.#computed = true;
      for (const wake of this.#waiters.splice(0)) wake();
    }
    if (!changed) return;
    // The caller logs who joined and left; the whole list can be hundreds of names.
    this.#deps.log.debug({ service: this.#deps.service, members: members.length }, 'peer membership changed');
    try {
      this.#deps.onChange([...members]);
    } catch (error) {
      this.#deps.log.error({ err: (error as Error).message }, 'peer membership: applying the new member list failed');
    }
  }

  #logSkipped(skipped: readonly SkippedEndpoint[]): void {
    const now = new Set<string>();
    for (const entry of skipped) {
      const key = `${entry.slice}\0${entry.address ?? ''}\0${entry.reason}`;
      now.add(key);
      if (this.#logged.has(key)) continue;
      this.#deps.log.warn({ service: this.#deps.service, ...entry }, 'peer membership: endpoint left out');
    }
    this.#logged = now;
  }
}
