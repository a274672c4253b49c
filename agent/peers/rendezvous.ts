import { createHash } from 'node:crypto';

/**
 * Who owns which blob among the agents of a cluster, by rendezvous (highest-random-weight) hashing.
 *
 * Every agent computes the same ranking from the same member list with no coordination, and a member
 * joining or leaving moves only the digests that member gains or loses: no other digest changes owner.
 */

/** One agent that shares blobs with the others. */
export interface PeerMember {
  /** The node name: unique in the cluster, and the only thing ownership depends on. */
  readonly name: string;
  /** The member's peer endpoint, e.g. `https://10.0.0.5:9403`. May change without moving any blob. */
  readonly url: string;
}

/**
 * The member's weight for the digest: the first 8 bytes of sha256(`${name}\0${digest}`), big-endian.
 * Every agent in the cluster must compute exactly this, so a change here moves every blob during a rollout.
 * The NUL keeps ("ab", "c") and ("a", "bc") apart; node names and digests never contain one.
 */
function weight(name: string, digest: string): bigint {
  return createHash('sha256').update(`${name}\0${digest}`).digest().readBigUInt64BE(0);
}

/** Throws on a repeated name: two members with one name would make ownership depend on list order. */
function checkUnique(members: readonly PeerMember[]): void {
  const seen = new Set<string>();
  for (const { name } of members) {
    if (seen.has(name)) throw new Error(`peer membership: duplicate member name "${name}"`);
    seen.add(name);
  }
}

/**
 * The `count` members with the highest weight for `digest`, highest first: the owner, then its fallbacks.
 * Ties (practically never) go to the lower name by code unit, so the order is total and the same on every
 * agent whatever order the list came in. Throws on duplicate names.
 */
export function rankOwners(digest: string, members: readonly PeerMember[], count = 3): PeerMember[] {
  checkUnique(members);
  if (!Number.isInteger(count) || count < 0) throw new RangeError(`peer membership: count must be a non-negative integer, got ${count}`);
  return members
    .map((member) => ({ member, weight: weight(member.name, digest) }))
    .sort((a, b) => (a.weight !== b.weight ? (a.weight > b.weight ? -1 : 1) : a.member.name < b.member.name ? -1 : a.member.name > b.member.name ? 1 : 0))
    .slice(0, count)
    .map(({ member }) => member);
}

/** The current members as this agent sees them, and its own name among them. */
export class Membership {
  readonly #self: string;
  #members: readonly PeerMember[] = [];

  constructor(self: string, members: readonly PeerMember[]) {
    this.#self = self;
    this.update(members);
  }

  /**
   * Replaces the member list; returns the names that came and went (sorted), so the caller can log them and
   * hand over the blobs that moved. A url change is neither. On duplicate names it throws and keeps the old list.
   */
  update(members: readonly PeerMember[]): { joined: string[]; left: string[] } {
    checkUnique(members);
    const before = new Set(this.#members.map((m) => m.name));
    const after = new Set(members.map((m) => m.name));
    this.#members = [...members];
    return {
      joined: [...after].filter((name) => !before.has(name)).sort(),
      left: [...before].filter((name) => !after.has(name)).sort(),
    };
  }

  /** The owner and its fallbacks for the digest, highest weight first. */
  owners(digest: string, count = 3): PeerMember[] {
    return rankOwners(digest, this.#members, count);
  }

  /** Whether this agent ranks first for the digest, i.e. is the one that should keep it. */
  isOwner(digest: string): boolean {
    return this.owners(digest, 1)[0]?.name === this.#self;
  }

  /**
   * The peers to ask for the digest, best first: the owner and its two fallbacks ranked above this
   * agent. An agent among the three is the next candidate itself once those above it failed: it
   * fetches upstream rather than asking one ranked below it, so requests between agents only ever go
   * up the ranking and two agents can never wait for each other. Members ranked below the third are
   * not expected to hold the blob, so they are never asked.
   */
  candidates(digest: string): PeerMember[] {
    const top = this.owners(digest, 3);
    const at = top.findIndex((m) => m.name === this.#self);
    return at === -1 ? top : top.slice(0, at);
  }

  get size(): number {
    return this.#members.length;
  }
}
