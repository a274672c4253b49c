import { Readable } from 'node:stream';
import type { FileHandle } from 'node:fs/promises';

/**
 * A small tar reader for image archives (oci-archive, docker-archive): ustar, pax extended headers
 * (long names, large sizes) and GNU long names. It indexes the archive by reading its headers only
 * (positional reads, 512 bytes each); an entry's bytes are streamed from its offset when needed, so
 * neither the archive nor an entry is ever held in memory. Nothing is extracted: callers read
 * entries by name and decide where their bytes go (named by digest, never by entry name).
 */

const BLOCK = 512;
/** A pax or GNU long-name record is a few hundred bytes; more is not a name. */
const MAX_META_BYTES = 1024 * 1024;
/** Image archives hold a few hundred entries; a million headers is not an image. */
const MAX_ENTRIES = 1_000_000;
/** Symlink and hard link hops followed to reach a regular file. */
const MAX_LINK_HOPS = 8;
const HEADER_ONLY = new Set(['1', '2', '3', '4', '5', '6']);

export type TarEntryType = 'file' | 'directory' | 'symlink' | 'hardlink' | 'other';

export interface TarEntry {
  /** Normalised: no leading `./` or `/`, no `.` or empty components, no trailing `/`. */
  readonly name: string;
  readonly type: TarEntryType;
  /** Bytes of data (0 for links and directories). */
  readonly size: number;
  /** Where the data starts in the archive. */
  readonly offset: number;
  /** For links: the target as written in the archive. */
  readonly linkName?: string;
}

/** The archive is not a tar, is damaged or truncated, or holds a name that could escape a directory. */
export class TarFormatError extends Error {
  override readonly name = 'TarFormatError';
}

/** Positional reads of the archive (a file handle, or a buffer in tests). */
export interface RandomAccess {
  readonly size: number;
  /** Exactly `length` bytes at `position` (the caller stays within `size`). */
  read(position: number, length: number): Promise<Buffer>;
}

export function fileAccess(handle: FileHandle, size: number): RandomAccess {
  return {
    size,
    async read(position, length) {
      const buffer = Buffer.alloc(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(buffer, done, length - done, position + done);
        if (bytesRead === 0) throw new TarFormatError(`truncated: the file ended at ${position + done} bytes while ${size} were expected (was it changed while being read?)`);
        done += bytesRead;
      }
      return buffer;
    },
  };
}

export function bufferAccess(bytes: Buffer): RandomAccess {
  return { size: bytes.length, read: async (position, length) => bytes.subarray(position, position + length) };
}

interface Pending {
  path?: string;
  linkPath?: string;
  size?: number;
}

/**
 * Every entry of the archive, in order, up to its end-of-archive marker. Throws TarFormatError for
 * anything but a well-formed archive: a bad header checksum, an entry whose data runs past the end
 * of the file, a file that ends without the end-of-archive marker (a truncated archive), an entry
 * name that is absolute or has a `..` component.
 */
