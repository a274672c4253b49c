import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { MirrorConfig } from '../config/types.ts';
import { type Digest, parseDigest } from '../oci/digest.ts';
import { type TagRecord, TagStore, tagMaxAge } from './tag-store.ts';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

function mirror(registry: string, times: { tagTtlMs?: number; maxStaleMs: number }): MirrorConfig {
  return { registry, upstream: new URL('http://upstream.test/'), tagTtlMs: times.tagTtlMs ?? 0, maxStaleMs: times.maxStaleMs, repositoryPrefix: '', route: 'direct', auth: 'agent' };
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
    const store = new TagStore(dir, maxMemory);
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
