/**
 * Applies the agent's mirror to `<hostsDir>/<registry>/hosts.toml` and undoes it again.
 *
 * Files the agent writes start with a marker comment; that marker, not memory, tells a later run what it
 * owns. An admin's own hosts.toml is kept once as `hosts.toml.registry-proxy-agent.orig` (a hard link to the
 * very same file, or a byte-for-byte copy with its mode and owner where links are refused), every managed
 * file is derived from it (so restarts are idempotent), and it is renamed back when the registry is no
 * longer mirrored.
 *
 * A managed file derived from an admin's keeps that file's owner and group and never grants more than its
 * mode: it holds the same secrets (a static `Authorization` header, say) the admin chose to protect.
 */
import { chmod, lstat, mkdir, open, readdir, rm, rmdir } from 'node:fs/promises';
import path from 'node:path';
import { TEMP_INFIX, isErrno, modeForGroup, preserveAs, renameDurable, syncDir, writeFileAtomic } from './atomic-file.ts';
import type { FileOwner } from './atomic-file.ts';
import { HostsTomlError, defaultServerFor, mergeAgentHost, parseHostsToml, renderHostsToml } from './hosts-toml.ts';
import type { HostsToml } from './hosts-toml.ts';

export const HOSTS_FILE = 'hosts.toml';
/** The admin's original hosts.toml, kept beside the managed one until it is put back. */
export const BACKUP_FILE = 'hosts.toml.registry-proxy-agent.orig';
/** First line of every file the agent writes (after `# `). */
export const MANAGED_MARKER = 'Managed by registry-proxy-agent';
/** Header line recording that the agent also created the registry directory (removed again when empty). */
export const CREATED_DIR_LINE = 'registry-proxy-agent: created this directory; it is removed again when left empty.';

/** A file the agent creates; one derived from an admin's file keeps that file's mode within these bits. */
const FILE_MODE = 0o644;
const DIR_MODE = 0o755;

export type HostsState = 'written' | 'unchanged' | 'restored' | 'removed' | 'admin_file_invalid' | 'error';

export interface HostsReport {
  readonly registry: string;
  /** The hosts.toml concerned (the hosts dir itself when the registry name was rejected). */
  readonly path: string;
  readonly state: HostsState;
  /** An admin's own file exists for this registry and was kept: merged from, restored, or left untouched. */
  readonly preservedAdminFile: boolean;
  readonly message?: string;
}

export interface HostsLogger {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface HostsManagerOptions {
  /** containerd's registry `config_path` directory, e.g. /etc/containerd/certs.d. */
  readonly hostsDir: string;
  /** Where containerd reaches the agent, e.g. http://127.0.0.1:5050. */
  readonly agentUrl: string;
  readonly log?: HostsLogger;
}

const SILENT: HostsLogger = { info: () => undefined, warn: () => undefined };

/** Why `registry` cannot name a directory under the hosts dir, or undefined when it can. */
export function registryDirProblem(registry: string): string | undefined {
  if (registry === '') return 'empty registry name';
  if (registry.length > 255) return 'registry name longer than 255 characters';
  if (registry.includes('\0')) return 'registry name contains NUL';
  if (registry.includes('/') || registry.includes('\\')) return 'registry name contains a path separator';
  if (registry.includes('..') || registry === '.') return 'registry name contains "." or ".."';
  if (/[\s\u0000-\u001f\u007f]/.test(registry)) return 'registry name contains whitespace or control characters';
  return undefined;
}

export class HostsManager {
  readonly #hostsDir: string;
  readonly #agentUrl: string;
  readonly #log: HostsLogger;
  // One reconcile at a time: two interleaved runs could both decide to take the same backup.
  #queue: Promise<unknown> = Promise.resolve();

  constructor(options: HostsManagerOptions) {
    this.#hostsDir = path.resolve(options.hostsDir);
    this.#agentUrl = options.agentUrl;
    this.#log = options.log ?? SILENT;
  }

  /** Makes exactly `registries` mirrored: writes their files, restores or removes every other one we manage. */
  reconcile(registries: readonly string[]): Promise<HostsReport[]> {
    return this.#exclusive(() => this.#reconcile(registries));
  }

  /** Restores every admin file we changed and removes everything we created. */
  cleanup(): Promise<HostsReport[]> {
    return this.reconcile([]);
  }