export async function readTarIndex(input: RandomAccess): Promise<TarEntry[]> {
  const entries: TarEntry[] = [];
  let position = 0;
  let pending: Pending = {};
  for (;;) {
    if (position === 0 && input.size < BLOCK) throw new TarFormatError(`not a tar archive (${input.size} bytes, shorter than a tar header)`);
    if (position + BLOCK > input.size) {
      throw new TarFormatError(
        position === input.size
          ? `truncated: the archive ends at ${position} bytes without its end-of-archive marker`
          : `truncated: the archive ends inside a header at ${input.size} bytes`,
      );
    }
    const header = await input.read(position, BLOCK);
    if (isZero(header)) {
      if (pending.path !== undefined || pending.size !== undefined) throw new TarFormatError(`truncated: an extended header at ${position - BLOCK} has no entry after it`);
      return entries;
    }
    if (!checksumMatches(header)) {
      throw new TarFormatError(position === 0 ? 'not a tar archive (its first block is not a tar header)' : `damaged: the header at offset ${position} has a wrong checksum`);
    }
    const type = String.fromCharCode(header[156] ?? 0);
    const meta = type === 'x' || type === 'g' || type === 'L' || type === 'K';
    // Links, devices, directories and FIFOs carry no data whatever their size field says (as Go's archive/tar reads them).
    const size = HEADER_ONLY.has(type) ? 0 : ((meta ? undefined : pending.size) ?? parseNumber(header.subarray(124, 136), position));
    const dataOffset = position + BLOCK;
    if (dataOffset + size > input.size) {
      throw new TarFormatError(`truncated: entry ${JSON.stringify(pending.path ?? headerName(header))} needs ${size} bytes at offset ${dataOffset}, but the archive ends at ${input.size}`);
    }
    const next = dataOffset + Math.ceil(size / BLOCK) * BLOCK;
    if (meta) {
      if (size > MAX_META_BYTES) throw new TarFormatError(`damaged: an extended header of ${size} bytes at offset ${position}`);
      const data = await input.read(dataOffset, size);
      if (type === 'x') pending = { ...pending, ...parsePax(data, position) };
      else if (type === 'L') pending = { ...pending, path: cString(data) };
      else if (type === 'K') pending = { ...pending, linkPath: cString(data) };
      // 'g' (global pax header): nothing in it changes where entries are or what they are called.
      position = next;
      continue;
    }
    const raw = pending.path ?? headerName(header);
    const name = safeName(raw);
    const linkName = pending.linkPath ?? cString(header.subarray(157, 257));
    pending = {};
    if (entries.length >= MAX_ENTRIES) throw new TarFormatError(`more than ${MAX_ENTRIES} entries: not an image archive`);
    const kind = entryType(type);
    entries.push({ name, type: kind, size: kind === 'file' ? size : 0, offset: dataOffset, ...(kind === 'symlink' || kind === 'hardlink' ? { linkName } : {}) });
    position = next;
  }
}

function entryType(flag: string): TarEntryType {
  switch (flag) {
    case '0':
    case '\0':
    case '7':
      return 'file';
    case '1':
      return 'hardlink';
    case '2':
      return 'symlink';
    case '5':
      return 'directory';
    default:
      return 'other';
  }
}

function isZero(block: Buffer): boolean {
  for (const byte of block) if (byte !== 0) return false;
  return true;
}

/** The header's checksum: its bytes summed with the checksum field counted as spaces (unsigned, or signed as old tars did). */
function checksumMatches(header: Buffer): boolean {
  const field = cString(header.subarray(148, 156)).trim();
  if (!/^[0-7]+$/.test(field)) return false;
  const expected = parseInt(field, 8);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i += 1) {
    const byte = i >= 148 && i < 156 ? 0x20 : (header[i] ?? 0);
    unsigned += byte;
    signed += byte > 127 ? byte - 256 : byte;
  }
  return expected === unsigned || expected === signed;
}

/** An octal number field, or GNU's base-256 form (high bit set) for sizes beyond 8 GiB. */
function parseNumber(field: Buffer, at: number): number {
  const first = field[0] ?? 0;
  if (first & 0x80) {
    if (first !== 0x80) throw new TarFormatError(`damaged: a negative size in the header at offset ${at}`);
    let value = 0;
    for (let i = 1; i < field.length; i += 1) value = value * 256 + (field[i] ?? 0);
    if (!Number.isSafeInteger(value)) throw new TarFormatError(`damaged: an impossible size in the header at offset ${at}`);
    return value;
  }
  const text = cString(field).trim();
  if (text === '') return 0;
  if (!/^[0-7]+$/.test(text)) throw new TarFormatError(`damaged: the header at offset ${at} has a size that is not a number`);
  return parseInt(text, 8);
}

function cString(bytes: Buffer): string {
  const end = bytes.indexOf(0);
  return bytes.subarray(0, end === -1 ? bytes.length : end).toString('utf8');
}

function headerName(header: Buffer): string {
  const name = cString(header.subarray(0, 100));
  // POSIX ustar ("ustar\0"): a prefix field joins the name; GNU's "ustar  " uses that space otherwise.
  if (header.subarray(257, 263).toString('latin1') !== 'ustar\0') return name;
  const prefix = cString(header.subarray(345, 500));
  return prefix === '' ? name : `${prefix}/${name}`;
}

