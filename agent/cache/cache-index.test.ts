import { describe, expect, it } from 'vitest';
import { sha256Of } from '../oci/digest.ts';
import { CacheIndex } from './cache-index.ts';

const digestOf = sha256Of;

const A = digestOf('a');
const B = digestOf('b');
const C = digestOf('c');
const D = digestOf('d');
const NAMES = new Map([
  [A, 'A'],
  [B, 'B'],
  [C, 'C'],
  [D, 'D'],
]);

/** An index whose removals are recorded by letter, in order. */
function makeIndex(maxBytes: number): { index: CacheIndex; removed: string[] } {
  const removed: string[] = [];
  const index = new CacheIndex(maxBytes, (digest) => removed.push(NAMES.get(digest) ?? digest));
  return { index, removed };
}

describe('CacheIndex', () => {
  it('accounts bytes and entries', () => {
    const { index, removed } = makeIndex(100);
    expect(index.stats()).toEqual({ bytes: 0, entries: 0, evictions: 0, claimed: 0, reserved: 0, pinned: 0 });
    index.add(A, 10, true);
    index.add(B, 25, true);
    index.add(C, 40, false);
    expect(index.stats()).toEqual({ bytes: 75, entries: 3, evictions: 0, claimed: 0, reserved: 0, pinned: 0 });
    // Adding a digest that is already indexed changes nothing.
    index.add(B, 25, true);
    expect(index.stats()).toEqual({ bytes: 75, entries: 3, evictions: 0, claimed: 0, reserved: 0, pinned: 0 });
    index.delete(B);
    expect(index.stats()).toEqual({ bytes: 50, entries: 2, evictions: 0, claimed: 0, reserved: 0, pinned: 0 });
    expect(removed).toEqual(['B']);
  });

  it('evicts the least recently used entry and removes its file', () => {
    const { index, removed } = makeIndex(30);
    index.add(A, 10, true);
    index.add(B, 10, true);
    index.add(C, 10, true);
    index.add(D, 10, true);
    expect(removed).toEqual(['A']);
    expect([A, B, C, D].map((d) => index.has(d))).toEqual([false, true, true, true]);
    expect(index.stats()).toEqual({ bytes: 30, entries: 3, evictions: 1, claimed: 0, reserved: 0, pinned: 0 });
  });

  it('counts a read (acquire) as a use', () => {
    const { index, removed } = makeIndex(30);
    index.add(A, 10, true);
    index.add(B, 10, true);
    index.add(C, 10, true);
    index.acquire(A)?.release();
    index.add(D, 10, true);
    expect(removed).toEqual(['B']);
    expect(index.has(A)).toBe(true);
  });

  it('counts re-adding an indexed digest as a use', () => {
    const { index, removed } = makeIndex(30);
    index.add(A, 10, true);
    index.add(B, 10, true);
    index.add(C, 10, true);
    index.add(A, 10, true);
    index.add(D, 10, true);
    expect(removed).toEqual(['B']);
  });

  it('evicts as many old entries as a large new entry needs, oldest first', () => {
    const { index, removed } = makeIndex(30);
    index.add(A, 10, true);
    index.add(B, 10, true);
    index.add(C, 10, true);
    index.add(D, 25, true);
    expect(removed).toEqual(['A', 'B', 'C']);
    expect(index.stats()).toEqual({ bytes: 25, entries: 1, evictions: 3, claimed: 0, reserved: 0, pinned: 0 });
  });

  it('fits() allows sizes up to maxBytes', () => {
    const { index } = makeIndex(100);
    expect(index.fits(0)).toBe(true);
    expect(index.fits(99)).toBe(true);
    expect(index.fits(100)).toBe(true);
    expect(index.fits(101)).toBe(false);
  });

  it('removes a blob that can never fit instead of indexing it', () => {
    const { index, removed } = makeIndex(100);
    index.add(A, 50, true);
    index.add(B, 101, true);
    expect(removed).toEqual(['B']);
    expect(index.has(B)).toBe(false);
    expect(index.has(A)).toBe(true);
    expect(index.stats()).toEqual({ bytes: 50, entries: 1, evictions: 0, claimed: 0, reserved: 0, pinned: 0 });
  });

  it('keeps an entry of exactly maxBytes', () => {
    const { index, removed } = makeIndex(100);
    index.add(A, 100, true);
    expect(index.has(A)).toBe(true);
    expect(removed).toEqual([]);
  });

  it('hands out leases carrying size and verification state', () => {
    const { index } = makeIndex(100);
    expect(index.acquire(A)).toBeUndefined();
    index.add(A, 10, false);
    const first = index.acquire(A);
    expect(first).toMatchObject({ digest: A, size: 10, verified: false });
    first?.markVerified();
    first?.release();
    expect(index.acquire(A)?.verified).toBe(true);
  });

  it('marks an unverified entry verified when it is added again as verified', () => {
    const { index } = makeIndex(100);
    index.add(A, 10, false);
    index.add(A, 10, false);
    expect(index.acquire(A)?.verified).toBe(false);
    index.add(A, 10, true);
    expect(index.acquire(A)?.verified).toBe(true);
  });

  it('evicts past a leased entry: its file would stay for its reader, so evicting it frees nothing', () => {
    const { index, removed } = makeIndex(30);
    index.add(A, 10, true);
    const lease = index.acquire(A);
    index.add(B, 10, true);
    index.add(C, 10, true);
    // A is the least recently used, but being read.
    index.add(D, 10, true);
    expect([A, B, C, D].map((d) => index.has(d))).toEqual([true, false, true, true]);
    expect(removed).toEqual(['B']);
    lease?.release();
    expect(removed).toEqual(['B']);
    expect(index.stats()).toEqual({ bytes: 30, entries: 3, evictions: 1, claimed: 0, reserved: 0, pinned: 0 });
  });

  it('removes a new file instead of indexing it when only leased entries could make room', () => {
    const { index, removed } = makeIndex(20);
    index.add(A, 10, true);
    index.add(B, 10, true);
    const leases = [index.acquire(A), index.acquire(B)];
    index.add(C, 10, true);
    expect(removed).toEqual(['C']);
    expect([A, B, C].map((d) => index.has(d))).toEqual([true, true, false]);
    for (const lease of leases) lease?.release();
    expect(removed).toEqual(['C']);
  });

  it('waits for the last of several leases; releasing twice counts once', () => {
    const { index, removed } = makeIndex(10);
    index.add(A, 10, true);
    const first = index.acquire(A);
    const second = index.acquire(A);
    index.delete(A);
    expect(removed).toEqual([]);
    first?.release();
    first?.release();
    expect(removed).toEqual([]);
    second?.release();
    expect(removed).toEqual(['A']);
  });

  it('does not let an old lease remove a digest that was re-added after it was dropped', () => {
    const { index, removed } = makeIndex(30);
    index.add(A, 10, true);
    const lease = index.acquire(A);
    index.delete(A);
    expect(index.has(A)).toBe(false);
    // A is fetched and committed again while the old reader still holds its lease.
    index.add(A, 10, true);
    expect(index.has(A)).toBe(true);
    lease?.release();
    expect(removed).toEqual([]);
    expect(index.has(A)).toBe(true);
  });

  it('counts the file of a dropped entry until its last reader is done', () => {
    const { index } = makeIndex(30);
    index.add(A, 20, true);
    const lease = index.acquire(A);
    index.delete(A);
    expect(index.room()).toBe(10);
    expect(index.claim(20)).toBeUndefined();
    lease?.release();
    expect(index.room()).toBe(30);
    expect(index.claim(20)?.bytes).toBe(20);
  });

  it('delete() drops the entry at once but removes the file only after the last lease', () => {
    const { index, removed } = makeIndex(100);
    index.add(A, 10, true);
    index.add(B, 10, true);
    const lease = index.acquire(A);
    index.delete(A);
    index.delete(B);
    expect(index.has(A)).toBe(false);
    expect(removed).toEqual(['B']);
    expect(index.acquire(A)).toBeUndefined();
    lease?.release();
    expect(removed).toEqual(['B', 'A']);
    // delete() is not an eviction.
    expect(index.stats().evictions).toBe(0);
  });

  it('deleting an unknown digest is a no-op', () => {
    const { index, removed } = makeIndex(100);
    index.delete(A);
    expect(removed).toEqual([]);
  });

  it('indexes empty blobs', () => {
    const { index } = makeIndex(0);
    expect(index.fits(0)).toBe(true);
    index.add(A, 0, true);
    expect(index.has(A)).toBe(true);
    expect(index.acquire(A)?.size).toBe(0);
  });

  describe('claims', () => {
    it('count against maxBytes with committed entries, evicting the least recently used', () => {
      const { index, removed } = makeIndex(100);
      index.add(A, 40, true);
      index.add(B, 40, true);
      const claim = index.claim(30);
      expect(claim?.bytes).toBe(30);
      expect(removed).toEqual(['A']);
      expect(index.stats()).toEqual({ bytes: 40, entries: 1, evictions: 1, claimed: 30, reserved: 0, pinned: 0 });
      expect(index.room()).toBe(30);
    });

    it('keep later additions from taking claimed room', () => {
      const { index, removed } = makeIndex(100);
      const claim = index.claim(70);
      index.add(A, 20, true);
      index.add(B, 20, true);
      // B needs A's room: the claim is not touched.
      expect(removed).toEqual(['A']);
      expect(index.stats()).toEqual({ bytes: 20, entries: 1, evictions: 1, claimed: 70, reserved: 0, pinned: 0 });
      expect(claim?.bytes).toBe(70);
    });

    it('are refused without evicting anything when even evicting everything would not make room', () => {
      const { index, removed } = makeIndex(100);
      index.add(A, 30, true);
      index.add(B, 30, true);
      const lease = index.acquire(B);
      const first = index.claim(40);
      expect(first?.bytes).toBe(40);
      // Only A (30) could go; 60 more do not fit with B leased and 40 claimed.
      expect(index.claim(60)).toBeUndefined();
      expect(removed).toEqual([]);
      expect(index.claim(101)).toBeUndefined();
      lease?.release();
    });

    it('grow as a fill writes, evicting as needed, and are refused at the limit without changing', () => {
      const { index, removed } = makeIndex(100);
      index.add(A, 30, true);
      index.add(B, 30, true);
      const claim = index.claim(0)!;
      expect(claim.grow(40)).toBe(true);
      expect(removed).toEqual([]);
      expect(claim.grow(50)).toBe(true);
      expect(removed).toEqual(['A']);
      const lease = index.acquire(B);
      expect(claim.grow(80)).toBe(false);
      expect(claim.bytes).toBe(50);
      expect(index.has(B)).toBe(true);
      lease?.release();
      expect(claim.grow(80)).toBe(true);
      expect(removed).toEqual(['A', 'B']);
      claim.shrink(20);
      expect(index.stats()).toEqual({ bytes: 0, entries: 0, evictions: 2, claimed: 20, reserved: 0, pinned: 0 });
    });

    it('turn into the committed entry without evicting anything', () => {
      const { index, removed } = makeIndex(100);
      index.add(A, 50, true);
      const claim = index.claim(50)!;
      claim.commit(B, 50, 'stamp');
      expect(removed).toEqual([]);
      expect(index.stats()).toEqual({ bytes: 100, entries: 2, evictions: 0, claimed: 0, reserved: 0, pinned: 0 });
      expect(index.acquire(B)).toMatchObject({ size: 50, verified: true, stamp: 'stamp' });
      // Committed or released once: a second release changes nothing.
      claim.release();
      expect(index.stats().claimed).toBe(0);
      expect(claim.grow(10)).toBe(false);
    });

    it('give their bytes back once released', () => {
      const { index } = makeIndex(100);
      const claim = index.claim(60)!;
      claim.release();
      claim.release();
      expect(index.stats().claimed).toBe(0);
      expect(index.room()).toBe(100);
    });

    it('hold announced bytes ahead of the writes from free room only, and evict only for bytes written', () => {
      const { index, removed } = makeIndex(100);
      index.add(A, 30, true);
      index.add(B, 30, true);
      const claim = index.claim(0)!;
      claim.reserve(95);
      expect(removed).toEqual([]);
      expect(claim).toMatchObject({ bytes: 40, reserved: 40 });
      expect(index.stats()).toEqual({ bytes: 60, entries: 2, evictions: 0, claimed: 40, reserved: 40, pinned: 0 });
      // Writes use the reservation first: nothing is evicted until they go past it.
      expect(claim.grow(40)).toBe(true);
      expect(removed).toEqual([]);
      expect(claim).toMatchObject({ bytes: 40, reserved: 0 });
      expect(claim.grow(45)).toBe(true);
      expect(removed).toEqual(['A']);
      expect(claim).toMatchObject({ bytes: 45, reserved: 0 });
      claim.reserve(95);
      expect(claim).toMatchObject({ bytes: 70, reserved: 25 });
      // Stopping gives the reservation back; the written bytes stay claimed until released.
      claim.shrink(45);
      expect(index.stats()).toMatchObject({ claimed: 45, reserved: 0 });
      claim.release();
      expect(index.stats()).toMatchObject({ claimed: 0, reserved: 0 });
    });

    it('give reserved (unwritten) room to files already on disk before anything is evicted, but not to other claims', () => {
      const { index, removed } = makeIndex(100);
      index.add(A, 40, true);
      const first = index.claim(0)!;
      first.reserve(60);
      expect(first.reserved).toBe(60);
      // Another fill's writes do not take the reservation: they evict.
      const second = index.claim(0)!;
      expect(second.grow(10)).toBe(true);
      expect(removed).toEqual(['A']);
      expect(first.reserved).toBe(60);
      // A file found on disk (start-up scan) takes reserved room first.
      expect(index.room()).toBe(90);
      index.add(B, 50, true);
      expect(removed).toEqual(['A']);
      expect(first).toMatchObject({ bytes: 40, reserved: 40 });
      expect(index.stats()).toEqual({ bytes: 50, entries: 1, evictions: 1, claimed: 50, reserved: 40, pinned: 0 });
      first.release();
      second.release();
    });

    it('count what other fills announced but could not hold when a new fill asks whether it could fit', () => {
      const { index, removed } = makeIndex(100);
      index.add(A, 60, true);
      const first = index.claim(0)!;
      // 40 are free: held; 20 more announced are expected, not held.
      first.reserve(60);
      expect(first).toMatchObject({ bytes: 40, reserved: 40 });
      expect(index.couldFit(40)).toBe(true);
      expect(index.couldFit(41)).toBe(false);
      // Writing what was expected: the expectation turns into held bytes (evicting A), no longer counted twice.
      expect(first.grow(60)).toBe(true);
      expect(removed).toEqual(['A']);
      expect(index.couldFit(40)).toBe(true);
      expect(index.couldFit(41)).toBe(false);
      first.shrink(60);
      expect(index.couldFit(40)).toBe(true);
      first.release();
      expect(index.couldFit(100)).toBe(true);
    });

    it('tell whether a size could fit by evicting every blob nobody reads, without evicting', () => {
      const { index, removed } = makeIndex(100);
      index.add(A, 30, true);
      index.add(B, 30, true);
      const lease = index.acquire(B);
      expect(index.couldFit(70)).toBe(true);
      expect(index.couldFit(71)).toBe(false);
      expect(index.couldFit(101)).toBe(false);
      expect(removed).toEqual([]);
      lease?.release();
      expect(index.couldFit(100)).toBe(true);
    });

    it('never let committed + claimed bytes exceed maxBytes, whatever the order of operations', () => {
      const { index } = makeIndex(1_000);
      // A deterministic pseudo-random walk through claims, growth, commits, releases, reads and adds.
      let seed = 7;
      const next = (n: number): number => {
        seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
        return seed % n;
      };
      const claims: Array<ReturnType<CacheIndex['claim']>> = [];
      const leases: Array<ReturnType<CacheIndex['acquire']>> = [];
      let committed = 0;
      for (let step = 0; step < 5_000; step += 1) {
        const digest = digestOf(`blob-${next(60)}`);
        switch (next(6)) {
          case 0: {
            const bytes = next(400);
            const could = index.couldFit(bytes);
            const claim = index.claim(bytes);
            // couldFit also counts what other fills expect to write: it may say no where a claim would succeed, never the reverse.
            if (could) expect(claim, `step ${step}: couldFit(${bytes}) said yes`).toBeDefined();
            claims.push(claim);
            break;
          }
          case 1: {
            const claim = claims[next(claims.length + 1)];
            const total = next(500);
            const how = next(3);
            if (how === 0) claim?.grow(total);
            else if (how === 1) claim?.reserve(total);
            else claim?.shrink(total);
            break;
          }
          case 2: {
            const claim = claims.splice(next(claims.length + 1), 1)[0];
            if (claim) {
              claim.commit(digest, claim.bytes, undefined);
              committed += 1;
            }
            break;
          }
          case 3:
            claims.splice(next(claims.length + 1), 1)[0]?.release();
            break;
          case 4:
            if (next(2) === 0) leases.push(index.acquire(digest));
            else leases.splice(next(leases.length + 1), 1)[0]?.release();
            break;
          default:
            index.add(digest, next(300), true);
        }
        const { bytes, claimed, reserved } = index.stats();
        expect(bytes + claimed, `step ${step}`).toBeLessThanOrEqual(1_000);
        expect(claimed).toBe(claims.reduce((sum, claim) => sum + (claim?.bytes ?? 0), 0));
        expect(reserved).toBe(claims.reduce((sum, claim) => sum + (claim?.reserved ?? 0), 0));
        expect(reserved).toBeLessThanOrEqual(claimed);
      }
      // The walk did reach the interesting states.
      expect(committed).toBeGreaterThan(20);
      expect(index.stats().evictions).toBeGreaterThan(20);
    });
  });
});