  #exclusive<T>(run: () => Promise<T>): Promise<T> {
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => undefined);
    return result;
  }

  async #reconcile(registries: readonly string[]): Promise<HostsReport[]> {
    const reports: HostsReport[] = [];
    const wanted = new Set<string>();
    for (const registry of registries) {
      const problem = registryDirProblem(registry);
      if (problem !== undefined) {
        reports.push(this.#failed(registry, this.#hostsDir, problem));
      } else if (!wanted.has(registry)) {
        wanted.add(registry);
        reports.push(await this.#guard(registry, () => this.#apply(registry)));
      }
    }
    for (const registry of await this.#managedRegistries()) {
      if (!wanted.has(registry)) reports.push(await this.#guard(registry, () => this.#release(registry)));
    }
    return reports;
  }

  async #guard(registry: string, run: () => Promise<HostsReport>): Promise<HostsReport> {
    try {
      return await run();
    } catch (err) {
      return this.#failed(registry, this.#file(registry), err instanceof Error ? err.message : String(err));
    }
  }

  #failed(registry: string, file: string, message: string): HostsReport {
    this.#log.warn({ registry, path: file, err: message }, 'cannot manage hosts.toml');
    return { registry, path: file, state: 'error', preservedAdminFile: false, message };
  }

  #file(registry: string): string {
    return path.join(this.#hostsDir, registry, HOSTS_FILE);
  }

  async #apply(registry: string): Promise<HostsReport> {
    const dir = path.join(this.#hostsDir, registry);
    const file = path.join(dir, HOSTS_FILE);
    const backup = path.join(dir, BACKUP_FILE);
    const current = await readIfExists(file);
    const original = await readIfExists(backup);
    await removeTempLeftovers(dir);

    // Which bytes are the admin's original, and do we adopt the current file as that original?
    let base = original;
    let adopt = false;
    let createdDir = false;
    if (current !== undefined && isManaged(current.bytes)) {
      createdDir = recordsCreatedDir(current.bytes);
    } else if (current !== undefined) {
      base = current;
      adopt = original === undefined || !original.bytes.equals(current.bytes);
    } else {
      createdDir = !(await exists(dir));
    }

    let admin: HostsToml | undefined;
    if (base !== undefined) {
      try {
        admin = parseHostsToml(decodeUtf8(base.bytes));
      } catch (err) {
        if (!(err instanceof HostsTomlError)) throw err;
        return this.#invalidAdminFile(registry, base === current ? file : backup, err);
      }
    }

    if (adopt && base !== undefined) {
      if (original !== undefined) {
        this.#log.warn({ registry, path: backup }, 'hosts.toml was replaced by an unmanaged file; it becomes the new original');
      }
      // A hard link keeps the admin's very file (inode, owner, mode, a symlink as a symlink) under the
      // backup name; the managed file then replaces only the `hosts.toml` name.
      await preserveAs(file, backup, base);
      this.#log.info({ registry, path: backup }, 'admin hosts.toml backed up');
    }

    const merged = mergeAgentHost(this.#agentUrl, admin, defaultServerFor(registry));
    const text = Buffer.from(renderHostsToml(merged, { header: managedHeader(base !== undefined, createdDir) }));
    const preservedAdminFile = base !== undefined;
    const mode = base === undefined ? FILE_MODE : base.mode & FILE_MODE;
    if (current !== undefined && current.bytes.equals(text) && hasModeAndOwner(current, mode, base?.owner)) {
      return { registry, path: file, state: 'unchanged', preservedAdminFile };
    }
    if (createdDir) await this.#makeDir(dir);
    const written = await writeFileAtomic(file, text, mode, base?.owner);
    if (base !== undefined && !sameOwner(written.owner, base.owner)) {
      this.#log.warn(
        { registry, path: file, adminOwner: base.owner, owner: written.owner, mode: written.mode.toString(8) },
        "hosts.toml cannot have the admin file's owner (no CAP_CHOWN): it is the agent's, with no group permissions unless the group is the same",
      );
    }
    this.#log.info({ registry, path: file, preservedAdminFile }, 'hosts.toml written');
    return { registry, path: file, state: 'written', preservedAdminFile };
  }

  #invalidAdminFile(registry: string, file: string, err: HostsTomlError): HostsReport {
    const message = `${path.basename(file)} is invalid, left untouched: ${err.message}`;
    this.#log.warn({ registry, path: file, err: err.message }, 'admin hosts.toml is invalid; not mirroring this registry');
    return { registry, path: this.#file(registry), state: 'admin_file_invalid', preservedAdminFile: true, message };
  }

  async #makeDir(dir: string): Promise<void> {
    await mkdir(this.#hostsDir, { recursive: true, mode: DIR_MODE });
    try {
      await mkdir(dir, { mode: DIR_MODE });
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err;
      return;
    }
    await chmod(dir, DIR_MODE); // the umask may have narrowed it
    await syncDir(this.#hostsDir);
  }

  async #release(registry: string): Promise<HostsReport> {
    const dir = path.join(this.#hostsDir, registry);
    const file = path.join(dir, HOSTS_FILE);
    const backup = path.join(dir, BACKUP_FILE);
    await removeTempLeftovers(dir);
    if (await exists(backup)) {
      await renameDurable(backup, file);
      this.#log.info({ registry, path: file }, 'admin hosts.toml restored');
      return { registry, path: file, state: 'restored', preservedAdminFile: true };
    }
    const current = await readIfExists(file);
    if (current !== undefined) await rm(file, { force: true });
    await syncDir(dir);
    if (current !== undefined && recordsCreatedDir(current.bytes)) await removeDirIfEmpty(dir);
    this.#log.info({ registry, path: file }, 'hosts.toml removed');
    return { registry, path: file, state: 'removed', preservedAdminFile: false };
  }

  /** Registry dirs holding our marker file, or our backup with no hosts.toml (someone deleted ours). */
  async #managedRegistries(): Promise<string[]> {
    let entries;
    try {
      entries = await readdir(this.#hostsDir, { withFileTypes: true });
    } catch (err) {
      if (isErrno(err, 'ENOENT', 'ENOTDIR')) return [];
      throw err;
    }
    const managed: string[] = [];
    for (const entry of entries) {
      if (!entry.isDirectory() || registryDirProblem(entry.name) !== undefined) continue;
      const dir = path.join(this.#hostsDir, entry.name);
      let current;
      try {
        current = await readIfExists(path.join(dir, HOSTS_FILE));
      } catch {
        continue; // unreadable: certainly not a file we wrote, and never replaced blindly
      }
      const ours = current !== undefined ? isManaged(current.bytes) : await exists(path.join(dir, BACKUP_FILE));
      if (ours) managed.push(entry.name);
    }
    return managed.sort();
  }
}

function managedHeader(fromOriginal: boolean, createdDir: boolean): string {
  const lines = [`${MANAGED_MARKER}: regenerated on every agent start, edits here are lost.`];
  lines.push(
    fromOriginal
      ? `Derived from ${BACKUP_FILE} (the original, put back when the agent stops mirroring this registry) with the agent's mirror first; edit that file instead.`
      : `Created by the agent and deleted when it stops mirroring this registry. To customise, replace this file with your own: the agent keeps it as ${BACKUP_FILE} and puts its mirror first.`,
  );
  if (createdDir) lines.push(CREATED_DIR_LINE);
  return lines.join('\n');
}

const MARKER_BYTES = Buffer.from(`# ${MANAGED_MARKER}`);

function isManaged(bytes: Buffer): boolean {
  return bytes.subarray(0, MARKER_BYTES.length).equals(MARKER_BYTES);
}

function recordsCreatedDir(bytes: Buffer): boolean {
  const lines = bytes.toString('utf8').split('\n');
  const end = lines.findIndex((line) => !line.startsWith('#'));
  return (end === -1 ? lines : lines.slice(0, end)).includes(`# ${CREATED_DIR_LINE}`);
}

function decodeUtf8(bytes: Buffer): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (err) {
    throw new HostsTomlError('file is not UTF-8 text', { cause: err });
  }
}

