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
/**
 * Record files kept at most. Every tag upstream answers becomes a file, and an upstream that
 * answers any tag lets a client create as many as it asks for; 10,000 records (~40 MiB of
 * blocks at worst) cover the tags a node really pulls.
 */
const MAX_FILES = 10_000;
/** What a small file takes on disk: a whole block on most file systems, whatever its length. */
const MIN_FILE_BYTES = 4096;
/**
 * Once records are kept in memory only, writing resumes when this much more than a record is free:
 * a disk at the edge of its reserve does not flip between the two (nor the log between its lines).
 */
const RESUME_MARGIN_BYTES = 1024 * 1024;

/** What upstream last said a tag points at. */
export interface TagRecord {
  readonly digest: Digest;
  readonly mediaType: string;
  readonly size: number;
  /** When upstream last confirmed this answer (ms since epoch); for an import, when it was imported. */
  readonly checkedAt: number;
  /**
   * The answer came from `registry-proxy-agent import`, not from upstream: never swept (an isolated
   * site has nothing to refresh it from), and what it names is pinned in the cache.
   */
  readonly imported?: true;
}

/** A record with the tag it answers for (see `TagStore.list`). */
export interface ListedTag {
  readonly registry: string;
  readonly name: string;
  readonly tag: string;
  readonly record: TagRecord;
}

/** How long a registry's tag records are kept, by registry. */
export type TagMaxAge = (registry: string) => number;

/**
 * A record is useful while it may still be served: as a fresh answer (tag_ttl) or a stale one
 * while upstream is down (max_stale). Records of registries no longer configured are kept as long
 * as the longest max_stale configured (the mirror may come back), or 24 h when there is none.
 */
export function tagMaxAge(mirrors: readonly MirrorConfig[]): TagMaxAge {
  // An offline mirror has no upstream to answer again: its records are all it has.
  const byRegistry = new Map(mirrors.map((m) => [m.registry, m.mode === 'offline' ? Number.POSITIVE_INFINITY : Math.max(m.maxStaleMs, m.tagTtlMs)]));
  const online = mirrors.filter((m) => m.mode !== 'offline');
  const orphans = online.length > 0 ? Math.max(...online.map((m) => m.maxStaleMs)) : ORPHAN_MAX_AGE_MS;
  return (registry) => byRegistry.get(registry) ?? orphans;
}

/** Room granted on the cache's file system for one write; released once it is on disk. */
export interface SpaceGrant {
  release(): void;
}

export interface TagStoreOptions {
  /** Records kept in memory (default 10,000). */
  readonly maxMemory?: number;
  /** Record files kept on disk; the least recently written go first (default 10,000). */
  readonly maxFiles?: number;
  /**
   * Room for `bytes` more above the cache file system's free-space reserve, or undefined when the
   * reserve is reached (default: always room). The cache's own check, so fills and tags share it.
   */
  readonly space?: (bytes: number) => Promise<SpaceGrant | undefined>;
  /** Told once each time persisting stops (the reserve is reached) and when it resumes. */
  readonly onPersisting?: (persisting: boolean) => void;
}

/**
 * tag → digest answers, kept in memory and persisted (one small JSON file per tag under
 * `<cache_dir>/tags/`) so a restarted agent can still serve cached images while upstream is down.
 * The files are bounded: at most `maxFiles`, the least recently written removed first (the order
 * is rebuilt from their modification times at start-up), and none is written while the cache's
 * file system is at its free-space reserve (the answer is then kept in memory only).
 */
export class TagStore {
  readonly #dir: string;
  readonly #memory = new Map<string, TagRecord>();
  readonly #maxMemory: number;
  readonly #maxFiles: number;
  readonly #space: (bytes: number) => Promise<SpaceGrant | undefined>;
  readonly #onPersisting: (persisting: boolean) => void;
  /** Record file names on disk, least recently written first (a Set keeps insertion order). */
  #files = new Set<string>();
  /** Record files of imported tags: kept for good, outside the order and the bound (see #trim). */
  readonly #importedFiles = new Set<string>();
  #loaded: Promise<void> = Promise.resolve();
  #persisting = true;

