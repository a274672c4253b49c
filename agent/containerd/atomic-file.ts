/** Crash-safe file replacement: containerd re-reads hosts.toml on every pull and must never see half a file. */
import { randomBytes } from 'node:crypto';
import { link, open, rename, rm } from 'node:fs/promises';
import path from 'node:path';

/** Marks our temporary files so a later run can recognise leftovers of a crash. */
export const TEMP_INFIX = '.registry-proxy-agent-tmp-';

/** Writes `data` to a temp file in the same directory, fsyncs it, renames it over `file`, fsyncs the directory. */
export async function writeFileAtomic(file: string, data: string | Uint8Array, mode: number): Promise<void> {
  const dir = path.dirname(file);
  const temp = path.join(dir, `.${path.basename(file)}${TEMP_INFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
  const handle = await open(temp, 'wx', mode);
  try {
    await handle.writeFile(data);
    await handle.chmod(mode); // the umask may have narrowed the mode given to open()
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
}

/**
 * Makes `to` another name for the file at `from` (same inode: bytes, mode, owner, even a symlink itself),
 * replacing `to` atomically. Falls back to an atomic copy where hard links are not supported.
 */
export async function preserveAs(from: string, to: string, fallback: { bytes: Uint8Array; mode: number }): Promise<void> {
  const temp = path.join(path.dirname(to), `.${path.basename(to)}${TEMP_INFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    await link(from, temp);
  } catch (err) {
    if (!isErrno(err, 'EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EMLINK')) throw err;
    await writeFileAtomic(to, fallback.bytes, fallback.mode);
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
