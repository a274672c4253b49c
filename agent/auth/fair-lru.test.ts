import { describe, expect, it } from 'vitest';
import { FairLru } from './fair-lru.ts';

describe('FairLru', () => {
  it('one group growing past the bound displaces only its own least recently used members', () => {
    const lru = new FairLru<number>(100);
    lru.set('priv/app', 'alice', 1);
    lru.set('other/app', 'bob', 2);
    for (let i = 0; i < 100_000; i += 1) lru.set('pub/app', `junk-${i}`, i);
    expect(lru.size).toBe(100);
    expect(lru.get('priv/app', 'alice')).toBe(1);
    expect(lru.get('other/app', 'bob')).toBe(2);
    expect(lru.get('pub/app', 'junk-99999')).toBe(99_999);
    expect(lru.get('pub/app', 'junk-99902')).toBe(99_902);
    expect(lru.get('pub/app', 'junk-99901')).toBeUndefined();
  });

  it('many groups: the largest gives first, and within it the least recently used', () => {
    const evicted: string[] = [];
    const lru = new FairLru<number>(5, (group, member) => evicted.push(`${group}/${member}`));
    lru.set('a', '1', 1);
    lru.set('a', '2', 1);
    lru.set('a', '3', 1);
    lru.set('b', '1', 1);
    lru.set('b', '2', 1);
    expect(lru.get('a', '1')).toBe(1); // a/2 is now a's least recently used
    lru.set('c', '1', 1);
    expect(evicted).toEqual(['a/2']);
    lru.set('c', '2', 1); // a, b and c hold 2 each: the first group to reach 2 gives
    lru.set('d', '1', 1);
    expect(evicted).toHaveLength(3);
    expect(lru.size).toBe(5);
    expect(lru.get('d', '1')).toBe(1);
  });

  it('set again replaces the value and counts once; delete removes, and an emptied group is gone', () => {
    const lru = new FairLru<number>(3);
    lru.set('a', 'x', 1);
    lru.set('a', 'x', 2);
    expect(lru.size).toBe(1);
    expect(lru.get('a', 'x')).toBe(2);
    expect(lru.delete('a', 'x')).toBe(true);
    expect(lru.delete('a', 'x')).toBe(false);
    expect(lru.size).toBe(0);
    for (const m of ['1', '2', '3', '4']) lru.set('b', m, 1);
    expect(lru.size).toBe(3);
    expect(lru.get('b', '1')).toBeUndefined();
  });
});