interface FileContent {
  readonly bytes: Buffer;
  readonly mode: number;
  readonly owner: FileOwner;
}

/**
 * Whether a managed file already has the mode and owner a write would give it: exactly `mode` and `owner`, or,
 * where the owner could not be given, ours with the group permissions {@link writeFileAtomic} leaves then.
 * A file wider than that (one an older agent wrote 0644) is rewritten.
 */
function hasModeAndOwner(current: FileContent, mode: number, owner: FileOwner | undefined): boolean {
  if (owner === undefined || sameOwner(current.owner, owner)) return current.mode === mode;
  return current.owner.uid === process.geteuid?.() && current.mode === modeForGroup(mode, owner.gid, current.owner.gid);
}

function sameOwner(a: FileOwner, b: FileOwner): boolean {
  return a.uid === b.uid && a.gid === b.gid;
}

async function readIfExists(file: string): Promise<FileContent | undefined> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
  try {
    const info = await handle.stat();
    return { bytes: await handle.readFile(), mode: info.mode & 0o7777, owner: { uid: info.uid, gid: info.gid } };
  } finally {
    await handle.close();
  }
}

// lstat: a backup that is a (possibly dangling) symlink still exists and must still be put back.
async function exists(file: string): Promise<boolean> {
  try {
    await lstat(file);
    return true;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw err;
  }
}

/** Temp files a crashed write left behind; they would keep a directory we created from being removed. */
async function removeTempLeftovers(dir: string): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    if (isErrno(err, 'ENOENT', 'ENOTDIR')) return;
    throw err;
  }
  for (const name of names) {
    if (name.startsWith('.') && name.includes(TEMP_INFIX)) await rm(path.join(dir, name), { force: true });
  }
}

async function removeDirIfEmpty(dir: string): Promise<void> {
  try {
    await rmdir(dir);
    await syncDir(path.dirname(dir));
  } catch (err) {
    if (!isErrno(err, 'ENOTEMPTY', 'EEXIST', 'ENOENT')) throw err;
  }
}