  constructor(dir: string, options: TagStoreOptions = {}) {
    this.#dir = dir;
    this.#maxMemory = options.maxMemory ?? 10_000;
    this.#maxFiles = options.maxFiles ?? MAX_FILES;
    this.#space = options.space ?? (async () => ({ release: () => undefined }));
    this.#onPersisting = options.onPersisting ?? (() => undefined);
  }

  /** Creates the directory; the order of the files already there is rebuilt in the background (see `loaded`). */
  async init(): Promise<void> {
    await mkdir(this.#dir, { recursive: true, mode: 0o700 });
    this.#loaded = this.#loadOrder();
  }

  /** Resolves once the files found at start-up are in the order (tests; never rejects). */
  loaded(): Promise<void> {
    return this.#loaded;
  }

  async get(registry: string, name: string, tag: string): Promise<TagRecord | undefined> {
    const key = tagKey(registry, name, tag);
    const known = this.#memory.get(key);
    if (known) return known;
    try {
      const parsed = parseRecord(await readFile(join(this.#dir, fileName(key)), 'utf8'));
      if (parsed) this.#remember(key, parsed);
      return parsed;
    } catch {
      return undefined;
    }
  }

  /**
   * Remembers an answer and persists it, unless the cache's file system is at its free-space
   * reserve (then memory only). Rejects only when writing the file fails.
   */
  async set(registry: string, name: string, tag: string, record: TagRecord): Promise<void> {
    const key = tagKey(registry, name, tag);
    this.#remember(key, record);
    const text = JSON.stringify({ key, ...record });
    const need = Math.max(MIN_FILE_BYTES, Buffer.byteLength(text));
    const grant = await this.#space(this.#persisting ? need : need + RESUME_MARGIN_BYTES);
    this.#persistingNow(grant !== undefined);
    if (!grant) return;
    const recordFile = fileName(key);
    const file = join(this.#dir, recordFile);
    const temp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
    // Out of the order while it is rewritten: trimming must not pick the file being replaced.
    this.#files.delete(recordFile);
    try {
      await writeFile(temp, text, { mode: 0o600 });
      await rename(temp, file);
    } finally {
      grant.release();
    }
    // The newest (moved to the end, should the start-up order have put it back meanwhile).
    this.#files.delete(recordFile);
    if (record.imported === true) {
      this.#importedFiles.add(recordFile);
      return;
    }
    this.#importedFiles.delete(recordFile);
    this.#files.add(recordFile);
    await this.#trim();
  }

  #persistingNow(persisting: boolean): void {
    if (this.#persisting === persisting) return;
    this.#persisting = persisting;
    this.#onPersisting(persisting);
  }

  /**
   * Removes the least recently written files beyond maxFiles. Imported records are never removed
   * (an isolated site cannot fetch them again): a file picked for removal is read first, and an
   * imported one leaves the order for good instead, so pull traffic cannot trim imports away.
   */
  async #trim(): Promise<void> {
    for (;;) {
      const excess: string[] = [];
      for (const name of this.#files) {
        if (this.#files.size - excess.length <= this.#maxFiles) break;
        excess.push(name);
      }
      if (excess.length === 0) return;
      for (const name of excess) this.#files.delete(name);
      await Promise.all(
        excess.map(async (name) => {
          if (await this.#isImported(name)) this.#importedFiles.add(name);
          else await unlink(join(this.#dir, name)).catch(() => undefined);
        }),
      );
    }
  }

  async #isImported(name: string): Promise<boolean> {
    if (this.#importedFiles.has(name)) return true;
    try {
      return parseRecord(await readFile(join(this.#dir, name), 'utf8'))?.imported === true;
    } catch {
      return false;
    }
  }

  /**
   * The files found at start-up, oldest modification first, ahead of any written since (those
   * are newer); then trimmed to maxFiles.
   */
  async #loadOrder(): Promise<void> {
    let names: string[];
    try {
      names = (await readdir(this.#dir)).filter((name) => RECORD_FILE.test(name));
    } catch {
      return;
    }
    const found: Array<{ name: string; mtimeMs: number }> = [];
    for (let i = 0; i < names.length; i += SWEEP_BATCH) {
      const batch = await Promise.all(
        names.slice(i, i + SWEEP_BATCH).map((name) =>
          stat(join(this.#dir, name)).then(
            (info) => ({ name, mtimeMs: info.mtimeMs }),
            () => undefined,
          ),
        ),
      );
      for (const file of batch) if (file) found.push(file);
    }
    found.sort((a, b) => a.mtimeMs - b.mtimeMs);
    const written = this.#files;
    this.#files = new Set([...found.map((file) => file.name).filter((name) => !written.has(name)), ...written]);
    await this.#trim();
  }

  /**
   * Removes records older than `maxAge` of their registry, from disk and memory, and files that
   * hold no record (corrupt, or temp files a crash left). A record written again meanwhile (a
   * newer answer in memory) is kept.
   */
  async sweep(maxAge: TagMaxAge, now = Date.now()): Promise<{ removed: number; kept: number }> {
    const expired = (key: string, record: TagRecord): boolean => record.imported !== true && now - record.checkedAt > maxAge(registryOf(key));
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
      this.#files.delete(name);
      return 'removed';
    } catch {
      // Removed or replaced meanwhile.
      return 'gone';
    }
  }

  /**
   * Every record on disk (and in memory only), for `registry` or all: what imports and the offline
   * mode vouch for. Reads each file; meant for start-up and reloads, not for requests.
   */
  async list(registry?: string): Promise<ListedTag[]> {
    const found = new Map<string, TagRecord>();
    let names: string[] = [];
    try {
      names = (await readdir(this.#dir)).filter((name) => RECORD_FILE.test(name));
    } catch {
      // No directory yet: memory only.
    }
    for (let i = 0; i < names.length; i += SWEEP_BATCH) {
      const batch = await Promise.all(names.slice(i, i + SWEEP_BATCH).map((name) => readFile(join(this.#dir, name), 'utf8').then(parseStored, () => undefined)));
      for (const stored of batch) if (stored) found.set(stored.key, stored.record);
    }
    for (const [key, record] of this.#memory) {
      const onDisk = found.get(key);
      if (!onDisk || onDisk.checkedAt <= record.checkedAt) found.set(key, record);
    }
    const listed: ListedTag[] = [];
    for (const [key, record] of found) {
      const parts = splitKey(key);
      if (parts && (registry === undefined || parts.registry === registry)) listed.push({ ...parts, record });
    }
    return listed;
  }

  /** Forgets what is in memory: the next `get` reads the file (an import wrote new records under a running agent). */
  forgetMemory(): void {
    this.#memory.clear();
  }

  #remember(key: string, record: TagRecord): void {
    if (this.#memory.size >= this.#maxMemory) {
      const oldest = this.#memory.keys().next();
      if (!oldest.done) this.#memory.delete(oldest.value);
    }
    this.#memory.delete(key);
    this.#memory.set(key, record);
  }
}

const RECORD_FILE = /^[0-9a-f]{64}\.json$/;

function fileName(key: string): string {
  return `${createHash('sha256').update(key).digest('hex')}.json`;
}

function tagKey(registry: string, name: string, tag: string): string {
  return `${registry}/${name}:${tag}`;
}

function registryOf(key: string): string {
  return key.slice(0, key.indexOf('/'));
}

/** `registry/name:tag` back into its parts (the tag is after the last ':'; names hold none). */
function splitKey(key: string): { registry: string; name: string; tag: string } | undefined {
  const slash = key.indexOf('/');
  const colon = key.lastIndexOf(':');
  if (slash <= 0 || colon <= slash + 1 || colon === key.length - 1) return undefined;
  return { registry: key.slice(0, slash), name: key.slice(slash + 1, colon), tag: key.slice(colon + 1) };
}

/** The key a record of `registry/name:tag` is stored under (the record file is the key's SHA-256). */
export function tagRecordFile(registry: string, name: string, tag: string): string {
  return fileName(tagKey(registry, name, tag));
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
  const { digest, mediaType, size, checkedAt, imported } = value as Record<string, unknown>;
  if (typeof digest !== 'string' || !isDigest(digest)) return undefined;
  if (typeof mediaType !== 'string' || typeof size !== 'number' || typeof checkedAt !== 'number') return undefined;
  return { digest, mediaType, size, checkedAt, ...(imported === true ? { imported: true as const } : {}) };
}
