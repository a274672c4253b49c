/** Crash-safe file replacement: containerd re-reads hosts.toml on every pull and must never see half a file. */
import { randomBytes } from 'node:crypto';
import { link, open, rename, rm } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';

/** Marks our temporary files so a later run can recognise leftovers of a crash. */
export const TEMP_INFIX = '.registry-proxy-agent-tmp-';

/** A numeric owner and group, as `stat` reports them. */
export interface FileOwner {
  readonly uid: number;
  readonly gid: number;
}

/** What a written file ended up with: `owner` is the one asked for, or ours where it could not be given. */
export interface WrittenFile {
  readonly mode: number;
  readonly owner: FileOwner;
}

/**
 * Writes `data` to a temp file in the same directory, fsyncs it, renames it over `file`, fsyncs the directory.
 *
 * The temp file never grants more than the final file: it is created readable by its creator only (who holds
 * the data anyway), then given `owner` and exactly `mode` (neither the umask nor a wrong group in between), and
 * only then does any data go in. Where `owner` cannot be given (no CAP_CHOWN: the file stays ours), group
 * bits that would apply to our group instead of `owner`'s are dropped, see {@link modeForGroup}.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode: number, owner?: FileOwner): Promise<WrittenFile> {
  const dir = path.dirname(file);
  const temp = tempName(file);
  const handle = await open(temp, 'wx', mode & 0o700);
  let written: WrittenFile;
  try {
    written = await giveModeAndOwner(handle, mode, owner);
    await handle.writeFile(data);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(temp, { force: true });
    throw err;
  }
  await handle.close();
  try {
    await rename(temp, file);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  await syncDir(dir);
  return written;
}

/** Group bits are for `owner`'s group: a file left in another group gets none (never wider than asked for). */
export function modeForGroup(mode: number, wantedGid: number, actualGid: number): number {
  return actualGid === wantedGid ? mode : mode & ~0o070;
}

async function giveModeAndOwner(handle: FileHandle, mode: number, owner: FileOwner | undefined): Promise<WrittenFile> {
  if (owner !== undefined) {
    try {
      await handle.chown(owner.uid, owner.gid);
    } catch (err) {
      if (!isErrno(err, 'EPERM', 'EINVAL')) throw err; // EINVAL: an id this user namespace does not map
    }
  }
  const given = await handle.stat();
  try {
    await handle.chmod(owner === undefined ? mode : modeForGroup(mode, owner.gid, given.gid));
  } catch (err) {
    // Given to another user without CAP_FOWNER: it keeps the creator-only mode it was made with.
    if (!isErrno(err, 'EPERM')) throw err;
  }
  const info = await handle.stat();
  return { mode: info.mode & 0o7777, owner: { uid: info.uid, gid: info.gid } };
}

function tempName(file: string): string {
  return path.join(path.dirname(file), `.${path.basename(file)}${TEMP_INFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
}

/**
 * Makes `to` another name for the file at `from` (same inode: bytes, mode, owner, even a symlink itself),
 * replacing `to` atomically. Falls back to an atomic copy with the original's mode and owner where hard links
 * are not allowed or supported.
 */
export async function preserveAs(from: string, to: string, fallback: { bytes: Uint8Array; mode: number; owner?: FileOwner }): Promise<void> {
  const temp = tempName(to);
  try {
    await link(from, temp);
  } catch (err) {
    if (!isErrno(err, 'EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EMLINK')) throw err;
    await writeFileAtomic(to, fallback.bytes, fallback.mode, fallback.owner);
    return;
  }
  try {
    await rename(temp, to);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
  await syncDir(path.dirname(to));
}

/** Renames and makes the rename durable. */
export async function renameDurable(from: string, to: string): Promise<void> {
  await rename(from, to);
  await syncDir(path.dirname(to));
}

/** Makes entries created, renamed or removed in `dir` durable; a no-op where directories cannot be fsynced. */
export async function syncDir(dir: string): Promise<void> {
  let handle;
  try {
    handle = await open(dir, 'r');
    await handle.sync();
  } catch (err) {
    if (!isErrno(err, 'EISDIR', 'EINVAL', 'EPERM', 'EBADF')) throw err;
  } finally {
    await handle?.close();
  }
}

export function isErrno(err: unknown, ...codes: string[]): boolean {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' && codes.includes(err.code);
}