/** `"<length> <key>=<value>\n"` records; path, linkpath and size are what matter here. */
function parsePax(data: Buffer, at: number): Pending {
  const found: Pending = {};
  let offset = 0;
  while (offset < data.length) {
    if (data[offset] === 0) break;
    const space = data.indexOf(0x20, offset);
    const length = space === -1 ? NaN : Number(data.subarray(offset, space).toString('latin1'));
    if (!Number.isSafeInteger(length) || length <= space - offset || offset + length > data.length || data[offset + length - 1] !== 0x0a) {
      throw new TarFormatError(`damaged: a malformed pax header at offset ${at}`);
    }
    const record = data.subarray(space + 1, offset + length - 1).toString('utf8');
    const equals = record.indexOf('=');
    if (equals <= 0) throw new TarFormatError(`damaged: a malformed pax record at offset ${at}`);
    const key = record.slice(0, equals);
    const value = record.slice(equals + 1);
    if (key === 'path') found.path = value;
    else if (key === 'linkpath') found.linkPath = value;
    else if (key === 'size') {
      if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(Number(value))) throw new TarFormatError(`damaged: a pax size that is not a number at offset ${at}`);
      found.size = Number(value);
    }
    offset += length;
  }
  return found;
}

/**
 * An entry name as a relative path inside the archive: leading `./` and empty or `.` components
 * dropped. Absolute names and `..` components are refused: the archive is not trusted.
 */
export function safeName(raw: string): string {
  if (raw.includes('\0')) throw new TarFormatError(`refused: entry name ${JSON.stringify(raw)} contains a NUL byte`);
  if (raw.startsWith('/')) throw new TarFormatError(`refused: entry ${JSON.stringify(raw)} has an absolute path`);
  const parts = raw.split('/').filter((part) => part !== '' && part !== '.');
  if (parts.includes('..')) throw new TarFormatError(`refused: entry ${JSON.stringify(raw)} has a ".." component`);
  return parts.join('/');
}

/** The entries of an archive by name (a later entry of the same name replaces an earlier one, as tar extracts them). */
export class TarArchive {
  readonly #access: RandomAccess;
  readonly #byName = new Map<string, TarEntry>();

  constructor(entries: readonly TarEntry[], access: RandomAccess) {
    this.#access = access;
    for (const entry of entries) if (entry.name !== '') this.#byName.set(entry.name, entry);
  }

  names(): string[] {
    return [...this.#byName.keys()];
  }

  /**
   * The regular file at `name`, following symlinks (relative to the link's directory) and hard
   * links (relative to the archive root) within the archive; undefined when there is none.
   */
  file(name: string): TarEntry | undefined {
    let current = this.#byName.get(safeName(name));
    for (let hops = 0; current && hops <= MAX_LINK_HOPS; hops += 1) {
      if (current.type === 'file') return current;
      if (current.type !== 'symlink' && current.type !== 'hardlink') return undefined;
      const target = current.linkName ?? '';
      const base = current.type === 'symlink' ? current.name.split('/').slice(0, -1) : [];
      const resolved = resolveWithin(base, target);
      if (resolved === undefined) throw new TarFormatError(`refused: link ${JSON.stringify(current.name)} points outside the archive (${JSON.stringify(target)})`);
      current = this.#byName.get(resolved);
    }
    return undefined;
  }

  /** The bytes of an entry, streamed from the archive in positional reads of at most 1 MiB. */
  stream(entry: TarEntry): Readable {
    const access = this.#access;
    return Readable.from(
      (async function* () {
        for (let done = 0; done < entry.size; ) {
          const length = Math.min(1024 * 1024, entry.size - done);
          yield await access.read(entry.offset + done, length);
          done += length;
        }
      })(),
    );
  }
}

/** `target` resolved against the directory `base` (components), or undefined when it leaves the root. */
function resolveWithin(base: readonly string[], target: string): string | undefined {
  if (target.startsWith('/')) return undefined;
  const parts = [...base];
  for (const part of target.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (parts.length === 0) return undefined;
      parts.pop();
    } else parts.push(part);
  }
  return parts.join('/');
}
