import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Digest, isDigest } from '../oci/digest.ts';

/** What upstream last said a tag points at. */
export interface TagRecord {
  readonly digest: Digest;
  readonly mediaType: string;
  readonly size: number;
  /** When upstream last confirmed this answer (ms since epoch). */
  readonly checkedAt: number;
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

function parseRecord(text: string): TagRecord | undefined {
  const value = JSON.parse(text) as Record<string, unknown>;
  const { digest, mediaType, size, checkedAt } = value;
  if (typeof digest !== 'string' || !isDigest(digest)) return undefined;
  if (typeof mediaType !== 'string' || typeof size !== 'number' || typeof checkedAt !== 'number') return undefined;
  return { digest, mediaType, size, checkedAt };
}
