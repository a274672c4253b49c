import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { sha256Of } from '../oci/digest.ts';
import { Membership, type PeerMember, rankOwners } from './rendezvous.ts';

const member = (name: string, url = `https://${name}.peers.test:9403`): PeerMember => ({ name, url });
const cluster = (n: number): PeerMember[] => Array.from({ length: n }, (_, i) => member(`node-${i}`));
const digests = (n: number, seed = 'blob'): string[] => Array.from({ length: n }, (_, i) => sha256Of(`${seed} ${i}`));
const names = (members: readonly PeerMember[]): string[] => members.map((m) => m.name);
const ownerOf = (digest: string, members: readonly PeerMember[]): string => rankOwners(digest, members, 1)[0]!.name;

/** A seeded shuffle, so a failure reproduces. */
function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items];
  let state = seed >>> 0;
  const next = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

describe('rankOwners', () => {
  it('ranks by the first 8 bytes of sha256(name NUL digest), highest first', () => {
    // Every agent of a cluster must agree on this function, so it is pinned independently here.
    const members = cluster(7);
    for (const digest of digests(200)) {
      const expected = members
        .map((m) => ({ name: m.name, w: createHash('sha256').update(`${m.name}\0${digest}`).digest().readBigUInt64BE(0) }))
        .sort((a, b) => (a.w > b.w ? -1 : a.w < b.w ? 1 : 0))
        .map((x) => x.name);
      expect(names(rankOwners(digest, members, members.length))).toEqual(expected);
    }
  });

  it('gives a pinned ranking for a known digest (a changed hash would move every blob during a rollout)', () => {
    const digest = 'sha256:dd56de4137951d9c92681b03416ec15f886b4482a27e3a517d32f085244cbe5d';
    const members = ['node-a', 'node-b', 'node-c', 'node-d', 'node-e'].map((n) => member(n));
    expect(names(rankOwners(digest, members, 5))).toEqual(['node-c', 'node-e', 'node-d', 'node-a', 'node-b']);
    expect(names(rankOwners(digest, members))).toEqual(['node-c', 'node-e', 'node-d']);
  });

  it('is deterministic and independent of the order of the member list', () => {
    const members = cluster(12);
    for (const [i, digest] of digests(500).entries()) {
      const reference = names(rankOwners(digest, members, members.length));
      expect(names(rankOwners(digest, members, members.length))).toEqual(reference);
      expect(names(rankOwners(digest, shuffled(members, i + 1), members.length))).toEqual(reference);
      expect(names(rankOwners(digest, [...members].reverse(), members.length))).toEqual(reference);
    }
  });

  it('returns count members, all distinct, and [] for no members', () => {
    const members = cluster(5);
    const digest = sha256Of('count');
    expect(rankOwners(digest, members)).toHaveLength(3);
    expect(rankOwners(digest, members, 1)).toHaveLength(1);
    expect(rankOwners(digest, members, 0)).toEqual([]);
    expect(rankOwners(digest, members, 10)).toHaveLength(5);
    expect(new Set(names(rankOwners(digest, members, 5))).size).toBe(5);
    expect(rankOwners(digest, [])).toEqual([]);
    expect(rankOwners(digest, members.slice(0, 2))).toHaveLength(2);
    expect(() => rankOwners(digest, members, -1)).toThrow(RangeError);
    expect(() => rankOwners(digest, members, 1.5)).toThrow(RangeError);
  });

  it('spreads 10,000 digests over 10 members at 7%..13% each', () => {
    const members = cluster(10);
    const owned = new Map<string, number>(members.map((m) => [m.name, 0]));
    for (const digest of digests(10_000)) {
      const owner = ownerOf(digest, members);
      owned.set(owner, owned.get(owner)! + 1);
    }
    for (const [name, count] of owned) {
      expect(count, name).toBeGreaterThanOrEqual(700);
      expect(count, name).toBeLessThanOrEqual(1300);
    }
  });

  it('moves only the digests the 11th member now owns when it joins, about 1/11 of them', () => {
    const before = cluster(10);
    const after = [...before, member('node-new')];
    let moved = 0;
    for (const digest of digests(10_000)) {
      const was = ownerOf(digest, before);
      const now = ownerOf(digest, after);
      if (now !== was) {
        expect(now).toBe('node-new');
        moved += 1;
      }
    }
    // Expected 10,000 / 11 ≈ 909; the binomial standard deviation is about 29.
    expect(moved).toBeGreaterThan(750);
    expect(moved).toBeLessThan(1070);
  });

  it("moves only the leaving member's digests, each to its former second-ranked member", () => {
    const before = cluster(10);
    const gone = 'node-3';
    const after = before.filter((m) => m.name !== gone);
    let moved = 0;
    for (const digest of digests(10_000)) {
      const [first, second] = names(rankOwners(digest, before, 2));
      const now = ownerOf(digest, after);
      if (first === gone) {
        expect(now).toBe(second);
        moved += 1;
      } else {
        expect(now).toBe(first);
      }
    }
    expect(moved).toBeGreaterThan(700);
  });

  it('moves nothing when members change their url', () => {
    const before = cluster(10);
    const after = before.map((m) => member(m.name, `https://10.0.0.${m.name.slice(5)}:19403`));
    for (const digest of digests(2_000)) {
      expect(names(rankOwners(digest, after, 10))).toEqual(names(rankOwners(digest, before, 10)));
    }
  });

  it('throws on duplicate names, even with different urls', () => {
    const members = [member('node-a'), member('node-b'), member('node-a', 'https://10.0.0.9:9403')];
    expect(() => rankOwners(sha256Of('dup'), members)).toThrow(/duplicate member name "node-a"/);
  });
});

