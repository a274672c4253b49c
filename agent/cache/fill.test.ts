import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { type Digest, sha256Of } from '../oci/digest.ts';
import { FillAbandonedError } from './errors.ts';
import { Fill, type FillSource } from './fill.ts';

const DIGEST = `sha256:${'1'.repeat(64)}` as Digest;
const CHUNK = 16 * 1024;

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
    // 256 Ki Buffer objects would cost tens of MiB; four blocks of 64 KiB cost about the bytes.
    expect(fill.relayBuffers).toBe(count / (64 * 1024));
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
