import { createReadStream } from 'node:fs';
import { open, realpath, stat, type FileHandle } from 'node:fs/promises';
import { join, sep } from 'node:path';
import type { Readable } from 'node:stream';
import { ImportError } from './errors.ts';
import { TarArchive, TarFormatError, fileAccess, readTarIndex, safeName } from './tar.ts';

/** One file of a source: its size, and its bytes as a stream (read when copied, never held whole). */
export interface SourceFile {
  readonly size: number;
  open(): Readable;
}

export type SourceFormat = 'oci-layout' | 'oci-archive' | 'docker-archive';

/** An OCI image layout directory, an oci-archive or a docker-archive, read by relative path. */
export interface ImageSource {
  readonly format: SourceFormat;
  /** For messages: `OCI layout /x`, `oci-archive /x.tar`, … */
  readonly description: string;
  /** A regular file by its path relative to the layout or archive root; undefined when there is none. */
  file(path: string): Promise<SourceFile | undefined>;
  close(): Promise<void>;
}

/** What a source's first bytes say it is, when it is not a tar. */
const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

const EXPECTED = 'expected an OCI image layout directory (skopeo copy … oci:DIR:TAG), an oci-archive or a docker-archive tar';

/**
 * Opens SOURCE and tells which of the three formats it is. A tar holding both `oci-layout` and
 * `manifest.json` (docker 25+ `docker save` writes both) is read as an OCI layout.
 */
export async function openSource(path: string): Promise<ImageSource> {
  let info;
  try {
    info = await stat(path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const transport = /^(oci|oci-archive|docker-archive):(.+?)(?::[^/:]*)?$/.exec(path);
    const hint = transport ? ` (give the path without skopeo's "${transport[1]}:" prefix and tag: ${transport[2]})` : '';
    throw new ImportError(`${path}: ${code === 'ENOENT' ? 'no such file or directory' : (error as Error).message}${hint}`);
  }
  if (info.isDirectory()) return openDirectory(path);
  if (!info.isFile()) throw new ImportError(`${path}: not a regular file or directory; ${EXPECTED}`);
  return openArchive(path, info.size);
}

async function openDirectory(dir: string): Promise<ImageSource> {
  const root = await realpath(dir);
  const source: ImageSource = {
    format: 'oci-layout',
    description: `OCI layout ${dir}`,
    async file(relative) {
      const path = join(dir, safeRelative(relative));
      try {
        // As in a tar: a symlink may lead within the layout, never out of it (no file of the node is read).
        const real = await realpath(path);
        if (!real.startsWith(`${root}${sep}`)) throw new ImportError(`${dir}: ${relative} points outside the layout`);
        const info = await stat(real);
        if (!info.isFile()) return undefined;
        return { size: info.size, open: () => createReadStream(real, { highWaterMark: 1024 * 1024 }) };
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT' || (error as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
        throw error;
      }
    },
    close: async () => undefined,
  };
  if (!(await source.file('oci-layout'))) {
    throw new ImportError(`${dir}: not an OCI image layout (it has no oci-layout file); ${EXPECTED}`);
  }
  return source;
}

async function openArchive(path: string, size: number): Promise<ImageSource> {
  const handle = await open(path, 'r');
  try {
    const head = Buffer.alloc(Math.min(size, 4));
    await handle.read(head, 0, head.length, 0);
    if (head.subarray(0, 2).equals(GZIP_MAGIC)) throw new ImportError(`${path}: gzip-compressed; decompress it first (gunzip), then import the tar`);
    if (head.equals(ZSTD_MAGIC)) throw new ImportError(`${path}: zstd-compressed; decompress it first (zstd -d), then import the tar`);
    let archive: TarArchive;
    try {
      const access = fileAccess(handle, size);
      archive = new TarArchive(await readTarIndex(access), access);
    } catch (error) {
      if (error instanceof TarFormatError) throw new ImportError(`${path}: ${error.message}; ${EXPECTED}`);
      throw error;
    }
    const has = (name: string): boolean => archive.file(name) !== undefined;
    const format: SourceFormat | undefined = has('oci-layout') ? 'oci-archive' : has('manifest.json') ? 'docker-archive' : undefined;
    if (!format) throw new ImportError(`${path}: a tar archive, but neither an oci-archive (no oci-layout) nor a docker-archive (no manifest.json); ${EXPECTED}`);
    return tarSource(path, format, archive, handle);
  } catch (error) {
    await handle.close();
    throw error;
  }
}

function tarSource(path: string, format: SourceFormat, archive: TarArchive, handle: FileHandle): ImageSource {
  return {
    format,
    description: `${format} ${path}`,
    async file(relative) {
      let entry;
      try {
        entry = archive.file(safeRelative(relative));
      } catch (error) {
        if (error instanceof TarFormatError) throw new ImportError(`${path}: ${error.message}`);
        throw error;
      }
      return entry && { size: entry.size, open: () => archive.stream(entry) };
    },
    close: () => handle.close(),
  };
}

/** A path named inside the source (by index.json or manifest.json): relative, without `..`. */
function safeRelative(relative: string): string {
  try {
    const name = safeName(relative);
    if (name === '') throw new TarFormatError('refused: an empty path');
    return name;
  } catch (error) {
    if (error instanceof TarFormatError) throw new ImportError(`path ${JSON.stringify(relative)} named by the source: ${error.message.replace(/^refused: /, '')}`);
    throw error;
  }
}

/** A small file of the source (index.json, manifest.json, a manifest or config), at most `maxBytes`. */
export async function readSmall(file: SourceFile, maxBytes: number, what: string): Promise<Buffer> {
  if (file.size > maxBytes) throw new ImportError(`${what} is ${file.size} bytes, more than the ${maxBytes} allowed`);
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of file.open()) {
    length += (chunk as Buffer).length;
    if (length > maxBytes) throw new ImportError(`${what} is more than the ${maxBytes} bytes allowed`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks, length);
}
