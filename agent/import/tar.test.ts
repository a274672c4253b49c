import { describe, expect, it } from 'vitest';
import { TarArchive, TarFormatError, bufferAccess, readTarIndex } from './tar.ts';

const BLOCK = 512;

interface Entry {
  name: string;
  data?: Buffer;
  type?: string;
  linkName?: string;
  prefix?: string;
  /** Written in the header's size field instead of the data's length (a pax size overrides it). */
  headerSize?: number;
  gnu?: boolean;
}

function header(entry: Entry, size: number): Buffer {
  const h = Buffer.alloc(BLOCK);
  h.write(entry.name, 0, 100, 'utf8');
  h.write('0000644\0', 100, 'ascii');
  h.write('0000000\0', 108, 'ascii');
  h.write('0000000\0', 116, 'ascii');
  h.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'ascii');
  h.write('14000000000\0', 136, 'ascii');
  h.write('        ', 148, 'ascii');
  h.write(entry.type ?? '0', 156, 'ascii');
  if (entry.linkName) h.write(entry.linkName, 157, 100, 'utf8');
  h.write(entry.gnu ? 'ustar  \0' : 'ustar\u000000', 257, 'latin1');
  if (entry.prefix) h.write(entry.prefix, 345, 155, 'utf8');
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'ascii');
  return h;
}

function padded(data: Buffer): Buffer[] {
  const pad = (BLOCK - (data.length % BLOCK)) % BLOCK;
  return pad === 0 ? [data] : [data, Buffer.alloc(pad)];
}

/** A pax record: "<length> <key>=<value>\n", the length counting itself. */
function paxRecord(key: string, value: string): string {
  const body = ` ${key}=${value}\n`;
  let length = Buffer.byteLength(body) + 1;
  while (String(length).length + Buffer.byteLength(body) !== length) length = String(length).length + Buffer.byteLength(body);
  return `${length}${body}`;
}

function tar(entries: Entry[], options: { end?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const entry of entries) {
    const data = entry.data ?? Buffer.alloc(0);
    parts.push(header(entry, entry.headerSize ?? data.length), ...padded(data));
  }
  if (options.end !== false) parts.push(Buffer.alloc(2 * BLOCK));
  return Buffer.concat(parts);
}

function pax(records: Record<string, string>): Entry {
  return { name: 'PaxHeaders/x', type: 'x', data: Buffer.from(Object.entries(records).map(([k, v]) => paxRecord(k, v)).join('')) };
}

