import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { MirrorConfig } from '../config/types.ts';
import { type Digest, parseDigest } from '../oci/digest.ts';
import { type TagRecord, TagStore, type TagStoreOptions, tagMaxAge } from './tag-store.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

function mirror(registry: string, times: { tagTtlMs?: number; maxStaleMs: number }): MirrorConfig {
  return { registry, upstream: new URL('http://upstream.test/'), tagTtlMs: times.tagTtlMs ?? 0, maxStaleMs: times.maxStaleMs, repositoryPrefix: '', route: 'direct', auth: 'agent', mode: 'online', preload: [], preloadIntervalMs: 900_000, budget: {} };
}

function digestOf(label: string): Digest {
  return parseDigest(`sha256:${createHash('sha256').update(label).digest('hex')}`);
}

const INDEX = 'application/vnd.oci.image.index.v1+json';

function record(label: string, checkedAt = 1_700_000_000_000): TagRecord {
  return { digest: digestOf(label), mediaType: INDEX, size: label.length * 100, checkedAt };
}

describe('TagStore', () => {
  let root: string;
  let dir: string;

  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'rpa-tag-store-'));
    dir = join(root, 'tags');
  });

  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  async function newStore(maxMemory?: number): Promise<TagStore> {
    return newStoreWith(maxMemory === undefined ? {} : { maxMemory });
  }

  async function newStoreWith(options: TagStoreOptions): Promise<TagStore> {
    const store = new TagStore(dir, options);
    await store.init();
    return store;
  }

  /** Overwrites the single file the store has written. */
  async function overwriteOnlyFile(text: string): Promise<void> {
    const files = await readdir(dir);
    expect(files).toHaveLength(1);
    await writeFile(join(dir, files[0]!), text);
  }

  it('returns undefined for an unknown tag', async () => {
    const store = await newStore();
    expect(await store.get('docker.io', 'library/alpine', '3.20')).toBeUndefined();
  });

  it('returns what was set, per registry, name and tag', async () => {
    const store = await newStore();
    const cases: Array<[string, string, string, TagRecord]> = [
      ['docker.io', 'library/alpine', '3.20', record('a')],
      ['docker.io', 'library/alpine', '3.21', record('b')],
      ['docker.io', 'library/busybox', '3.20', record('c')],
      ['ghcr.io', 'library/alpine', '3.20', record('d')],
      ['registry.corp.example:5000', 'team/app', 'latest', record('e')],
    ];
    for (const [registry, name, tag, value] of cases) await store.set(registry, name, tag, value);
    for (const [registry, name, tag, value] of cases) expect(await store.get(registry, name, tag)).toEqual(value);
  });

  it('replaces an earlier answer', async () => {
    const store = await newStore();
    await store.set('docker.io', 'library/alpine', 'latest', record('old', 1));
    await store.set('docker.io', 'library/alpine', 'latest', record('new', 2));
    expect(await store.get('docker.io', 'library/alpine', 'latest')).toEqual(record('new', 2));
    expect(await (await newStore()).get('docker.io', 'library/alpine', 'latest')).toEqual(record('new', 2));
  });

  it('persists across instances, one file per tag, with no temp files left', async () => {
    const first = await newStore();
    await first.set('docker.io', 'library/alpine', '3.20', record('a'));
    await first.set('quay.io', 'org/tool', 'v1', record('b'));
    const files = await readdir(dir);
    expect(files).toHaveLength(2);
    for (const file of files) expect(file).toMatch(/^[0-9a-f]{64}\.json$/);

    const second = await newStore();
    expect(await second.get('docker.io', 'library/alpine', '3.20')).toEqual(record('a'));
    expect(await second.get('quay.io', 'org/tool', 'v1')).toEqual(record('b'));
    expect(await second.get('quay.io', 'org/tool', 'v2')).toBeUndefined();
  });

  it.each([
    ['truncated JSON', '{"digest":"sha256:'],
    ['not JSON', 'garbage'],
    ['empty file', ''],
    ['JSON null', 'null'],
    ['JSON array', '[]'],
    ['invalid digest', JSON.stringify({ ...record('a'), digest: 'sha256:nothex' })],
    ['upper-case digest', JSON.stringify({ ...record('a'), digest: record('a').digest.toUpperCase() })],
    ['missing media type', JSON.stringify({ digest: record('a').digest, size: 1, checkedAt: 1 })],
    ['size as a string', JSON.stringify({ ...record('a'), size: '100' })],
    ['checkedAt missing', JSON.stringify({ digest: record('a').digest, mediaType: INDEX, size: 1 })],
  ])('ignores a corrupt file (%s)', async (_label, text) => {
    await (await newStore()).set('docker.io', 'library/alpine', '3.20', record('a'));
    await overwriteOnlyFile(text);
    const restarted = await newStore();
    expect(await restarted.get('docker.io', 'library/alpine', '3.20')).toBeUndefined();
    // A later answer replaces the corrupt file.
    await restarted.set('docker.io', 'library/alpine', '3.20', record('b'));
    expect(await (await newStore()).get('docker.io', 'library/alpine', '3.20')).toEqual(record('b'));
  });

  it('answers from memory without reading the file again', async () => {
    const store = await newStore();
    await store.set('docker.io', 'library/alpine', '3.20', record('a'));
    await overwriteOnlyFile('garbage');
    expect(await store.get('docker.io', 'library/alpine', '3.20')).toEqual(record('a'));
  });

  it('bounds memory: the oldest tag is forgotten and read from disk again', async () => {
    const store = await newStore(2);
    await store.set('docker.io', 'app', 'a', record('a'));
    await overwriteOnlyFile('garbage');
    expect(await store.get('docker.io', 'app', 'a')).toEqual(record('a'));
    await store.set('docker.io', 'app', 'b', record('b'));
    await store.set('docker.io', 'app', 'c', record('c'));
    // "a" left memory; its file on disk is the corrupt one.
    expect(await store.get('docker.io', 'app', 'a')).toBeUndefined();
    expect(await store.get('docker.io', 'app', 'b')).toEqual(record('b'));
    expect(await store.get('docker.io', 'app', 'c')).toEqual(record('c'));
    expect(await (await newStore()).get('docker.io', 'app', 'b')).toEqual(record('b'));
  });

  it('returns undefined when its directory has gone', async () => {
    const store = await newStore();
    await rm(dir, { recursive: true });
    expect(await store.get('docker.io', 'library/alpine', '3.20')).toBeUndefined();
  });

  describe('bounds on disk', () => {
    const tags = (store: TagStore, names: readonly string[]): Promise<Array<TagRecord | undefined>> => Promise.all(names.map((tag) => store.get('a.test', 'app', tag)));

    it('keeps at most maxFiles records on disk, removing the least recently written first', async () => {
      const store = await newStoreWith({ maxFiles: 3 });
      await store.loaded();
      for (const tag of ['t1', 't2', 't3', 't4', 't5']) await store.set('a.test', 'app', tag, record(tag));
      expect(await readdir(dir)).toHaveLength(3);
      expect((await tags(await newStore(), ['t1', 't2', 't3', 't4', 't5'])).map(Boolean)).toEqual([false, false, true, true, true]);
      // Written again, t3 is the newest: t4 goes next.
      await store.set('a.test', 'app', 't3', record('t3 again'));
      await store.set('a.test', 'app', 't6', record('t6'));
      expect((await tags(await newStore(), ['t3', 't4', 't5', 't6'])).map(Boolean)).toEqual([true, false, true, true]);
      // Memory still answers for what left the disk (until it leaves memory too).
      expect(await store.get('a.test', 'app', 't1')).toEqual(record('t1'));
    });

    it('never trims imported records, written by an importer or found at start-up: pull traffic cannot erase an isolated site\'s imports', async () => {
      const importer = await newStore();
      for (const tag of ['i1', 'i2']) await importer.set('a.test', 'app', tag, { ...record(tag), imported: true });
      const store = await newStoreWith({ maxFiles: 2 });
      await store.loaded();
      await store.set('a.test', 'app', 'i3', { ...record('i3'), imported: true });
      for (const tag of ['t1', 't2', 't3', 't4']) await store.set('a.test', 'app', tag, record(tag));
      // Two pulled records (the bound) besides every imported one.
      expect(await readdir(dir)).toHaveLength(5);
      const fresh = await newStore();
      expect((await Promise.all(['i1', 'i2', 'i3', 't1', 't2', 't3', 't4'].map((tag) => fresh.get('a.test', 'app', tag)))).map(Boolean)).toEqual([true, true, true, false, false, true, true]);
      // After a restart, too: the imported files found at start-up are read before any is trimmed.
      const restarted = await newStoreWith({ maxFiles: 2 });
      await restarted.loaded();
      await restarted.set('a.test', 'app', 't5', record('t5'));
      expect((await Promise.all(['i1', 'i2', 'i3', 't3', 't4', 't5'].map((tag) => newStore().then((s) => s.get('a.test', 'app', tag))))).map(Boolean)).toEqual([true, true, true, false, true, true]);
    });

    it('rebuilds the order from the files at start-up, oldest modification first, in the background', async () => {
      const first = await newStore();
      for (const tag of ['r1', 'r2', 'r3', 'r4']) await first.set('a.test', 'app', tag, record(tag));
      // Modification times say: r2, r4, r1, r3 (oldest first).
      const files = new Map<string, string>();
      for (const name of await readdir(dir)) files.set((JSON.parse(await readFile(join(dir, name), 'utf8')) as { key: string }).key, name);
      const ages: Array<[string, number]> = [['r2', 4], ['r4', 3], ['r1', 2], ['r3', 1]];
      for (const [tag, hours] of ages) {
        const when = new Date(Date.now() - hours * HOUR);
        await utimes(join(dir, files.get(`a.test/app:${tag}`)!), when, when);
      }
      const restarted = await newStoreWith({ maxFiles: 5 });
      // Written while the order is being rebuilt: the newest whatever the scan finds.
      await restarted.set('a.test', 'app', 'fresh', record('fresh'));
      await restarted.loaded();
      await restarted.set('a.test', 'app', 'n1', record('n1'));
      expect((await tags(await newStore(), ['r1', 'r2', 'r3', 'r4', 'fresh', 'n1'])).map(Boolean)).toEqual([true, false, true, true, true, true]);
      await restarted.set('a.test', 'app', 'n2', record('n2'));
      await restarted.set('a.test', 'app', 'n3', record('n3'));
      expect((await tags(await newStore(), ['r1', 'r2', 'r3', 'r4', 'fresh', 'n1', 'n2', 'n3'])).map(Boolean)).toEqual([false, false, true, false, true, true, true, true]);
      expect(await readdir(dir)).toHaveLength(5);
    });

    it('keeps records in memory only while the free-space reserve is reached, and says so once per change', async () => {
      let space = false;
      const asked: number[] = [];
      const changes: boolean[] = [];
      const store = await newStoreWith({
        space: async (bytes) => {
          asked.push(bytes);
          return space ? { release: () => undefined } : undefined;
        },
        onPersisting: (persisting) => changes.push(persisting),
      });
      await store.set('a.test', 'app', 'a', record('a'));
      await store.set('a.test', 'app', 'b', record('b'));
      expect(await readdir(dir)).toEqual([]);
      expect(await store.get('a.test', 'app', 'a')).toEqual(record('a'));
      expect(await store.get('a.test', 'app', 'b')).toEqual(record('b'));
      expect(changes).toEqual([false]);
      // A record file takes at least a block, whatever its length.
      expect(Math.min(...asked)).toBeGreaterThanOrEqual(4096);
      // Resuming asks for a margin on top, so a disk at the edge does not flip back and forth.
      expect(asked.at(-1)).toBeGreaterThan(1024 * 1024);
      space = true;
      await store.set('a.test', 'app', 'c', record('c'));
      await store.set('a.test', 'app', 'd', record('d'));
      expect(await readdir(dir)).toHaveLength(2);
      expect(changes).toEqual([false, true]);
      expect(await (await newStore()).get('a.test', 'app', 'c')).toEqual(record('c'));
    });

    it('forgets the files the sweep removed', async () => {
      const store = await newStoreWith({ maxFiles: 2 });
      await store.loaded();
      const NOW = 1_800_000_000_000;
      await store.set('a.test', 'app', 'old', record('old', NOW - 2 * HOUR));
      await store.set('a.test', 'app', 'new', record('new', NOW));
      expect(await store.sweep(tagMaxAge([mirror('a.test', { maxStaleMs: HOUR })]), NOW)).toEqual({ removed: 1, kept: 1 });
      // Room for one more without removing "new".
      await store.set('a.test', 'app', 'newer', record('newer', NOW));
      expect((await tags(await newStore(), ['new', 'newer'])).map(Boolean)).toEqual([true, true]);
    });
  });

  describe('sweep', () => {
    const NOW = 1_800_000_000_000;

    it('removes records older than their mirror allows, from disk and memory, and keeps the rest', async () => {
      const store = await newStore();
      const maxAge = tagMaxAge([mirror('a.test', { maxStaleMs: HOUR }), mirror('b.test', { maxStaleMs: DAY })]);
      await store.set('a.test', 'app', 'old', record('a-old', NOW - 2 * HOUR));
      await store.set('a.test', 'app', 'new', record('a-new', NOW - 30 * MINUTE));
      await store.set('b.test', 'app', 'old', record('b-old', NOW - 2 * DAY));
      await store.set('b.test', 'app', 'new', record('b-new', NOW - 2 * HOUR));
      expect(await store.sweep(maxAge, NOW)).toEqual({ removed: 2, kept: 2 });
      expect(await readdir(dir)).toHaveLength(2);
      for (const reader of [store, await newStore()]) {
        expect(await reader.get('a.test', 'app', 'old')).toBeUndefined();
        expect(await reader.get('a.test', 'app', 'new')).toEqual(record('a-new', NOW - 30 * MINUTE));
        expect(await reader.get('b.test', 'app', 'old')).toBeUndefined();
        expect(await reader.get('b.test', 'app', 'new')).toEqual(record('b-new', NOW - 2 * HOUR));
      }
      // Nothing left to remove.
      expect(await store.sweep(maxAge, NOW)).toEqual({ removed: 0, kept: 2 });
    });

    it('keeps a record as long as the longer of tag_ttl and max_stale', async () => {
      const store = await newStore();
      const maxAge = tagMaxAge([mirror('a.test', { tagTtlMs: 3 * HOUR, maxStaleMs: HOUR })]);
      await store.set('a.test', 'app', 'v1', record('v1', NOW - 2 * HOUR));
      await store.set('a.test', 'app', 'v2', record('v2', NOW - 4 * HOUR));
      expect(await store.sweep(maxAge, NOW)).toEqual({ removed: 1, kept: 1 });
      expect(await store.get('a.test', 'app', 'v1')).toBeDefined();
      expect(await store.get('a.test', 'app', 'v2')).toBeUndefined();
    });

    it('expires records of registries no longer configured after the longest max_stale, or 24 h without mirrors', async () => {
      expect(tagMaxAge([mirror('a.test', { maxStaleMs: HOUR }), mirror('b.test', { maxStaleMs: 6 * HOUR })])('gone.test')).toBe(6 * HOUR);
      expect(tagMaxAge([])('gone.test')).toBe(DAY);
      const store = await newStore();
      await store.set('gone.test', 'app', 'recent', record('recent', NOW - 5 * HOUR));
      await store.set('gone.test', 'app', 'old', record('old', NOW - 7 * HOUR));
      await store.set('gone.test', 'app', 'older', record('older', NOW - 25 * HOUR));
      expect(await store.sweep(tagMaxAge([mirror('a.test', { maxStaleMs: HOUR }), mirror('b.test', { maxStaleMs: 6 * HOUR })]), NOW)).toEqual({ removed: 2, kept: 1 });
      expect(await store.get('gone.test', 'app', 'recent')).toBeDefined();
      await store.set('gone.test', 'app', 'old', record('old', NOW - 7 * HOUR));
      expect(await store.sweep(tagMaxAge([]), NOW)).toEqual({ removed: 0, kept: 2 });
    });

    it('removes corrupt files and old temp files, and keeps a temp file being written', async () => {
      const store = await newStore();
      await store.set('a.test', 'app', 'v1', record('v1', NOW));
      await writeFile(join(dir, `${'0'.repeat(64)}.json`), 'garbage');
      await writeFile(join(dir, `${'1'.repeat(64)}.json`), JSON.stringify(record('no key', NOW)));
      const crashed = join(dir, `${'2'.repeat(64)}.json.abcd1234.tmp`);
      await writeFile(crashed, '{');
      const old = new Date(Date.now() - 2 * HOUR);
      await utimes(crashed, old, old);
      const writing = join(dir, `${'3'.repeat(64)}.json.abcd1234.tmp`);
      await writeFile(writing, '{');
      expect(await store.sweep(tagMaxAge([mirror('a.test', { maxStaleMs: HOUR })]), Date.now())).toEqual({ removed: 3, kept: 2 });
      expect((await readdir(dir)).sort()).toEqual([expect.stringMatching(/^[0-9a-f]{64}\.json$/), `${'3'.repeat(64)}.json.abcd1234.tmp`].sort());
    });

    it('keeps a file whose tag was answered again since it was read (a newer record in memory)', async () => {
      const store = await newStore();
      await store.set('a.test', 'app', 'v1', record('new', NOW));
      // The file holds an expired answer (as if read before set() replaced it).
      const [file] = await readdir(dir);
      const stale = JSON.parse(await readFile(join(dir, file!), 'utf8')) as Record<string, unknown>;
      await writeFile(join(dir, file!), JSON.stringify({ ...stale, checkedAt: NOW - 2 * HOUR }));
      expect(await store.sweep(tagMaxAge([mirror('a.test', { maxStaleMs: HOUR })]), NOW)).toEqual({ removed: 0, kept: 1 });
      expect(await readdir(dir)).toEqual([file]);
    });

    it('does nothing when its directory has gone', async () => {
      const store = await newStore();
      await rm(dir, { recursive: true });
      expect(await store.sweep(tagMaxAge([]), NOW)).toEqual({ removed: 0, kept: 0 });
    });
  });
});
