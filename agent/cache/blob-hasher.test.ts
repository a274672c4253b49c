import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type Digest, sha256Of } from '../oci/digest.ts';
import { HashThread, InlineHasher, OFF_THREAD_MIN_BYTES, hasherFor } from './blob-hasher.ts';
import { DigestMismatchError } from './errors.ts';
import { Fill } from './fill.ts';

const MiB = 1024 * 1024;

function inlineHex(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Feeds `data` to `update` in pieces of `piece` bytes. */
function feed(update: (chunk: Buffer) => void, data: Buffer, piece: number): void {
  for (let at = 0; at < data.length; at += piece) update(data.subarray(at, at + piece));
}

describe('hashing on the hashing thread', () => {
  const threads: HashThread[] = [];
  afterEach(async () => {
    await Promise.all(threads.splice(0).map((t) => t.terminate()));
  });
  const thread = (): HashThread => {
    const t = new HashThread();
    threads.push(t);
    return t;
  };

  it('gives the digest SHA-256 gives inline, whatever the pieces (1 byte, 64 KiB, larger than a block)', async () => {
    const data = randomBytes(3 * MiB + 12_345);
    const t = thread();
    for (const piece of [1, 64 * 1024, 3 * MiB - 1]) {
      const hasher = t.hasher();
      feed((chunk) => hasher.update(chunk), piece === 1 ? data.subarray(0, 70_000) : data, piece);
      expect(await hasher.digest()).toBe(inlineHex(piece === 1 ? data.subarray(0, 70_000) : data));
    }
  });

  it('keeps the hashes of blobs filled at once apart', async () => {
    const t = thread();
    const blobs = [randomBytes(2 * MiB + 1), randomBytes(5 * MiB), randomBytes(1)];
    const hashers = blobs.map(() => t.hasher());
    // Interleaved, as concurrent fills feed it.
    for (let at = 0; at < 5 * MiB; at += 256 * 1024) {
      blobs.forEach((blob, i) => {
        if (at < blob.length) hashers[i]!.update(blob.subarray(at, at + 256 * 1024));
      });
    }
    expect(await Promise.all(hashers.map((h) => h.digest()))).toEqual(blobs.map(inlineHex));
  });

  it('tells its backlog, and drained() waits until the thread caught up', async () => {
    const t = thread();
    const hasher = t.hasher();
    feed((chunk) => hasher.update(chunk), randomBytes(16 * MiB), 64 * 1024);
    expect(hasher.backlog).toBeGreaterThan(0);
    await hasher.drained(1);
    expect(hasher.backlog).toBe(0);
    await hasher.digest();
  });

  it('fails every hash in flight when the thread dies; the next hasher gets a new thread', async () => {
    const shared = HashThread.shared();
    const hasher = shared.hasher();
    hasher.update(randomBytes(2 * MiB));
    await shared.terminate();
    await expect(hasher.digest()).rejects.toThrow(/hashing thread exited/);
    const next = hasherFor(OFF_THREAD_MIN_BYTES);
    const data = randomBytes(MiB + 7);
    next.update(data);
    expect(await next.digest()).toBe(inlineHex(data));
    expect(HashThread.shared()).not.toBe(shared);
  });

  it('stops after a while without work (its isolate is not held by an idle agent), not while a hash is in flight', async () => {
    const t = thread();
    const idle = new HashThread(100);
    threads.push(idle);
    const hasher = idle.hasher();
    hasher.update(randomBytes(MiB));
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(idle.running).toBe(true);
    await hasher.digest();
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(idle.running).toBe(false);
    expect(t.running).toBe(true);
  });

  it('is used from OFF_THREAD_MIN_BYTES up; smaller blobs and blobs of unknown size are hashed inline', () => {
    expect(hasherFor(OFF_THREAD_MIN_BYTES - 1)).toBeInstanceOf(InlineHasher);
    expect(hasherFor(undefined)).toBeInstanceOf(InlineHasher);
    expect(hasherFor(OFF_THREAD_MIN_BYTES)).not.toBeInstanceOf(InlineHasher);
  });
});

describe('a fill hashed on the thread', () => {
  async function fillOf(content: Buffer, digest: Digest, size = content.length): Promise<{ fill: Fill; cleanup: () => Promise<void> }> {
    const path = join(tmpdir(), `fill-hash-${process.pid}-${Math.random().toString(16).slice(2)}`);
    const handle = await open(path, 'w+');
    // Socket-sized chunks, as undici hands them over.
    const chunks: Buffer[] = [];
    for (let at = 0; at < content.length; at += 64 * 1024) chunks.push(content.subarray(at, at + 64 * 1024));
    const fill = new Fill(digest, path, { handle, hasher: () => HashThread.shared().hasher() }, Promise.resolve({ size, body: Readable.from(chunks) }));
    return { fill, cleanup: () => rm(path, { force: true }) };
  }

  it('verifies the right bytes', async () => {
    const content = randomBytes(OFF_THREAD_MIN_BYTES + 3);
    const { fill, cleanup } = await fillOf(content, sha256Of(content));
    expect(await fill.verified()).toBe(true);
    expect(fill.written).toBe(content.length);
    await fill.complete();
    await cleanup();
  });

  it('refuses a blob with one byte changed, at the start, in the middle or at the very end', async () => {
    const content = randomBytes(OFF_THREAD_MIN_BYTES + 5);
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
});