describe('Membership', () => {
  it('reports who joined and who left, and not url changes', () => {
    const view = new Membership('node-0', cluster(3));
    expect(view.size).toBe(3);
    expect(view.update([member('node-0'), member('node-2', 'https://10.0.0.2:9403'), member('node-9'), member('node-5')])).toEqual({
      joined: ['node-5', 'node-9'],
      left: ['node-1'],
    });
    expect(view.size).toBe(4);
    expect(view.update([member('node-0'), member('node-2'), member('node-9'), member('node-5')])).toEqual({ joined: [], left: [] });
  });

  it('returns the current url after a url change, with the same owners', () => {
    const view = new Membership('node-0', cluster(4));
    const digest = sha256Of('url');
    const before = view.owners(digest);
    view.update(cluster(4).map((m) => member(m.name, `https://moved-${m.name}:9403`)));
    const after = view.owners(digest);
    expect(names(after)).toEqual(names(before));
    expect(after.map((m) => m.url)).toEqual(before.map((m) => `https://moved-${m.name}:9403`));
  });

  it('throws on duplicate names in the constructor and in update, keeping the old list', () => {
    expect(() => new Membership('node-0', [member('node-0'), member('node-0')])).toThrow(/duplicate member name "node-0"/);
    const view = new Membership('node-0', cluster(3));
    const digest = sha256Of('keep');
    const owners = names(view.owners(digest));
    expect(() => view.update([member('node-7'), member('node-7')])).toThrow(/duplicate member name "node-7"/);
    expect(view.size).toBe(3);
    expect(names(view.owners(digest))).toEqual(owners);
  });

  it('owners() agrees with rankOwners over the current list', () => {
    const members = cluster(8);
    const view = new Membership('node-2', shuffled(members, 42));
    for (const digest of digests(200)) {
      expect(names(view.owners(digest))).toEqual(names(rankOwners(digest, members)));
      expect(names(view.owners(digest, 5))).toEqual(names(rankOwners(digest, members, 5)));
    }
  });

  it('isOwner is true for exactly one member per digest across all members', () => {
    const members = cluster(10);
    const views = members.map((m) => new Membership(m.name, members));
    for (const digest of digests(1_000)) {
      const owners = views.filter((v) => v.isOwner(digest));
      expect(owners).toHaveLength(1);
      expect(owners[0]).toBe(views[members.findIndex((m) => m.name === ownerOf(digest, members))]);
    }
  });

  it('candidates are the top three owners ranked above self: never self, at most three, only ever up the ranking', () => {
    const members = cluster(10);
    const lengths = [0, 0, 0, 0];
    for (const self of members) {
      const view = new Membership(self.name, members);
      for (const digest of digests(300)) {
        const candidates = view.candidates(digest);
        const top = names(rankOwners(digest, members, 3));
        const rank = top.indexOf(self.name);
        expect(names(candidates)).not.toContain(self.name);
        expect(names(candidates)).toEqual(rank === -1 ? top : top.slice(0, rank));
        lengths[candidates.length]! += 1;
      }
    }
    // Per digest: the owner asks nobody, the second asks the owner, the third both, the other 7 all three.
    expect(lengths).toEqual([300, 300, 300, 300 * 7]);
  });

  it('no two agents can wait for each other: whoever asks a peer is ranked below it', () => {
    const members = cluster(6);
    for (const digest of digests(200)) {
      const rank = new Map(rankOwners(digest, members, members.length).map((m, i) => [m.name, i]));
      for (const self of members) {
        for (const asked of new Membership(self.name, members).candidates(digest)) expect(rank.get(asked.name)!).toBeLessThan(rank.get(self.name)!);
      }
    }
  });

  it('handles a list without self (not yet joined) and an empty list', () => {
    const view = new Membership('node-x', cluster(4));
    const digest = sha256Of('outsider');
    expect(view.isOwner(digest)).toBe(false);
    expect(view.candidates(digest)).toHaveLength(3);
    view.update([]);
    expect(view.size).toBe(0);
    expect(view.owners(digest)).toEqual([]);
    expect(view.candidates(digest)).toEqual([]);
    expect(view.isOwner(digest)).toBe(false);
  });
});
