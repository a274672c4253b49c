import { randomBytes } from 'node:crypto';
import { type FileHandle, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { type Digest, sha256Of } from '../oci/digest.ts';
import { DigestMismatchError, FillAbandonedError, SizeMismatchError } from './errors.ts';
import { Fill, type FillSource } from './fill.ts';

const DIGEST = `sha256:${'1'.repeat(64)}` as Digest;
const CHUNK = 16 * 1024;

/** A fresh temp file for a fill, opened as the cache opens one; `remove` deletes it. */
async function tempFile(): Promise<{ path: string; handle: FileHandle; remove: () => Promise<void> }> {
  const path = join(tmpdir(), `fill-test-${process.pid}-${Math.random().toString(16).slice(2)}`);
  return { path, handle: await open(path, 'w+'), remove: () => rm(path, { force: true }) };
}

/** An upstream body of endless chunks, as fast as the fill takes them; `destroyed` once the fill gives up. */
function endless(): { body: Readable; destroyed: Promise<void> } {
  const body = new Readable({
    read() {
      this.push(Buffer.alloc(CHUNK, 7));
    },
  });
  const destroyed = new Promise<void>((resolve) => body.once('close', () => resolve()));
  return { body, destroyed };
}

/** A relaying fill (no temp file) with a 64 KiB window and a short crawl limit. */
function relay(source: FillSource): Fill {
  return new Fill(DIGEST, '', { handle: undefined, relayWindowBytes: 64 * 1024, relayCrawlMs: 150 }, Promise.resolve(source));
}

describe('a relay paced by a reader that does not keep up', () => {
  it('is stopped when other downloads wait for its slot: the upstream body is destroyed and the slot given back', async () => {
    const { body, destroyed } = endless();
    let ended = 0;
    const fill = relay({ size: undefined, body, ended: () => void (ended += 1), contended: () => true });
    // A reader that took nothing yet and never will.
    const reader = fill.attach();
    expect(await fill.verified()).toBe(false);
    expect(fill.error).toBeInstanceOf(FillAbandonedError);
    expect(fill.error?.message).toContain('read too slowly while other downloads waited');
    await destroyed;
    expect(ended).toBe(1);
    reader.detach();
  });

  it('keeps waiting for its reader while nobody waits for the slot', async () => {
    const { body } = endless();
    let contended = false;
    const fill = relay({ size: undefined, body, contended: () => contended });
    const reader = fill.attach();
    let settled = false;
    void fill.verified().then(() => void (settled = true));
    // Several crawl periods pass without a waiter: the relay just waits for its reader.
    await new Promise((resolve) => setTimeout(resolve, 600));
    expect(settled).toBe(false);
    expect(fill.failed).toBe(false);
    // Someone queues for the slot: within about one more period the crawler gives it up.
    contended = true;
    expect(await fill.verified()).toBe(false);
    expect(fill.error).toBeInstanceOf(FillAbandonedError);
    reader.detach();
  });

  it('is not stopped while its reader keeps up, waiters or not', async () => {
    const content = Buffer.alloc(4 * 1024 * 1024, 3);
    const digest = sha256Of(content);
    const body = Readable.from(Array.from({ length: content.length / CHUNK }, (_, i) => content.subarray(i * CHUNK, (i + 1) * CHUNK)));
    const fill = new Fill(digest, '', { handle: undefined, relayWindowBytes: 64 * 1024, relayCrawlMs: 150 }, Promise.resolve<FillSource>({ size: content.length, body, contended: () => true }));
    const reader = fill.attach();
    let position = 0;
    // A reader that takes what is there, pausing a little now and then: paced, but never crawling.
    while (position < content.length - 1) {
      if (fill.failed) break;
      const available = Math.min(fill.written, content.length - 1);
      if (position < available) {
        position += (await fill.read(position, available - position)).length;
        reader.advance(position);
        await new Promise((resolve) => setTimeout(resolve, 5));
      } else {
        await fill.changed();
      }
    }
    expect(await fill.verified()).toBe(true);
    reader.detach();
  });
});

describe('a relay fed tiny chunks', () => {
  it('keeps its window in blocks, not one object per chunk, and serves the bytes unchanged', async () => {
    const count = 256 * 1024;
    const content = Buffer.alloc(count);
    for (let i = 0; i < count; i += 1) content[i] = i % 251;
    const digest = sha256Of(content);
    // One byte per chunk, as a hostile upstream sends them (chunked encoding allows it).
    const body = Readable.from(
      (function* () {
        for (let i = 0; i < count; i += 1) yield content.subarray(i, i + 1);
      })(),
    );
    const fill = new Fill(digest, '', { handle: undefined, relayWindowBytes: 64 * 1024 * 1024 }, Promise.resolve<FillSource>({ size: count, body }));
    // A reader at 0 that has not read yet: the whole window stays in memory.
    const reader = fill.attach();
    while (fill.written < count && !fill.failed) await fill.changed();
    // 256 Ki Buffer objects would cost tens of MiB; a handful of blocks of up to 64 KiB (the write
    // queue coalesces first, and a batch may end in a block only partly filled) cost about the bytes.
    expect(fill.relayBuffers).toBeGreaterThanOrEqual(count / (64 * 1024));
    expect(fill.relayBuffers).toBeLessThanOrEqual(2 * (count / (64 * 1024)));
    let position = 0;
    const parts: Buffer[] = [];
    while (position < count) {
      const part = await fill.read(position, count - position);
      parts.push(Buffer.from(part));
      position += part.length;
    }
    expect(Buffer.concat(parts).equals(content)).toBe(true);
    reader.detach();
  });
});

describe('a fill into a temp file, read as stream events', () => {
  /** A fill of `content` in socket-sized chunks into a fresh temp file, announcing `size`. */
  async function fillOf(content: Buffer, digest: Digest, body: Readable = chunked(content)): Promise<{ fill: Fill; cleanup: () => Promise<void> }> {
    const file = await tempFile();
    const fill = new Fill(digest, file.path, { handle: file.handle }, Promise.resolve<FillSource>({ size: content.length, body }));
    return { fill, cleanup: file.remove };
  }

  function chunked(content: Buffer): Readable {
    const chunks: Buffer[] = [];
    for (let at = 0; at < content.length; at += 64 * 1024) chunks.push(content.subarray(at, at + 64 * 1024));
    return Readable.from(chunks);
  }

  it('verifies a large blob and has every byte in the file', async () => {
    const content = randomBytes(9 * 1024 * 1024 + 3);
    const { fill, cleanup } = await fillOf(content, sha256Of(content));
    expect(await fill.verified()).toBe(true);
    expect(fill.written).toBe(content.length);
    expect((await fill.read(0, content.length)).equals(content)).toBe(true);
    await fill.complete();
    await cleanup();
  });

  it('refuses a large blob with one byte changed, at the start, in the middle or at the very end', async () => {
    const content = randomBytes(9 * 1024 * 1024 + 5);
    const digest = sha256Of(content);
    for (const at of [0, content.length >> 1, content.length - 1]) {
      const wrong = Buffer.from(content);
      wrong[at] = wrong[at]! ^ 1;
      const { fill, cleanup } = await fillOf(wrong, digest);
      expect(await fill.verified()).toBe(false);
      expect(fill.error).toBeInstanceOf(DigestMismatchError);
      await cleanup();
    }
  });

  it('fails on a body that errors midway, and stops at the first byte beyond the announced size', async () => {
    const content = randomBytes(2 * 1024 * 1024);
    const broken = new Readable({ read() {} });
    broken.push(content.subarray(0, 1024 * 1024));
    const cut = await fillOf(content, sha256Of(content), broken);
    setImmediate(() => broken.destroy(new Error('connection reset')));
    expect(await cut.fill.verified()).toBe(false);
    expect(cut.fill.error?.message).toBe('connection reset');
    await cut.cleanup();

    const extra = new Readable({ read() {} });
    extra.push(Buffer.concat([content, Buffer.alloc(1)]));
    extra.push(Buffer.alloc(1024 * 1024));
    const long = await fillOf(content, sha256Of(content), extra);
    expect(await long.fill.verified()).toBe(false);
    expect(long.fill.error).toBeInstanceOf(SizeMismatchError);
    // The body was stopped, not read on.
    expect(extra.destroyed).toBe(true);
    await long.cleanup();
  });
});

describe('a fill into a temp file that every reader left', () => {
  async function tempFill(digest: Digest, source: FillSource): Promise<{ fill: Fill; cleanup: () => Promise<void> }> {
    const file = await tempFile();
    const fill = new Fill(digest, file.path, { handle: file.handle }, Promise.resolve(source));
    return { fill, cleanup: file.remove };
  }

  async function untilWritten(fill: Fill, bytes: number): Promise<void> {
    while (fill.written < bytes && !fill.failed) await new Promise((resolve) => setTimeout(resolve, 5));
  }

  it('is stopped when upstream never announced the size: an endless body does not write on for nobody', async () => {
    const { body, destroyed } = endless();
    let ended = 0;
    const { fill, cleanup } = await tempFill(DIGEST, { size: undefined, body, ended: () => void (ended += 1) });
    const reader = fill.attach();
    await untilWritten(fill, 1024 * 1024);
    reader.detach();
    expect(await fill.verified()).toBe(false);
    expect(fill.error).toBeInstanceOf(FillAbandonedError);
    expect(fill.error?.message).toContain('never announced its size');
    await destroyed;
    expect(ended).toBe(1);
    // Stopped where it was: a few chunks on, not the endless rest.
    const stoppedAt = fill.written;
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(fill.written).toBe(stoppedAt);
    await cleanup();
  });

  it('goes on into the cache when upstream announced the size', async () => {
    const content = randomBytes(8 * 1024 * 1024);
    let sent = 0;
    // Paced, so the reader surely leaves before the body ends.
    const body = new Readable({
      read() {
        if (sent >= content.length) return void this.push(null);
        const chunk = content.subarray(sent, sent + 256 * 1024);
        sent += chunk.length;
        setTimeout(() => this.push(chunk), 2);
      },
    });
    const { fill, cleanup } = await tempFill(sha256Of(content), { size: content.length, body });
    const reader = fill.attach();
    await untilWritten(fill, 1024 * 1024);
    reader.detach();
    expect(fill.written).toBeLessThan(content.length);
    expect(await fill.verified()).toBe(true);
    expect(fill.written).toBe(content.length);
    await fill.complete();
    await cleanup();
  });
});

describe('a fill fed tiny chunks into its temp file', () => {
  it('queues them in blocks and writes the bytes unchanged', async () => {
    const count = 512 * 1024;
    const content = randomBytes(count);
    const { path, handle, remove } = await tempFile();
    let batches = 0;
    const writev = handle.writev.bind(handle);
    // Counts the buffers each write hands the kernel: blocks, not 1-byte chunks.
    let buffers = 0;
    handle.writev = ((chunks: Buffer[], position?: number) => {
      batches += 1;
      buffers += chunks.length;
      return writev(chunks, position);
    }) as typeof handle.writev;
    const body = Readable.from(
      (function* () {
        for (let i = 0; i < count; i += 1) yield content.subarray(i, i + 1);
      })(),
    );
    const fill = new Fill(sha256Of(content), path, { handle }, Promise.resolve<FillSource>({ size: count, body }));
    expect(await fill.verified()).toBe(true);
    expect((await fill.read(0, count)).equals(content)).toBe(true);
    expect(buffers).toBeLessThanOrEqual(batches + count / (64 * 1024));
    await fill.complete();
    await remove();
  });
});

describe('fills behind a disk that does not keep up', () => {
  it('hold their unwritten bytes within one shared budget, not a full queue each', async () => {
    const fills = 16;
    const size = 64 * 1024 * 1024;
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const pulled: number[] = Array.from({ length: fills }, () => 0);
    const bodies: Readable[] = [];
    const prepared: Array<{ path: string; handle: FileHandle; remove: () => Promise<void>; body: Readable }> = [];
    for (let i = 0; i < fills; i++) {
      const { path, handle, remove } = await tempFile();
      const writev = handle.writev.bind(handle);
      // The disk: every write waits until the test lets it go.
      handle.writev = (async (chunks: Buffer[], position?: number) => {
        await gate;
        return writev(chunks, position);
      }) as typeof handle.writev;
      const body = new Readable({
        read() {
          pulled[i]! += 64 * 1024;
          this.push(Buffer.alloc(64 * 1024, i));
        },
      });
      bodies.push(body);
      prepared.push({ path, handle, remove, body });
    }
    // All start reading together (fills that started alone keep the larger queue they took until it drains).
    const started = prepared.map(({ path, handle, remove, body }) => ({ remove, fill: new Fill(DIGEST, path, { handle }, Promise.resolve<FillSource>({ size, body })) }));
    // Reading stops once every fill paused (nothing moves for 200 ms).
    let last = -1;
    for (let total = 0; total !== last; await new Promise((resolve) => setTimeout(resolve, 200))) {
      last = total;
      total = pulled.reduce((sum, n) => sum + n, 0);
    }
    const total = pulled.reduce((sum, n) => sum + n, 0);
    // 4 MiB shared (256 KiB each, the least a fill queues), plus per fill the batch in the stalled
    // write and the stream's own buffer; a 4 MiB queue each would hold 64 MiB.
    expect(total).toBeGreaterThan(fills * 256 * 1024);
    expect(total).toBeLessThanOrEqual(4 * 1024 * 1024 + fills * 512 * 1024);
    for (const body of bodies) body.destroy(new Error('test over'));
    release();
    for (const { fill, remove } of started) {
      expect(await fill.verified()).toBe(false);
      await remove();
    }
  });
});
