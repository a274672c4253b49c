import type { Logger } from 'pino';
import type { PeerTransport } from './peer-client.ts';
import { Membership, type PeerMember } from './rendezvous.ts';

/** Why a peer was passed over for the next candidate (or upstream). */
export type FallbackReason = 'connect' | 'tls' | 'status' | 'stalled' | 'broken' | 'corrupt' | 'penalised' | 'no_identity';

/** Where a blob that is not cached here is fetched from, as the network decided it. */
export type BlobRoute =
  | { readonly kind: 'upstream'; readonly why: 'owner' | 'alone' | 'no_identity' | 'penalised' }
  | { readonly kind: 'peers'; readonly candidates: readonly PeerMember[] };

/** What the network tells metrics. */
export interface PeerEvents {
  /** An owner lookup for a blob not cached here: this agent owns it, a peer does, or peers are not usable. */
  lookup(result: 'self' | 'peer' | 'unusable'): void;
  /** A peer was left for the next step (`peer`: another candidate; `upstream`: the candidates are used up). */
  fallback(step: 'peer' | 'upstream', reason: FallbackReason): void;
  /** Blob bytes that came from peers. */
  received(bytes: number): void;
}

/** How long a peer is passed over after failing, by what it did. */
const PENALTY_MS: Record<FallbackReason, number> = {
  connect: 10_000,
  tls: 60_000,
  stalled: 10_000,
  broken: 10_000,
  corrupt: 10 * 60_000,
  status: 0,
  penalised: 0,
  no_identity: 0,
};

export interface PeerNetworkDeps {
  readonly self: string;
  readonly members: readonly PeerMember[];
  readonly client: PeerTransport;
  readonly log: Logger;
  readonly events?: PeerEvents;
  readonly now?: () => number;
  /** `progress_timeout`: a peer must send at least 1 MiB per this much time (default 10 s). */
  readonly progressMs?: number;
}

/**
 * This agent's view of the other agents: who is a member, who owns which digest (rendezvous
 * hashing), which peers failed lately (passed over for a while), and the client to reach them.
 */
export class PeerNetwork {
  readonly self: string;
  readonly client: PeerTransport;
  readonly progressMs: number;
  readonly #membership: Membership;
  readonly #log: Logger;
  readonly #events: PeerEvents | undefined;
  readonly #now: () => number;
  /** Member name → until when it is passed over. */
  readonly #penalties = new Map<string, number>();
  /** Member name → its URL, as last listed. */
  #urls: Map<string, string>;

  constructor(deps: PeerNetworkDeps) {
    this.self = deps.self;
    this.client = deps.client;
    this.progressMs = deps.progressMs ?? 10_000;
    this.#membership = new Membership(deps.self, deps.members);
    this.#urls = new Map(deps.members.map((m) => [m.name, m.url]));
    this.#log = deps.log;
    this.#events = deps.events;
    this.#now = deps.now ?? Date.now;
  }

  /**
   * New member list (config reload, EndpointSlices); logs who came and went. A member at a new
   * address is not passed over for what its old address did.
   */
  setMembers(members: readonly PeerMember[]): void {
    const before = new Map(this.#urls);
    const { joined, left } = this.#membership.update(members);
    this.#urls = new Map(members.map((m) => [m.name, m.url]));
    for (const [name, url] of this.#urls) if (before.get(name) !== url) this.#penalties.delete(name);
    if (joined.length + left.length > 0) this.#log.info({ joined, left, members: this.#membership.size }, 'peer membership changed');
  }

  get size(): number {
    return this.#membership.size;
  }

  /** Where a blob not cached here comes from: upstream when this agent owns it, else its owner and fallbacks. */
  route(digest: string): BlobRoute {
    if (this.#membership.size <= 1) return this.#looked('unusable', { kind: 'upstream', why: 'alone' });
    if (!this.client.ready) {
      this.#events?.fallback('upstream', 'no_identity');
      return this.#looked('unusable', { kind: 'upstream', why: 'no_identity' });
    }
    if (this.#membership.isOwner(digest)) return this.#looked('self', { kind: 'upstream', why: 'owner' });
    const now = this.#now();
    const candidates = this.#membership.candidates(digest).filter((member) => (this.#penalties.get(member.name) ?? 0) <= now);
    if (candidates.length === 0) {
      this.#events?.fallback('upstream', 'penalised');
      return this.#looked('peer', { kind: 'upstream', why: 'penalised' });
    }
    return this.#looked('peer', { kind: 'peers', candidates });
  }

  /** A peer failed us: logged, counted, and passed over for a while (by what it did). */
  failed(member: PeerMember, reason: FallbackReason, step: 'peer' | 'upstream', detail: Record<string, unknown>): void {
    const ms = PENALTY_MS[reason];
    if (ms > 0) this.#penalties.set(member.name, this.#now() + ms);
    this.#events?.fallback(step, reason);
    const next = step === 'peer' ? 'trying the next peer' : 'fetching from upstream';
    this.#log.warn({ peer: member.name, url: member.url, reason, penaltyMs: ms, ...detail }, `peer failed: ${next}`);
  }

  /** A peer's bytes did not match the digest: it is passed over for long; the fill fails and is not cached. */
  corrupt(member: PeerMember, detail: Record<string, unknown>): void {
    this.#penalties.set(member.name, this.#now() + PENALTY_MS.corrupt);
    this.#events?.fallback('upstream', 'corrupt');
    this.#log.error({ peer: member.name, url: member.url, penaltyMs: PENALTY_MS.corrupt, ...detail }, 'a peer served bytes that failed verification: not cached, peer passed over');
  }

  received(bytes: number): void {
    if (bytes > 0) this.#events?.received(bytes);
  }

  #looked(result: 'self' | 'peer' | 'unusable', route: BlobRoute): BlobRoute {
    this.#events?.lookup(result);
    return route;
  }
}
