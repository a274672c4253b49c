import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { type Digest, digestHex, isDigest } from '../oci/digest.ts';
import { DigestMismatchError } from './errors.ts';

const SCAN_BATCH = 64;

export interface StoredBlob {
  readonly digest: Digest;
  readonly size: number;
  /** Last access (or modification) time, used to seed LRU order at start-up. */
  readonly usedAtMs: number;
}

/**
 * Content-addressed files on disk. Layout under the cache dir:
 *   blobs/sha256/<hex>       committed, verified content (blobs and manifests)
 *   media-types/sha256/<hex> media type of a cached manifest
 *   tmp/<random>             fills in progress; removed at start-up
 * Knows nothing about HTTP or eviction policy.
 */
export class BlobStore {
  readonly root: string;
  readonly #blobs: string;
  readonly #types: string;
  readonly #tmp: string;

  constructor(root: string) {
    this.root = root;
    this.#blobs = join(root, 'blobs', 'sha256');
    this.#types = join(root, 'media-types', 'sha256');
    this.#tmp = join(root, 'tmp');
  }

  /** Creates the layout and removes temp files left by a crash. Returns how many were removed. */
  async init(): Promise<number> {
    await this.ensureLayout();
    const leftovers = await readdir(this.#tmp);
    await Promise.all(leftovers.map((name) => rm(join(this.#tmp, name), { force: true, recursive: true })));
    return leftovers.length;
  }

  /** Creates missing directories (e.g. the cache dir was deleted while running); touches no file. */
  async ensureLayout(): Promise<void> {
    await mkdir(this.#blobs, { recursive: true, mode: 0o700 });
    await mkdir(this.#types, { recursive: true, mode: 0o700 });
    await mkdir(this.#tmp, { recursive: true, mode: 0o700 });
  }

  blobPath(digest: Digest): string {
    return join(this.#blobs, digestHex(digest));
  }

  async createTemp(): Promise<{ path: string; handle: FileHandle }> {
    const path = join(this.#tmp, `${Date.now()}-${randomBytes(6).toString('hex')}`);
    const handle = await open(path, 'wx+', 0o600);
    return { path, handle };
  }

  /** Atomically moves a verified temp file into place. */
  async commit(tempPath: string, digest: Digest): Promise<void> {
    await rename(tempPath, this.blobPath(digest));
  }

  async remove(digest: Digest): Promise<void> {
    await unlink(this.blobPath(digest)).catch(ignoreMissing);
    await unlink(join(this.#types, digestHex(digest))).catch(ignoreMissing);
  }

  async removeTemp(tempPath: string): Promise<void> {
    if (tempPath === '') return;
    await unlink(tempPath).catch(ignoreMissing);
  }

  /** Size of a committed blob, or undefined when there is none. */
  async sizeOf(digest: Digest): Promise<number | undefined> {
    try {
      const info = await stat(this.blobPath(digest));
      return info.isFile() ? info.size : undefined;
    } catch (error) {
      ignoreMissing(error);
      return undefined;
    }
  }

  /** Lists committed blobs; names that are not a sha256 hex are ignored. */
  async scan(): Promise<StoredBlob[]> {
    const names = (await readdir(this.#blobs)).filter((name) => isDigest(`sha256:${name}`));
    const found: StoredBlob[] = [];
    // stat in parallel batches: 10,000 sequential round trips to the thread pool delay readiness.
    for (let i = 0; i < names.length; i += SCAN_BATCH) {
      const batch = await Promise.all(names.slice(i, i + SCAN_BATCH).map((name) => this.#statBlob(name)));
      for (const blob of batch) if (blob) found.push(blob);
    }
    return found;
  }

  async #statBlob(name: string): Promise<StoredBlob | undefined> {
    try {
      const info = await stat(join(this.#blobs, name));
      return info.isFile() ? { digest: `sha256:${name}` as Digest, size: info.size, usedAtMs: Math.max(info.atimeMs, info.mtimeMs) } : undefined;
    } catch (error) {
      ignoreMissing(error);
      return undefined;
    }
  }

  /** Re-hashes a committed blob; throws DigestMismatchError when the file no longer matches. */
  async verify(digest: Digest): Promise<void> {
    const handle = await open(this.blobPath(digest), 'r');
    try {
      const hash = createHash('sha256');
      for await (const chunk of handle.createReadStream({ highWaterMark: 1024 * 1024, autoClose: false })) {
        hash.update(chunk as Buffer);
      }
      const actual = `sha256:${hash.digest('hex')}`;
      if (actual !== digest) throw new DigestMismatchError(digest, actual);
    } finally {
      await handle.close();
    }
  }

  async writeMediaType(digest: Digest, mediaType: string): Promise<void> {
    const path = join(this.#types, digestHex(digest));
    const temp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
    await writeFile(temp, mediaType, { mode: 0o600 });
    await rename(temp, path);
  }

  async readMediaType(digest: Digest): Promise<string | undefined> {
    try {
      return (await readFile(join(this.#types, digestHex(digest)), 'utf8')).trim() || undefined;
    } catch (error) {
      ignoreMissing(error);
      return undefined;
    }
  }
}

export function ignoreMissing(error: unknown): void {
  if ((error as NodeJS.ErrnoException | undefined)?.code !== 'ENOENT') throw error;
}
