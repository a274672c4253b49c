import { describe, expect, it } from 'vitest';
import { type Digest, sha256Of } from '../oci/digest.ts';
import { CacheIndex } from './cache-index.ts';
import { DiskReserve } from './disk-reserve.ts';
import { FillRoom } from './fill-room.ts';

const digestOf = sha256Of;

const [A, B, C, D] = ['a', 'b', 'c', 'd'].map(digestOf) as [Digest, Digest, Digest, Digest];
const NAMES = new Map([
  [A, 'A'],
  [B, 'B'],
  [C, 'C'],
  [D, 'D'],
]);

/** A 1,000-byte cache holding A, B, C and D (250 bytes each, A least recently used), on a roomy disk. */
function fullCache(options: { reserveAheadBytes?: number } = {}): { index: CacheIndex; removed: string[]; room: () => FillRoom } {
  const removed: string[] = [];
  const index = new CacheIndex(1_000, (digest) => removed.push(NAMES.get(digest) ?? digest));
  for (const digest of [A, B, C, D]) index.add(digest, 250, true);
  const disk = new DiskReserve('/unused', async () => ({ free: 1e12, total: 2e12 }));
  return { index, removed, room: () => new FillRoom(index, disk, { removals: async () => undefined, ...options }) };
}

function invariant(index: CacheIndex): void {
  const { bytes, claimed } = index.stats();
  expect(bytes + claimed).toBeLessThanOrEqual(index.maxBytes);
}

describe('FillRoom', () => {
  it('evicts nothing for an announced size: room is made only for bytes about to be written', async () => {
    const { index, removed, room } = fullCache();
    const fill = room();
    // An upstream announcing almost the whole cache and then (say) sending one byte.
    expect(await fill.start(999)).toBeUndefined();
    expect(removed).toEqual([]);
    expect(index.stats()).toMatchObject({ entries: 4, evictions: 0 });
    expect(await fill.grow(1)).toBeUndefined();
    // One byte written: the least recently used blob goes, nothing more.
    expect(removed).toEqual(['A']);
    expect(index.stats()).toMatchObject({ entries: 3, evictions: 1 });
    invariant(index);
    fill.release();
    expect(index.stats()).toMatchObject({ claimed: 0, reserved: 0 });
  });

  it('holds announced bytes ahead of the writes only in free room, at most as far ahead as the fill has written (or the floor)', async () => {
    const { index, removed, room } = fullCache({ reserveAheadBytes: 100 });
    index.delete(A);
    index.delete(B);
    expect(removed).toEqual(['A', 'B']);
    // 500 bytes are free now.
    const fill = room();
    expect(await fill.start(900)).toBeUndefined();
    expect(index.stats()).toMatchObject({ claimed: 100, reserved: 100 });
    expect(await fill.grow(150)).toBeUndefined();
    // 150 written, up to 150 more held ahead: 300.
    expect(index.stats()).toMatchObject({ claimed: 300, reserved: 150 });
    expect(await fill.grow(400)).toBeUndefined();
    // 400 written; only 100 more are free: held ahead without evicting.
    expect(index.stats()).toMatchObject({ claimed: 500, reserved: 100 });
    expect(removed).toEqual(['A', 'B']);
    expect(await fill.grow(600)).toBeUndefined();
    // Written bytes beyond the free room evict, as usual.
    expect(removed).toEqual(['A', 'B', 'C']);
    invariant(index);
    fill.stop(600);
    expect(index.stats()).toMatchObject({ claimed: 600, reserved: 0 });
    fill.release();
  });

  it('keeps caching into a full cache on a disk at its reserve: the blobs evicted for each write free the disk for it', async () => {
    // A 1,000,000-byte disk (reserve 50,000) holding a full 940,000-byte cache: 60,000 free, not
    // enough for the announced 100,000 (nor for any 20,000-byte write with the next one granted ahead).
    const removed: string[] = [];
    const index = new CacheIndex(940_000, (digest) => removed.push(digest));
    for (let i = 0; i < 18; i += 1) index.add(digestOf(`blob-${i}`), 50_000, true);
    index.add(digestOf('small'), 40_000, true);
    let written = 0;
    const disk = new DiskReserve('/unused', async () => ({ free: 1_000_000 - index.stats().bytes - written, total: 1_000_000 }));
    const fill = new FillRoom(index, disk, { removals: async () => undefined, recheckBytes: 10_000 });
    expect(await fill.start(100_000)).toBeUndefined();
    expect(removed).toEqual([]);
    for (let total = 20_000; total <= 100_000; total += 20_000) {
      expect(await fill.grow(total), `at ${total}`).toBeUndefined();
      written = total;
    }
    // Two 50,000-byte blobs made room for the 100,000 written, nothing more.
    expect(removed).toHaveLength(2);
    fill.release();
  });

  it('relays from the start what could not fit even with every unread blob evicted, evicting nothing', async () => {
    const { index, removed, room } = fullCache();
    const leases = [A, B, C].map((digest) => index.acquire(digest));
    const fill = room();
    // 750 bytes are being read: 250 could be made room for, not 300.
    expect((await fill.start(300))?.message).toContain('cache_max_bytes');
    expect(removed).toEqual([]);
    fill.release();
    for (const lease of leases) lease?.release();
  });
});
