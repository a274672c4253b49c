import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { MirrorConfig } from '../config/types.ts';
import { type Digest, isDigest } from '../oci/digest.ts';

/** How long records of registries no longer configured are kept when no mirror is configured at all. */
const ORPHAN_MAX_AGE_MS = 24 * 3_600_000;
/** A temp file this old belongs to no running write (a crash left it). */
const TEMP_MAX_AGE_MS = 3_600_000;
const SWEEP_BATCH = 64;

/** What upstream last said a tag points at. */
export interface TagRecord {
  readonly digest: Digest;
  readonly mediaType: string;
  readonly size: number;
  /** When upstream last confirmed this answer (ms since epoch). */
  readonly checkedAt: number;
}

/** How long a registry's tag records are kept, by registry. */
export type TagMaxAge = (registry: string) => number;

/**
 * A record is useful while it may still be served: as a fresh answer (tag_ttl) or a stale one
 * while upstream is down (max_stale). Records of registries no longer configured are kept as long
 * as the longest max_stale configured (the mirror may come back), or 24 h when there is none.
 */
export function tagMaxAge(mirrors: readonly MirrorConfig[]): TagMaxAge {
  const byRegistry = new Map(mirrors.map((m) => [m.registry, Math.max(m.maxStaleMs, m.tagTtlMs)]));
  const orphans = mirrors.length > 0 ? Math.max(...mirrors.map((m) => m.maxStaleMs)) : ORPHAN_MAX_AGE_MS;
  return (registry) => byRegistry.get(registry) ?? orphans;
}

/**
 * tag → digest answers, kept in memory and persisted (one small JSON file per tag under
 * `<cache_dir>/tags/`) so a restarted agent can still serve cached images while upstream is down.
 */
export class TagStore {
  readonly #dir: string;
  readonly #memory = new Map<string, TagRecord>();
  readonly #maxMemory: number;

  constructor(dir: string, maxMemory = 10_000) {
    this.#dir = dir;
    this.#maxMemory = maxMemory;
  }

  async init(): Promise<void> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
  }

  async get(registry: string, name: string, tag: string): Promise<TagRecord | undefined> {
    const key = tagKey(registry, name, tag);
    const known = this.#memory.get(key);
    if (known) return known;
    try {
      const parsed = parseRecord(await readFile(this.#file(key), 'utf8'));
      if (parsed) this.#remember(key, parsed);
      return parsed;
    } catch {
      return undefined;
    }
  }

  async set(registry: string, name: string, tag: string, record: TagRecord): Promise<void> {
    const key = tagKey(registry, name, tag);
    this.#remember(key, record);
    const file = this.#file(key);
    const temp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
    await writeFile(temp, JSON.stringify({ key, ...record }), { mode: 0o600 });
    await rename(temp, file);
  }

  /**
   * Removes records older than `maxAge` of their registry, from disk and memory, and files that
   * hold no record (corrupt, or temp files a crash left). A record written again meanwhile (a
   * newer answer in memory) is kept.
   */
  async sweep(maxAge: TagMaxAge, now = Date.now()): Promise<{ removed: number; kept: number }> {
    const expired = (key: string, record: TagRecord): boolean => now - record.checkedAt > maxAge(registryOf(key));
    for (const [key, record] of this.#memory) if (expired(key, record)) this.#memory.delete(key);
    let names: string[];
    try {
      names = await readdir(this.#dir);
    } catch {
      return { removed: 0, kept: 0 };
    }
    let removed = 0;
    let kept = 0;
    for (let i = 0; i < names.length; i += SWEEP_BATCH) {
      const verdicts = await Promise.all(names.slice(i, i + SWEEP_BATCH).map((name) => this.#sweepFile(name, expired, now)));
      for (const verdict of verdicts) {
        if (verdict === 'removed') removed += 1;
        else if (verdict === 'kept') kept += 1;
      }
    }
    return { removed, kept };
  }

  async #sweepFile(name: string, expired: (key: string, record: TagRecord) => boolean, now: number): Promise<'removed' | 'kept' | 'gone'> {
    const path = join(this.#dir, name);
    try {
      if (!name.endsWith('.json')) {
        // set() writes `<file>.<random>.tmp` and renames it at once: an old one is a crash's leftover.
        if (!name.endsWith('.tmp') || now - (await stat(path)).mtimeMs < TEMP_MAX_AGE_MS) return 'kept';
      } else {
        const stored = parseStored(await readFile(path, 'utf8'));
        if (stored && !expired(stored.key, stored.record)) return 'kept';
        // Checked after the last await: set() updates memory before it writes the file.
        const newer = stored && this.#memory.get(stored.key);
        if (stored && newer && newer.checkedAt > stored.record.checkedAt) return 'kept';
      }
      await unlink(path);
      return 'removed';
    } catch {
      // Removed or replaced meanwhile.
      return 'gone';
    }
  }

  #remember(key: string, record: TagRecord): void {
    if (this.#memory.size >= this.#maxMemory) {
      const oldest = this.#memory.keys().next();
      if (!oldest.done) this.#memory.delete(oldest.value);
    }
    this.#memory.delete(key);
    this.#memory.set(key, record);
  }

  #file(key: string): string {
    return join(this.#dir, `${createHash('sha256').update(key).digest('hex')}.json`);
  }
}

function tagKey(registry: string, name: string, tag: string): string {
  return `${registry}/${name}:${tag}`;
}

function registryOf(key: string): string {
  return key.slice(0, key.indexOf('/'));
}

/** A record file with the key it was written under; undefined when it is not one (corrupt). */
function parseStored(text: string): { key: string; record: TagRecord } | undefined {
  try {
    const value = JSON.parse(text) as unknown;
    const record = recordOf(value);
    const key = (value as { key?: unknown }).key;
    return record && typeof key === 'string' && key.includes('/') ? { key, record } : undefined;
  } catch {
    return undefined;
  }
}

function parseRecord(text: string): TagRecord | undefined {
  return recordOf(JSON.parse(text));
}

function recordOf(value: unknown): TagRecord | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const { digest, mediaType, size, checkedAt } = value as Record<string, unknown>;
  if (typeof digest !== 'string' || !isDigest(digest)) return undefined;
  if (typeof mediaType !== 'string' || typeof size !== 'number' || typeof checkedAt !== 'number') return undefined;
  return { digest, mediaType, size, checkedAt };
}