async function text(archive: TarArchive, name: string): Promise<string> {
  const entry = archive.file(name);
  if (!entry) throw new Error(`no ${name}`);
  const chunks: Buffer[] = [];
  for await (const chunk of archive.stream(entry)) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function open(bytes: Buffer): Promise<TarArchive> {
  const access = bufferAccess(bytes);
  return new TarArchive(await readTarIndex(access), access);
}

describe('tar reader', () => {
  it('indexes ustar entries by normalised name and streams their bytes', async () => {
    const archive = await open(
      tar([
        { name: './', type: '5' },
        { name: './oci-layout', data: Buffer.from('{"imageLayoutVersion":"1.0.0"}') },
        { name: 'blobs/', type: '5' },
        { name: 'blobs//sha256/./abc', data: Buffer.alloc(1500, 'x') },
        { name: 'empty', data: Buffer.alloc(0) },
      ]),
    );
    expect(archive.names().sort()).toEqual(['blobs', 'blobs/sha256/abc', 'empty', 'oci-layout']);
    expect(await text(archive, 'oci-layout')).toBe('{"imageLayoutVersion":"1.0.0"}');
    expect(await text(archive, 'blobs/sha256/abc')).toBe('x'.repeat(1500));
    expect(await text(archive, './empty')).toBe('');
    expect(archive.file('blobs')).toBeUndefined();
    expect(archive.file('missing')).toBeUndefined();
  });

  it('takes long names (and sizes) from pax headers, GNU long names and the ustar prefix', async () => {
    const long = `blobs/sha256/${'a'.repeat(64)}/${'very-long-directory-name/'.repeat(6)}layer.tar`;
    expect(long.length).toBeGreaterThan(100);
    const archive = await open(
      tar([
        pax({ path: long, mtime: '1700000000.5' }),
        { name: 'truncated-name-in-header', data: Buffer.from('pax named') },
        { name: '././@LongLink', type: 'L', data: Buffer.from(`${long}-gnu\0`), gnu: true },
        { name: 'cut', data: Buffer.from('gnu named'), gnu: true },
        { name: 'file.json', prefix: 'some/prefix', data: Buffer.from('prefixed') },
        pax({ size: '5' }),
        { name: 'sized', headerSize: 0, data: Buffer.from('12345') },
      ]),
    );
    expect(await text(archive, long)).toBe('pax named');
    expect(archive.file('truncated-name-in-header')).toBeUndefined();
    expect(await text(archive, `${long}-gnu`)).toBe('gnu named');
    expect(await text(archive, 'some/prefix/file.json')).toBe('prefixed');
    expect(await text(archive, 'sized')).toBe('12345');
  });

  it('refuses truncated archives: inside an entry, inside a header, and without the end-of-archive marker', async () => {
    const whole = tar([
      { name: 'index.json', data: Buffer.from('{}') },
      { name: 'blobs/sha256/big', data: Buffer.alloc(4000, 1) },
    ]);
    // Cut in the middle of the second entry's data.
    await expect(readTarIndex(bufferAccess(whole.subarray(0, BLOCK * 2 + BLOCK + 1000)))).rejects.toThrow(/truncated: entry "blobs\/sha256\/big" needs 4000 bytes/);
    // Cut inside a header.
    await expect(readTarIndex(bufferAccess(whole.subarray(0, BLOCK * 2 + 100)))).rejects.toThrow(/ends inside a header/);
    // Cut exactly after the last entry: no end-of-archive marker.
    const withoutEnd = tar([{ name: 'index.json', data: Buffer.from('{}') }], { end: false });
    await expect(readTarIndex(bufferAccess(withoutEnd))).rejects.toThrow(/without its end-of-archive marker/);
    // A pax header with nothing after it.
    await expect(readTarIndex(bufferAccess(tar([pax({ path: 'x' })])))).rejects.toThrow(/extended header .* has no entry/);
    await expect(readTarIndex(bufferAccess(Buffer.alloc(0)))).rejects.toThrow(TarFormatError);
    await expect(readTarIndex(bufferAccess(Buffer.from('short')))).rejects.toThrow(/not a tar archive \(5 bytes, shorter than a tar header\)/);
  });

  it('refuses what is not a tar, and damaged headers', async () => {
    await expect(readTarIndex(bufferAccess(Buffer.from('{"not":"a tar"}'.padEnd(2048, ' '))))).rejects.toThrow(/not a tar archive/);
    const damaged = tar([
      { name: 'a', data: Buffer.from('1') },
      { name: 'b', data: Buffer.from('2') },
    ]);
    damaged[BLOCK * 2 + 10] = 0x41; // the second header's name, after its checksum was computed
    await expect(readTarIndex(bufferAccess(damaged))).rejects.toThrow(/header at offset 1024 has a wrong checksum/);
    const badPax = tar([{ name: 'p', type: 'x', data: Buffer.from('99 path=x\n') }, { name: 'a' }]);
    await expect(readTarIndex(bufferAccess(badPax))).rejects.toThrow(/malformed pax/);
  });

  it('refuses entry names that are absolute or climb out with ".."', async () => {
    await expect(readTarIndex(bufferAccess(tar([{ name: '../evil', data: Buffer.from('x') }])))).rejects.toThrow(/entry "..\/evil" has a ".." component/);
    await expect(readTarIndex(bufferAccess(tar([{ name: 'blobs/../../evil', data: Buffer.from('x') }])))).rejects.toThrow(/".." component/);
    await expect(readTarIndex(bufferAccess(tar([{ name: '/etc/evil', data: Buffer.from('x') }])))).rejects.toThrow(/entry "\/etc\/evil" has an absolute path/);
    await expect(readTarIndex(bufferAccess(tar([pax({ path: 'a/../../b' }), { name: 'fine', data: Buffer.from('x') }])))).rejects.toThrow(/".." component/);
  });

  it('follows symlinks and hard links inside the archive, never out of it', async () => {
    const archive = await open(
      tar([
        { name: 'abc.tar', data: Buffer.from('layer') },
        { name: 'id/layer.tar', type: '2', linkName: '../abc.tar' },
        { name: 'hard', type: '1', linkName: 'abc.tar' },
        { name: 'loop', type: '2', linkName: 'loop' },
        { name: 'id/escape', type: '2', linkName: '../../etc/passwd' },
        { name: 'absolute', type: '2', linkName: '/etc/passwd' },
      ]),
    );
    expect(await text(archive, 'id/layer.tar')).toBe('layer');
    expect(await text(archive, 'hard')).toBe('layer');
    expect(archive.file('loop')).toBeUndefined();
    expect(() => archive.file('id/escape')).toThrow(/points outside the archive/);
    expect(() => archive.file('absolute')).toThrow(/points outside the archive/);
  });
});
