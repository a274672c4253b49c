import { LRUCache } from 'lru-cache';

/**
 * A least-recently-used map of at most `maxEntries` entries whose memory grows with what it holds.
 *
 * lru-cache's `max` allocates its index arrays for all `max` entries up front and fills them: a map
 * of 50,000 entries takes ~0.8 MiB before its first entry, and a mirror's access broker has five
 * (3.6 MiB of RSS per mirror, idle). Bounding the total size, each entry counting 1, is the same
 * bound, and those arrays grow as entries come.
 */
export function boundedLru<K extends NonNullable<unknown>, V extends NonNullable<unknown>>(maxEntries: number): LRUCache<K, V> {
  return new LRUCache<K, V>({ maxSize: maxEntries, sizeCalculation: () => 1 });
}
