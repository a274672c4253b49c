import { createHash, randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { chown, mkdir, open, readdir, readFile, rm, statfs, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { BlobStore } from '../cache/blob-store.ts';
import { DiskReserve, type FreeSpace } from '../cache/disk-reserve.ts';
import type { AgentConfig, Platform } from '../config/types.ts';
import { TagStore, tagRecordFile } from '../mirror/tag-store.ts';
import { type Digest, digestHex } from '../oci/digest.ts';
import { MANIFEST_MAX_BYTES } from '../oci/media-types.ts';
import { manifestReferences } from '../oci/references.ts';
import { planDockerArchive } from './docker-archive.ts';
import { ImportAborted, ImportError } from './errors.ts';
import { type ImageName, targetText } from './names.ts';
import { planLayout } from './oci-layout.ts';
import { type ImagePlan, type PlannedContent, type PlannedEntry, errorText } from './plan.ts';
import { type Output, Progress, formatBytes } from './progress.ts';
import { openSource } from './source.ts';

/** Staging directories are `<cache_dir>/import-<pid>-<random>`: on the cache's file system (renames), not in `tmp/` (a starting agent empties it). */
const STAGING = /^import-(\d+)-[0-9a-f]{8}$/;

export interface ImportRequest {
  readonly source: string;
  readonly name?: ImageName;
  readonly platforms: readonly Platform[];
  readonly config: AgentConfig;
  readonly out: Output;
  readonly err: Output;
  /** SIGINT/SIGTERM: stop, remove the staging directory, write nothing more. */
  readonly signal: AbortSignal;
  /** Free space of the cache's file system (tests shrink it). */
  readonly freeSpace?: FreeSpace;
}

export interface ImportSummary {
  readonly imported: number;
  readonly failed: number;
  readonly aborted: boolean;
}

/**
 * `registry-proxy-agent import`: every image of SOURCE is planned (named, its manifests read and
 * verified), then imported one at a time, all or nothing: its new pieces are copied into a staging
 * directory while hashed and size-checked, and only when every piece verified are they renamed
 * into the cache and the tag records written. An image that fails leaves nothing of itself in the
 * cache; the others still import.
 */
export async function runImport(request: ImportRequest): Promise<ImportSummary> {
  const progress = new Progress(request.out, request.err);
  const { config } = request;
  const registries = { names: config.mirrors.map((m) => m.registry), source: config.source };
  const source = await openSource(request.source);
  let planned: PlannedEntry[];
  try {
    const options = { ...(request.name ? { name: request.name } : {}), platforms: request.platforms, registries, signal: request.signal };
    planned = source.format === 'docker-archive' ? await planDockerArchive(source, options) : await planLayout(source, options);
  } catch (error) {
    await source.close();
    // Interrupted while reading the manifests: nothing was staged or written yet.
    if (error instanceof ImportAborted) return { imported: 0, failed: 0, aborted: true };
    throw error;
  }
  let imported = 0;
  let failed = 0;
  let aborted = false;
  const store = new BlobStore(config.cacheDir);
  try {
    const plans: ImagePlan[] = [];
    for (const entry of planned) {
      if ('error' in entry) {
        failed += 1;
        progress.error(`${entry.image ?? entry.label}: refused: ${entry.error}`);
      } else plans.push(entry.plan);
    }
    if (plans.length > 0) {
      await store.ensureLayout();
      await removeStaleStaging(config.cacheDir);
      const tags = new TagStore(join(config.cacheDir, 'tags'));
      await tags.init();
      const owner = await ownerOf(config.cacheDir);
      const staging = await Staging.create(config.cacheDir);
      try {
        const cached = await store.scan();
        const context: Context = {
          store,
          tags,
          progress,
          signal: request.signal,
          owner,
          cacheMaxBytes: config.cacheMaxBytes,
          cachedBytes: cached.reduce((sum, blob) => sum + blob.size, 0),
          reserve: new DiskReserve(config.cacheDir, request.freeSpace),
          freeSpace: request.freeSpace ?? statfsFree,
          cacheDir: config.cacheDir,
        };
        for (const [i, plan] of plans.entries()) {
          if (request.signal.aborted) {
            aborted = true;
            break;
          }
          const name = plan.targets.map(targetText).join(', ');
          const dir = join(staging.dir, String(i));
          try {
            const result = await importImage(context, plan, dir);
            imported += 1;
            progress.result(
              `imported ${name} (${plan.root.digest}, ${plan.blobs.length + plan.manifests.length} pieces, ${formatBytes(result.newBytes)} new in the cache)${plan.notes.length > 0 ? `; ${plan.notes.join('; ')}` : ''}`,
            );
          } catch (error) {
            if (error instanceof ImportAborted) {
              aborted = true;
              progress.error(`${name}: interrupted: nothing of this image was written to the cache`);
              break;
            }
            failed += 1;
            progress.error(`${name}: refused: ${errorText(error)}; nothing of this image was written to the cache`);
          } finally {
            await rm(dir, { recursive: true, force: true });
          }
        }
      } finally {
        await staging.remove();
      }
      if (imported > 0) await warnPinBudget(store, tags, config.pinMaxBytes, progress);
    }
  } finally {
    await source.close();
  }
  const skipped = planned.length - imported - failed;
  progress.result(
    `${imported} image${imported === 1 ? '' : 's'} imported, ${failed} refused${skipped > 0 ? `, ${skipped} not imported (interrupted)` : ''} into ${config.cacheDir}`,
  );
  if (imported > 0) {
    progress.result('A running agent indexes the imported images after SIGHUP (kill -HUP <agent pid>) or a restart; an agent started later finds them at start-up.');
  }
  return { imported, failed, aborted };
}

interface Context {
  readonly store: BlobStore;
  readonly tags: TagStore;
  readonly progress: Progress;
  readonly signal: AbortSignal;
  readonly owner: { uid: number; gid: number } | undefined;
  readonly cacheMaxBytes: number;
  /** Bytes of the committed blobs, as scanned at the start plus what this run added. */
  cachedBytes: number;
  readonly reserve: DiskReserve;
  readonly freeSpace: FreeSpace;
  readonly cacheDir: string;
}

const statfsFree: FreeSpace = async (path) => {
  const fs = await statfs(path);
  return { free: fs.bavail * fs.bsize, total: fs.blocks * fs.bsize };
};

async function importImage(context: Context, plan: ImagePlan, dir: string): Promise<{ newBytes: number }> {
  const { store, progress } = context;
  const pieces = [...plan.blobs, ...plan.manifests];
  // A piece the cache holds at the right size is only read and hashed (the source must still be whole), not copied.
  const present = new Set<Digest>();
  for (const piece of pieces) if ((await store.sizeOf(piece.digest)) === piece.size) present.add(piece.digest);
  const newBytes = pieces.filter((p) => !present.has(p.digest)).reduce((sum, p) => sum + p.size, 0);
  await checkRoom(context, plan, newBytes);

  const name = plan.targets.map(targetText).join(', ');
  progress.startImage(name, pieces.reduce((sum, p) => sum + p.size, 0), pieces.length);
  await mkdir(dir, { mode: 0o700 });
  for (const piece of pieces) {
    const state = present.has(piece.digest) ? 'already cached' : 'copied';
    await stagePiece(context, piece, present.has(piece.digest) ? undefined : join(dir, digestHex(piece.digest)));
    progress.verified(piece.what, piece.digest, piece.size, state);
  }
  await commit(context, plan, dir, present);
  context.cachedBytes += newBytes;
  return { newBytes };
}

/**
 * What is checked before anything is written: the image's new bytes must fit under
 * `cache_max_bytes` next to everything the cache holds, and on the cache's file system above the
 * free-space reserve the agent keeps for the node (5%, at most 1 GiB).
 */
async function checkRoom(context: Context, plan: ImagePlan, newBytes: number): Promise<void> {
  const total = [...plan.blobs, ...plan.manifests].reduce((sum, p) => sum + p.size, 0);
  if (context.cachedBytes + newBytes > context.cacheMaxBytes) {
    throw new ImportError(
      `not enough room under cache_max_bytes (${formatBytes(context.cacheMaxBytes)}): the image is ${formatBytes(total)}, ${formatBytes(newBytes)} of it not in the cache yet, and the cache holds ${formatBytes(context.cachedBytes)}; raise cache_max_bytes or import into an emptier cache`,
    );
  }
  const share = context.reserve.open();
  try {
    if (!(await share.request(newBytes))) {
      const space = await context.freeSpace(context.cacheDir).catch(() => undefined);
      throw new ImportError(
        `not enough free space on the cache's file system: ${formatBytes(newBytes)} to write, ${space ? `${formatBytes(space.free)} free of ${formatBytes(space.total)}, ` : ''}and the agent keeps 5% of it (at most 1 GiB) free for the node`,
      );
    }
  } finally {
    share.close();
  }
}

/** Reads one piece, hashing and counting it; writes it to `path` unless it is already cached. Throws on any mismatch. */
async function stagePiece(context: Context, piece: PlannedContent, path: string | undefined): Promise<void> {
  if (piece.file && piece.file.size !== piece.size) {
    throw new ImportError(`${piece.what} ${piece.digest} is corrupt: expected ${piece.size} bytes, the source holds ${piece.file.size}`);
  }
  const handle = path === undefined ? undefined : await open(path, 'wx', 0o600);
  const hash = createHash('sha256');
  let length = 0;
  const stream = piece.bytes ? undefined : piece.file?.open();
  try {
    const chunks: AsyncIterable<Buffer> | Iterable<Buffer> = stream ?? (piece.bytes ? [piece.bytes] : []);
    for await (const chunk of chunks) {
      if (context.signal.aborted) throw new ImportAborted();
      length += chunk.length;
      if (length > piece.size) {
        throw new ImportError(`${piece.what} ${piece.digest} is corrupt: expected ${piece.size} bytes with digest ${piece.digest}, found more than ${piece.size} bytes`);
      }
      hash.update(chunk);
      if (handle) await writeAll(handle, chunk);
      context.progress.advance(chunk.length);
    }
    const actual = `sha256:${hash.digest('hex')}`;
    if (length !== piece.size || actual !== piece.digest) {
      throw new ImportError(`${piece.what} ${piece.digest} is corrupt: expected ${piece.size} bytes with digest ${piece.digest}, found ${length} bytes with digest ${actual}`);
    }
    if (handle) {
      await handle.sync();
      if (context.owner) await handle.chown(context.owner.uid, context.owner.gid);
    }
  } finally {
    stream?.destroy();
    await handle?.close();
  }
}

async function writeAll(handle: Awaited<ReturnType<typeof open>>, chunk: Buffer): Promise<void> {
  for (let done = 0; done < chunk.length; ) {
    const { bytesWritten } = await handle.write(chunk, done, chunk.length - done);
    done += bytesWritten;
  }
}

/**
 * Every piece verified: renamed into the cache (blobs, then manifests with their media types,
 * children before the root), then the tag records. A failure on the way takes back what this image
 * added, so the cache holds all of the image or nothing of it.
 */
async function commit(context: Context, plan: ImagePlan, dir: string, present: ReadonlySet<Digest>): Promise<void> {
  const { store, tags } = context;
  for (const digest of present) {
    const piece = [...plan.blobs, ...plan.manifests].find((p) => p.digest === digest);
    if (piece && (await store.sizeOf(digest)) !== piece.size) {
      throw new ImportError(`${piece.what} ${digest} was in the cache when the import started and is gone now (evicted by a running agent?); run the import again`);
    }
  }
  const added: Digest[] = [];
  const written: Array<{ registry: string; repository: string; tag: string }> = [];
  try {
    for (const blob of plan.blobs) {
      if (present.has(blob.digest) || added.includes(blob.digest)) continue;
      await store.commit(join(dir, digestHex(blob.digest)), blob.digest);
      added.push(blob.digest);
    }
    for (const manifest of plan.manifests) {
      const mediaType = manifest.mediaType ?? '';
      if (present.has(manifest.digest)) {
        if ((await store.readMediaType(manifest.digest)) === undefined) await writeMediaType(context, manifest.digest, mediaType);
        continue;
      }
      if (added.includes(manifest.digest)) continue;
      await writeMediaType(context, manifest.digest, mediaType);
      await store.commit(join(dir, digestHex(manifest.digest)), manifest.digest);
      added.push(manifest.digest);
    }
    await syncDir(join(store.root, 'blobs', 'sha256'));
    await syncDir(join(store.root, 'media-types', 'sha256'));
    for (const target of plan.targets) {
      await tags.set(target.registry, target.repository, target.tag, {
        digest: plan.root.digest,
        mediaType: plan.root.mediaType,
        size: plan.root.size,
        checkedAt: Date.now(),
        imported: true,
      });
      written.push(target);
      if (context.owner) await chown(join(store.root, 'tags', tagRecordFile(target.registry, target.repository, target.tag)), context.owner.uid, context.owner.gid).catch(() => undefined);
    }
    await syncDir(join(store.root, 'tags'));
  } catch (error) {
    for (const digest of added) await store.remove(digest).catch(() => undefined);
    for (const target of written) await unlink(join(store.root, 'tags', tagRecordFile(target.registry, target.repository, target.tag))).catch(() => undefined);
    throw error;
  }
}

async function writeMediaType(context: Context, digest: Digest, mediaType: string): Promise<void> {
  await context.store.writeMediaType(digest, mediaType);
  if (context.owner) await chown(join(context.store.root, 'media-types', 'sha256', digestHex(digest)), context.owner.uid, context.owner.gid).catch(() => undefined);
}

async function syncDir(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Run as root on a cache dir owned by someone else (the agent's user): files are given to that owner. */
async function ownerOf(dir: string): Promise<{ uid: number; gid: number } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const info = await stat(dir);
  return info.uid === 0 && info.gid === 0 ? undefined : { uid: info.uid, gid: info.gid };
}

/** The run's staging directory; removed on every path out, process exit included. */
class Staging {
  readonly dir: string;
  readonly #onExit: () => void;

  private constructor(dir: string) {
    this.dir = dir;
    this.#onExit = () => rmSync(dir, { recursive: true, force: true });
    process.on('exit', this.#onExit);
  }

  static async create(cacheDir: string): Promise<Staging> {
    const dir = join(cacheDir, `import-${process.pid}-${randomBytes(4).toString('hex')}`);
    await mkdir(dir, { mode: 0o700 });
    return new Staging(dir);
  }

  async remove(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true, maxRetries: 3 });
    process.off('exit', this.#onExit);
  }
}

/** Staging directories of imports that were killed (their process is gone). */
async function removeStaleStaging(cacheDir: string): Promise<void> {
  for (const name of await readdir(cacheDir)) {
    const pid = Number(STAGING.exec(name)?.[1] ?? NaN);
    if (!Number.isSafeInteger(pid) || pid === process.pid || alive(pid)) continue;
    await rm(join(cacheDir, name), { recursive: true, force: true }).catch(() => undefined);
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * The agent pins imported images first, whole, while they fit in `pin_max_bytes`: those beyond it
 * can be evicted like pulled content, and an isolated site cannot fetch them again. Warned about.
 */
async function warnPinBudget(store: BlobStore, tags: TagStore, pinMaxBytes: number, progress: Progress): Promise<void> {
  const content = new Map<Digest, number>();
  const walk = async (digest: Digest, depth: number): Promise<void> => {
    const size = await store.sizeOf(digest);
    if (size === undefined || content.has(digest)) return;
    content.set(digest, size);
    if (size > MANIFEST_MAX_BYTES || depth > 2) return;
    for (const reference of manifestReferences(await readFile(store.blobPath(digest)))) {
      if (reference.kind === 'manifests') await walk(reference.digest, depth + 1);
      else content.set(reference.digest, (await store.sizeOf(reference.digest)) ?? 0);
    }
  };
  try {
    for (const { record } of await tags.list()) if (record.imported === true) await walk(record.digest, 0);
  } catch {
    return;
  }
  const bytes = [...content.values()].reduce((sum, size) => sum + size, 0);
  if (bytes > pinMaxBytes) {
    progress.note(
      `warning: imported images hold ${formatBytes(bytes)}, more than pin_max_bytes (${formatBytes(pinMaxBytes)}): the agent pins them first while they fit, the rest can be evicted like pulled content; raise pin_max_bytes`,
    );
  }
}
