import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { type Digest, parseDigest } from '../oci/digest.ts';
import { CacheIndex } from './cache-index.ts';

function digestOf(label: string): Digest {
  return parseDigest(`sha256:${createHash('sha256').update(label).digest('hex')}`);
}

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
    expect(index.stats()).toEqual({ bytes: 0, entries: 0, evictions: 0 });
    index.add(A, 10, true);
    index.add(B, 25, true);
    index.add(C, 40, false);
    expect(index.stats()).toEqual({ bytes: 75, entries: 3, evictions: 0 });
    // Adding a digest that is already indexed changes nothing.
    index.add(B, 25, true);
    expect(index.stats()).toEqual({ bytes: 75, entries: 3, evictions: 0 });
    index.delete(B);
    expect(index.stats()).toEqual({ bytes: 50, entries: 2, evictions: 0 });
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
    expect(index.stats()).toEqual({ bytes: 30, entries: 3, evictions: 1 });
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
    expect(index.stats()).toEqual({ bytes: 25, entries: 1, evictions: 3 });
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
    expect(index.stats()).toEqual({ bytes: 50, entries: 1, evictions: 0 });
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

  it('does not remove a leased entry on eviction until the lease is released', () => {
    const { index, removed } = makeIndex(30);
    index.add(A, 10, true);
    const lease = index.acquire(A);
    index.add(B, 10, true);
    index.add(C, 10, true);
    index.add(D, 10, true);
    expect(index.has(A)).toBe(false);
    expect(index.stats()).toEqual({ bytes: 30, entries: 3, evictions: 1 });
    expect(removed).toEqual([]);
    lease?.release();
    expect(removed).toEqual(['A']);
  });

  it('waits for the last of several leases; releasing twice counts once', () => {
    const { index, removed } = makeIndex(10);
    index.add(A, 10, true);
    const first = index.acquire(A);
    const second = index.acquire(A);
    index.add(B, 10, true);
    expect(removed).toEqual([]);
    first?.release();
    first?.release();
    expect(removed).toEqual([]);
    second?.release();
    expect(removed).toEqual(['A']);
  });

  it('does not let an old lease remove a digest that was re-added after its eviction', () => {
    const { index, removed } = makeIndex(20);
    index.add(A, 10, true);
    const lease = index.acquire(A);
    index.add(B, 10, true);
    index.add(C, 10, true);
    expect(index.has(A)).toBe(false);
    // A is fetched and committed again while the old reader still holds its lease.
    index.add(A, 10, true);
    expect(index.has(A)).toBe(true);
    expect(removed).toEqual(['B']);
    lease?.release();
    expect(removed).toEqual(['B']);
    expect(index.has(A)).toBe(true);
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
});
