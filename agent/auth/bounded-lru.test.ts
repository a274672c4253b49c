import { LRUCache } from 'lru-cache';
import { describe, expect, it } from 'vitest';
import { boundedLru } from './bounded-lru.ts';

describe('boundedLru', () => {
  it('holds at most maxEntries, the least recently used going first', () => {
    const map = boundedLru<string, number>(3);
    map.set('a', 1);
    map.set('b', 2);
    map.set('c', 3);
    expect(map.get('a')).toBe(1); // a is now the most recently used
    map.set('d', 4);
    expect(map.size).toBe(3);
    expect(map.has('b')).toBe(false);
    expect([...map.keys()].sort()).toEqual(['a', 'c', 'd']);
    for (let i = 0; i < 1_000; i += 1) map.set(`k${i}`, i);
    expect(map.size).toBe(3);
    expect([...map.keys()].sort()).toEqual(['k997', 'k998', 'k999']);
  });

  it('costs nothing up front, where lru-cache with `max` fills arrays for every entry', () => {
    const heapGrowth = (make: () => unknown): number => {
      const keep: unknown[] = [];
      const before = process.memoryUsage().heapUsed;
      for (let i = 0; i < 20; i += 1) keep.push(make());
      const grown = process.memoryUsage().heapUsed - before;
      expect(keep).toHaveLength(20);
      return grown;
    };
    const preallocated = heapGrowth(() => new LRUCache<string, number>({ max: 50_000 }));
    const bounded = heapGrowth(() => boundedLru<string, number>(50_000));
    // 20 × 2 arrays × 50,000 slots × 8 bytes = 16 MB, against a few KiB.
    expect(preallocated).toBeGreaterThan(12 * 1024 * 1024);
    expect(bounded).toBeLessThan(1024 * 1024);
  });
});
