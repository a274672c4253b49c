import * as fsp from 'node:fs/promises';
import { mkdtemp, open, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { TEMP_INFIX, preserveAs, writeFileAtomic } from './atomic-file.ts';

// Only `link` is replaced (by itself), so that a test can make hard links fail.
vi.mock('node:fs/promises', async (importOriginal) => {
  const actual = await importOriginal<typeof import('node:fs/promises')>();
  return { ...actual, link: vi.fn(actual.link) };
});

const IS_ROOT = process.geteuid?.() === 0;
const SECRET = '[host."https://mirror.corp.example".header]\n  Authorization = "Basic Zm9vOmJhcg=="\n';

interface Seen {
  readonly step: string;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly size: number;
}

let dir: string;
let umask: number;
let fileHandleProto: FileHandle;

beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'atomic-file-'));
  // No umask: the temp file has exactly the mode it is opened with, so a wide open() shows.
  umask = process.umask(0);
  const probe = await open(path.join(dir, 'probe'), 'w');
  fileHandleProto = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  await rm(path.join(dir, 'probe'));
});

afterEach(async () => {
  process.umask(umask);
  vi.restoreAllMocks();
  await rm(dir, { recursive: true, force: true });
});

/** Records the temp file's mode, owner and size before every call the writer makes on its handle. */
function watchTempFile(): Seen[] {
  const seen: Seen[] = [];
  for (const step of ['chown', 'chmod', 'writeFile', 'write', 'sync'] as const) {
    const original = fileHandleProto[step] as (...args: unknown[]) => Promise<unknown>;
    vi.spyOn(fileHandleProto, step).mockImplementation(async function (this: FileHandle, ...args: unknown[]) {
      const info = await this.stat();
      if (info.isFile()) seen.push({ step, mode: info.mode & 0o7777, uid: info.uid, gid: info.gid, size: info.size }); // not syncDir's
      return original.apply(this, args);
    } as never);
  }
  return seen;
}

function octal(mode: number): string {
  return mode.toString(8).padStart(4, '0');
}

describe('writeFileAtomic', () => {
  it.each([
    ['0600', 0o600],
    ['0640', 0o640],
    ['0644', 0o644],
  ])('never lets the temp file grant more than the final mode %s', async (_, mode) => {
    const seen = watchTempFile();
    const file = path.join(dir, 'hosts.toml');

    const written = await writeFileAtomic(file, SECRET, mode);

    // Seen from creation (empty) to after the data went in.
    expect(seen[0]?.size).toBe(0);
    expect(seen.some((s) => s.size > 0)).toBe(true);
    for (const s of seen) expect(octal(s.mode & ~mode), `${s.step}: ${octal(s.mode)}`).toBe('0000');
    // Data goes in only once the mode is final.
    for (const s of seen.filter((x) => x.size > 0)) expect(octal(s.mode)).toBe(octal(mode));
    expect(octal((await stat(file)).mode & 0o7777)).toBe(octal(mode));
    expect(written.mode).toBe(mode);
    expect(await readFile(file, 'utf8')).toBe(SECRET);
    expect(await readdir(dir)).toEqual(['hosts.toml']);
  });

  it('gives the exact mode whatever the umask', async () => {
    process.umask(0o077);
    const file = path.join(dir, 'hosts.toml');
    await writeFileAtomic(file, 'x', 0o644);
    expect(octal((await stat(file)).mode & 0o7777)).toBe('0644');
  });

  it.runIf(IS_ROOT)('gives the file its owner while it is still empty and closed to everyone else', async () => {
    const seen = watchTempFile();
    const file = path.join(dir, 'hosts.toml');
    const owner = { uid: 1234, gid: 5678 };

    const written = await writeFileAtomic(file, SECRET, 0o640, owner);

    for (const s of seen) {
      expect(octal(s.mode & ~0o640), s.step).toBe('0000');
      // Until it belongs to `owner`, only its creator (who holds the data anyway) may open it.
      if (s.uid !== owner.uid || s.gid !== owner.gid) expect(octal(s.mode & 0o077), s.step).toBe('0000');
      if (s.size > 0) expect([s.uid, s.gid, octal(s.mode)]).toEqual([owner.uid, owner.gid, '0640']);
    }
    expect(seen.map((s) => s.step)).toContain('chown');
    const info = await stat(file);
    expect([info.uid, info.gid, octal(info.mode & 0o7777)]).toEqual([1234, 5678, '0640']);
    expect(written).toEqual({ mode: 0o640, owner });
  });

  it('drops group permissions when the owner cannot be given (no CAP_CHOWN) and the group differs', async () => {
    vi.spyOn(fileHandleProto, 'chown').mockRejectedValue(Object.assign(new Error('EPERM: operation not permitted'), { code: 'EPERM' }));
    const me = { uid: process.geteuid?.() ?? 0, gid: process.getegid?.() ?? 0 };
    const file = path.join(dir, 'hosts.toml');
    const otherGroup = path.join(dir, 'other-group.toml');

    const written = await writeFileAtomic(file, SECRET, 0o640, { uid: me.uid + 1, gid: me.gid + 1 });
    const sameGroup = await writeFileAtomic(otherGroup, SECRET, 0o640, { uid: me.uid + 1, gid: me.gid });

    expect(written).toEqual({ mode: 0o600, owner: me });
    expect(octal((await stat(file)).mode & 0o7777)).toBe('0600');
    expect(sameGroup).toEqual({ mode: 0o640, owner: me });
    expect(octal((await stat(otherGroup)).mode & 0o7777)).toBe('0640');
  });

  it('removes the temp file when the write fails', async () => {
    vi.spyOn(fileHandleProto, 'sync').mockRejectedValue(Object.assign(new Error('EIO: i/o error'), { code: 'EIO' }));
    await expect(writeFileAtomic(path.join(dir, 'hosts.toml'), SECRET, 0o600)).rejects.toThrow('EIO');
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('preserveAs', () => {
  it('copies with the original mode, and never wider on the way, where hard links are refused', async () => {
    const from = path.join(dir, 'hosts.toml');
    const to = path.join(dir, 'hosts.toml.orig');
    await writeFile(from, SECRET, { mode: 0o640 });
    vi.mocked(fsp.link).mockRejectedValueOnce(Object.assign(new Error('EPERM: operation not permitted'), { code: 'EPERM' }));
    const seen = watchTempFile();
    const info = await stat(from);

    await preserveAs(from, to, { bytes: await readFile(from), mode: 0o640, owner: { uid: info.uid, gid: info.gid } });

    expect(fsp.link).toHaveBeenCalled();
    for (const s of seen) expect(octal(s.mode & ~0o640), s.step).toBe('0000');
    const copy = await stat(to);
    expect(copy.ino).not.toBe(info.ino);
    expect([copy.uid, copy.gid, octal(copy.mode & 0o7777)]).toEqual([info.uid, info.gid, '0640']);
    expect(await readFile(to, 'utf8')).toBe(SECRET);
    expect((await readdir(dir)).filter((name) => name.includes(TEMP_INFIX))).toEqual([]);
  });
});