describe('CacheIndex pins', () => {
  it('eviction passes over pinned entries, oldest unpinned first; unpinning makes them evictable again', () => {
    const { index, removed } = makeIndex(100);
    index.add(A, 40, true);
    index.add(B, 30, true);
    index.add(C, 30, true);
    index.setPins(new Set([A, C]));
    expect(index.stats().pinned).toBe(70);
    // 30 more: A is the oldest, but pinned; B goes.
    index.add(D, 30, true);
    expect(removed).toEqual(['B']);
    expect(index.has(A)).toBe(true);
    // Nothing unpinned but D is left to make room: more than that cannot be claimed.
    expect(index.claim(40)).toBeUndefined();
    expect(index.couldFit(30)).toBe(true);
    expect(index.couldFit(31)).toBe(false);
    expect(removed).toEqual(['B']);
    index.setPins(new Set([C]));
    expect(index.claim(40)).toBeDefined();
    expect(removed).toEqual(['B', 'A']);
    expect(index.isPinned(C)).toBe(true);
  });

  it('a pinned digest not cached yet is protected from the moment it is indexed; a corrupt one is still dropped', () => {
    const { index, removed } = makeIndex(50);
    index.setPins(new Set([B]));
    index.add(A, 20, true);
    index.add(B, 20, true);
    index.add(C, 20, true);
    expect(removed).toEqual(['A']);
    index.delete(B);
    expect(removed).toEqual(['A', 'B']);
    expect(index.stats().pinned).toBe(0);
  });
});
