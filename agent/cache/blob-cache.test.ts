import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readdir, readFile, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Digest } from '../oci/digest.ts';
import { BlobCache, type CacheEvents, type CacheOptions } from './blob-cache.ts';
import type { BlobReadable } from './blob-reader.ts';
import { DigestMismatchError, FillAbandonedError, NoRoomError, SizeMismatchError } from './errors.ts';
import type { FillSource } from './fill.ts';
import { BodyBudget } from '../memory/body-budget.ts';
import { sha256 } from '../../test/fixtures/digest.ts';

/** An upstream body the test drives: the fill receives each chunk when the test pushes it. */
class Feed {
  readonly #chunks: Buffer[] = [];
  #ended = false;
  #error: Error | undefined;
  #wake: (() => void) | undefined;

  push(chunk: Buffer): void {
    this.#chunks.push(chunk);
    this.#signal();
  }

  end(): void {
    this.#ended = true;
    this.#signal();
  }

  fail(error: Error): void {
    this.#error = error;
    this.#signal();
  }

  async *body(): AsyncGenerator<Uint8Array> {
    for (;;) {
      const next = this.#chunks.shift();
      if (next) {
        yield next;
        continue;
      }
      if (this.#error) throw this.#error;
      if (this.#ended) return;
      await new Promise<void>((resolve) => (this.#wake = resolve));
    }
  }

  #signal(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}

/** A fetch function that counts its calls and hands out one feed. */
function upstream(size: number | undefined): { feed: Feed; calls: () => number; fetch: () => Promise<FillSource> } {
  const feed = new Feed();
  let calls = 0;
  return {
    feed,
    calls: () => calls,
    fetch: async () => {
      calls += 1;
      return { size, body: feed.body() };
    },
  };
}

/** Pulls a reader step by step, so a test can look at what has arrived so far. */
class Drain {
  readonly chunks: Buffer[] = [];
  readonly #it: AsyncGenerator<Buffer>;

  constructor(reader: BlobReadable, start = 0, end?: number) {
    this.#it = reader.read(start, end);
  }

  get length(): number {
    return this.chunks.reduce((sum, chunk) => sum + chunk.length, 0);
  }

  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }

  /** Pulls until at least `n` bytes arrived. */
  async atLeast(n: number): Promise<void> {
    while (this.length < n) {
      const result = await this.#it.next();
      if (result.done) throw new Error(`reader ended after ${this.length} of ${n} bytes`);
      this.chunks.push(result.value);
    }
  }

  /** Pulls to the end. */
  async rest(): Promise<Buffer> {
    for (;;) {
      const result = await this.#it.next();
      if (result.done) return this.bytes();
      this.chunks.push(result.value);
    }
  }

  async stop(): Promise<void> {
    await this.#it.return(undefined);
  }
}

/** Compares bytes without a deep element-by-element diff (slow for large buffers). */
function expectBytes(actual: Buffer | undefined, expected: Buffer): void {
  expect(actual?.length).toBe(expected.length);
  expect(actual?.equals(expected), 'bytes differ').toBe(true);
}

async function readAll(reader: BlobReadable, start = 0, end?: number): Promise<Buffer> {
  try {
    return await new Drain(reader, start, end).rest();
  } finally {
    reader.close();
  }
}

/** Waits for a condition the cache reaches on its own (e.g. after fire-and-forget file work); not a fixed sleep. */
async function until(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** The process-wide body budget, as the agent has one; every test leaves it at zero. */
const bodies = new BodyBudget();

/** Reads small content the way the mirror does, copying the bytes out and releasing the body at once. */
async function getSmall(cache: BlobCache, digest: Digest): Promise<{ bytes: Buffer; mediaType: string | undefined } | undefined> {
  const small = await cache.getSmall(digest, bodies);
  if (!small) return undefined;
  const bytes = Buffer.from(small.body.bytes);
  small.body.release();
  return { bytes, mediaType: small.mediaType };
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

interface Recorded {
  corrupt: Array<[Digest, Error]>;
  fillFailed: Array<[Digest, Error]>;
  evicted: Digest[];
  storeError: Array<[string, Error]>;
}

function recorder(): { events: CacheEvents; seen: Recorded } {
  const seen: Recorded = { corrupt: [], fillFailed: [], evicted: [], storeError: [] };
  return {
    seen,
    events: {
      corrupt: (digest, error) => seen.corrupt.push([digest, error]),
      fillFailed: (digest, error) => seen.fillFailed.push([digest, error]),
      evicted: (digest) => seen.evicted.push(digest),
      storeError: (operation, error) => seen.storeError.push([operation, error]),
    },
  };
}

describe('BlobCache', () => {
  let dir: string;
  const opened: BlobCache[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rpa-blob-cache-'));
  });

  afterEach(async () => {
    expect(bodies.state()).toEqual({ held: 0, waiting: 0 });
    // Let every fill settle before the directory goes away.
    await Promise.all(opened.splice(0).map((cache) => until(() => cache.stats().inflight === 0, 'fills to settle')));
    await rm(dir, { recursive: true, force: true });
  });

  async function newCache(maxBytes = 1 << 30, events: CacheEvents = {}, options: CacheOptions = {}): Promise<BlobCache> {
    const cache = new BlobCache(dir, maxBytes, events, options);
    await cache.init();
    await cache.scan();
    opened.push(cache);
    return cache;
  }

  const blobFile = (digest: Digest): string => join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length));
  const tmpFiles = (): Promise<string[]> => readdir(join(dir, 'tmp'));
  const blobFiles = (): Promise<string[]> => readdir(join(dir, 'blobs', 'sha256'));

  /** Fills and commits a blob through the cache, the way a miss does. */
  async function fill(cache: BlobCache, content: Buffer): Promise<Digest> {
    const digest = sha256(content);
    const { feed, fetch } = upstream(content.length);
    feed.push(content);
    feed.end();
    expectBytes(await readAll(await cache.open(digest, fetch)), content);
    return digest;
  }

  describe('fills', () => {
    it('serves a miss, then hits from disk without asking upstream again', async () => {
      const cache = await newCache();
      const content = randomBytes(3 * 1024 * 1024 + 17);
      const digest = sha256(content);
      const { feed, fetch, calls } = upstream(content.length);
      const reader = await cache.open(digest, fetch);
      expect(reader.origin).toBe('miss');
      expect(reader.size()).toBe(content.length);
      for (let at = 0; at < content.length; at += 700_000) feed.push(content.subarray(at, at + 700_000));
      feed.end();
      expectBytes(await readAll(reader), content);

      const hit = await cache.open(digest, fetch);
      expect(hit.origin).toBe('hit');
      expect(hit.size()).toBe(content.length);
      expectBytes(await readAll(hit), content);
      expectBytes(await readAll((await cache.lookup(digest))!, 1000, 1010), content.subarray(1000, 1010));
      expect(calls()).toBe(1);
      expectBytes(await readFile(blobFile(digest)), content);
      expect(await tmpFiles()).toEqual([]);
      expect(await cache.sizeOf(digest)).toBe(content.length);
      expect(cache.stats()).toMatchObject({ bytes: content.length, entries: 1, inflight: 0, joined: 0, digestMismatches: 0, scanned: true });
    });

    it('runs one fill for concurrent opens of the same digest', async () => {
      const cache = await newCache();
      const content = randomBytes(200_000);
      const digest = sha256(content);
      const { feed, fetch, calls } = upstream(content.length);
      const readers = await Promise.all(Array.from({ length: 6 }, () => cache.open(digest, fetch)));
      expect(calls()).toBe(1);
      expect(readers.map((r) => r.origin).sort()).toEqual(['joined', 'joined', 'joined', 'joined', 'joined', 'miss']);
      expect(cache.stats()).toMatchObject({ inflight: 1, joined: 5 });
      const bodies = Promise.all(readers.map((r) => readAll(r)));
      feed.push(content.subarray(0, 50_000));
      feed.push(content.subarray(50_000));
      feed.end();
      for (const body of await bodies) expectBytes(body, content);
      expect(calls()).toBe(1);
      // The racing opens created temp files of their own; none is left behind (removed in the background).
      await until(async () => (await tmpFiles()).length === 0, 'the racing temp files to be removed');
      expect(await blobFiles()).toEqual([digest.slice(7)]);
    });

    it('joins the fill that won the race for the digest even when that fill ends while the loser cleans up its own temp file', async () => {
      const cache = await newCache();
      const content = randomBytes(50_000);
      const digest = sha256(content);
      const { feed, fetch, calls } = upstream(content.length);
      const { store } = cache;
      // Both opens create a temp file before either fill exists: one fill wins, the other finds it
      // afterwards. Each temp file's handle tells when it is closed (the winner's: when its fill closes).
      const createTemp = store.createTemp.bind(store);
      const handlesClosed: Array<Promise<void>> = [];
      let bothAsked!: () => void;
      const barrier = new Promise<void>((resolve) => (bothAsked = resolve));
      store.createTemp = async () => {
        if (handlesClosed.push(Promise.resolve()) === 2) bothAsked();
        const index = handlesClosed.length - 1;
        await barrier;
        const temp = await createTemp();
        const close = temp.handle.close.bind(temp.handle);
        let closed!: () => void;
        handlesClosed[index] = new Promise<void>((resolve) => (closed = resolve));
        temp.handle.close = async () => {
          await close();
          closed();
        };
        return temp;
      };
      // The loser's temp file removal is held until the winning fill has ended.
      const removeTemp = store.removeTemp.bind(store);
      let cleaning!: () => void;
      const cleanupStarted = new Promise<void>((resolve) => (cleaning = resolve));
      let finishCleanup!: () => void;
      const cleanupGate = new Promise<void>((resolve) => (finishCleanup = resolve));
      store.removeTemp = async (path) => {
        cleaning();
        await cleanupGate;
        return removeTemp(path);
      };
      const opens = [cache.open(digest, fetch), cache.open(digest, fetch)];
      for (const opened of opens) opened.catch(() => undefined);
      await cleanupStarted;
      feed.push(content);
      feed.end();
      const first = await Promise.race(opens);
      expectBytes(await readAll(first), content);
      // Either the winning fill closed (its only reader is done) or the loser is already attached to it.
      await Promise.race([Promise.all(handlesClosed), Promise.all(opens)]);
      finishCleanup();
      const settled = await Promise.allSettled(opens);
      expect(settled.map((s) => (s.status === 'rejected' ? String(s.reason) : s.status))).toEqual(['fulfilled', 'fulfilled']);
      const other = settled.map((s) => (s.status === 'fulfilled' ? s.value : undefined)).find((reader) => reader !== first)!;
      expectBytes(await readAll(other), content);
      expect(calls()).toBe(1);
      await until(async () => (await tmpFiles()).length === 0, 'the loser temp file to be removed');
      expect(await blobFiles()).toEqual([digest.slice(7)]);
    });

    it('gives a joiner the bytes written before it joined', async () => {
      const cache = await newCache();
      const content = randomBytes(64 * 1024);
      const digest = sha256(content);
      const { feed, fetch, calls } = upstream(content.length);
      const first = await cache.open(digest, fetch);
      const firstDrain = new Drain(first);
      feed.push(content.subarray(0, 40_000));
      await firstDrain.atLeast(40_000 - 1);

      const joined = await cache.open(digest, fetch);
      expect(joined.origin).toBe('joined');
      expect(joined.size()).toBe(content.length);
      const joinedDrain = new Drain(joined);
      // Everything written so far except the held-back last byte is available at once.
      await joinedDrain.atLeast(40_000 - 1);
      expectBytes(joinedDrain.bytes(), content.subarray(0, joinedDrain.length));

      feed.push(content.subarray(40_000));
      feed.end();
      expectBytes(await joinedDrain.rest(), content);
      expectBytes(await firstDrain.rest(), content);
      first.close();
      joined.close();
      expect(calls()).toBe(1);
    });

    it('serves a byte range of a running fill', async () => {
      const cache = await newCache();
      const content = randomBytes(10_000);
      const digest = sha256(content);
      const { feed, fetch } = upstream(content.length);
      const reader = await cache.open(digest, fetch);
      const range = new Drain(reader, 100, 200);
      feed.push(content.subarray(0, 5_000));
      // The range's last byte is held back until the whole blob is verified.
      await range.atLeast(99);
      expect(range.length).toBe(99);
      const rest = range.rest();
      feed.push(content.subarray(5_000));
      feed.end();
      expectBytes(await rest, content.subarray(100, 200));
      reader.close();
    });

    it('holds back the final byte until the content is verified, and never yields it for a wrong digest', async () => {
      const { events, seen } = recorder();
      const cache = await newCache(1 << 30, events);
      const content = randomBytes(5_000);
      const wrong = sha256(Buffer.concat([content.subarray(0, -1), Buffer.from([content.at(-1)! ^ 1])]));
      const { feed, fetch } = upstream(content.length);
      const reader = await cache.open(wrong, fetch);
      const drain = new Drain(reader);
      feed.push(content);
      // Everything has been written to the temp file; the reader has all but the last byte.
      await drain.atLeast(content.length - 1);
      expect(drain.length).toBe(content.length - 1);
      const rest = drain.rest();
      feed.end();
      await expect(rest).rejects.toBeInstanceOf(DigestMismatchError);
      expect(drain.length).toBe(content.length - 1);
      expectBytes(drain.bytes(), content.subarray(0, -1));
      reader.close();

      await until(() => cache.stats().inflight === 0, 'fill to settle');
      expect(await tmpFiles()).toEqual([]);
      expect(await blobFiles()).toEqual([]);
      expect(await cache.lookup(wrong)).toBeUndefined();
      expect(seen.fillFailed.map(([d, e]) => [d, e.name])).toEqual([[wrong, 'DigestMismatchError']]);
      expect(cache.stats()).toMatchObject({ digestMismatches: 1, entries: 0 });
    });

    it.each([
      ['more bytes than announced', 10, 12],
      ['fewer bytes than announced', 20, 12],
    ])('fails on %s', async (_label, announced, actual) => {
      const { events, seen } = recorder();
      const cache = await newCache(1 << 30, events);
      const content = randomBytes(actual);
      const digest = sha256(content);
      const { feed, fetch } = upstream(announced);
      const reader = await cache.open(digest, fetch);
      expect(reader.size()).toBe(announced);
      feed.push(content);
      feed.end();
      await expect(readAll(reader)).rejects.toBeInstanceOf(SizeMismatchError);
      await until(() => cache.stats().inflight === 0, 'fill to settle');
      expect(await blobFiles()).toEqual([]);
      expect(await tmpFiles()).toEqual([]);
      expect(seen.fillFailed).toHaveLength(1);
      expect(seen.fillFailed[0]?.[1]).toMatchObject({ expected: announced, actual });
      expect(cache.stats().digestMismatches).toBe(1);
    });

    it('fails readers with the upstream error when the body breaks off', async () => {
      const cache = await newCache();
      const content = randomBytes(1_000);
      const digest = sha256(content);
      const { feed, fetch } = upstream(content.length);
      const reader = await cache.open(digest, fetch);
      feed.push(content.subarray(0, 500));
      const reset = new Error('socket hang up');
      feed.fail(reset);
      await expect(readAll(reader)).rejects.toBe(reset);
      await until(() => cache.stats().inflight === 0, 'fill to settle');
      expect(await blobFiles()).toEqual([]);
      expect(await tmpFiles()).toEqual([]);
      expect(cache.stats().digestMismatches).toBe(0);
    });

    it('keeps filling after the only reader stops early, and commits the blob', async () => {
      const cache = await newCache();
      const content = randomBytes(100_000);
      const digest = sha256(content);
      const { feed, fetch, calls } = upstream(content.length);
      const reader = await cache.open(digest, fetch);
      const drain = new Drain(reader);
      feed.push(content.subarray(0, 10_000));
      await drain.atLeast(1_000);
      await drain.stop();
      reader.close();

      feed.push(content.subarray(10_000));
      feed.end();
      await until(() => cache.stats().inflight === 0, 'fill to settle');
      expectBytes(await readFile(blobFile(digest)), content);
      const hit = await cache.open(digest, fetch);
      expect(hit.origin).toBe('hit');
      expectBytes(await readAll(hit), content);
      expect(calls()).toBe(1);
    });

    it('rejects open() for every waiter with the error of a fetch that fails, and fetches again later', async () => {
      const cache = await newCache();
      const content = randomBytes(100);
      const digest = sha256(content);
      const notFound = new Error('blob unknown to upstream (404)');
      let calls = 0;
      let rejectFetch: (error: Error) => void = () => undefined;
      const fetched = Promise.withResolvers<void>();
      const failing = (): Promise<FillSource> => {
        calls += 1;
        fetched.resolve();
        return new Promise<FillSource>((_resolve, reject) => (rejectFetch = reject));
      };
      const first = cache.open(digest, failing);
      await fetched.promise;
      const others = [cache.open(digest, failing), cache.open(digest, failing)];
      await until(() => cache.stats().joined === 2, 'the other opens to join');
      rejectFetch(notFound);
      const results = await Promise.allSettled([first, ...others]);
      expect(results).toEqual([
        { status: 'rejected', reason: notFound },
        { status: 'rejected', reason: notFound },
        { status: 'rejected', reason: notFound },
      ]);
      expect(calls).toBe(1);
      await until(() => cache.stats().inflight === 0, 'fill to settle');
      expect(await tmpFiles()).toEqual([]);

      // A failure is not cached: the next open asks upstream again.
      const { feed, fetch, calls: secondCalls } = upstream(content.length);
      feed.push(content);
      feed.end();
      expectBytes(await readAll(await cache.open(digest, fetch)), content);
      expect(secondCalls()).toBe(1);
    });

    it('leaves no unhandled rejection when the client left while its own download failed', async () => {
      const cache = await newCache();
      const digest = sha256(Buffer.from('gone while refused'));
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
      process.on('unhandledRejection', onUnhandled);
      try {
        const client = new AbortController();
        const refused = new Error('refused for this requester');
        const requester = {
          key: 'anonymous',
          ownsFailure: () => true,
          // The client hangs up while upstream is asked; upstream then refuses.
          fetch: async (): Promise<FillSource> => {
            client.abort(new Error('client went away'));
            await new Promise((resolve) => setTimeout(resolve, 5));
            throw refused;
          },
        };
        await expect(cache.open(digest, requester, client.signal)).rejects.toThrow('client went away');
        await until(() => cache.stats().inflight === 0, 'fill to settle');
        await new Promise((resolve) => setTimeout(resolve, 20));
        expect(unhandled).toEqual([]);
      } finally {
        process.off('unhandledRejection', onUnhandled);
      }
    });

    it.each([
      ['no reader is attached', true],
      ['the first reader is still attached', false],
    ])('does not hand a failed fill to a request that arrives before it is cleaned up (%s)', async (_label, closeFirst) => {
      const content = randomBytes(100);
      const digest = sha256(content);
      let lookupAfterFailure: Promise<PromiseSettledResult<BlobReadable | undefined>> | undefined;
      const cache: BlobCache = await newCache(1 << 30, {
        // Runs while the failed fill is being discarded (its temp file not yet removed).
        fillFailed: () => {
          lookupAfterFailure = Promise.allSettled([cache.lookup(digest)]).then(([result]) => result!);
        },
      });
      const { feed, fetch } = upstream(content.length);
      const reader = await cache.open(digest, fetch);
      if (closeFirst) reader.close();
      feed.push(randomBytes(100));
      feed.end();
      await until(() => lookupAfterFailure !== undefined, 'the fill to fail');
      expect(await lookupAfterFailure).toEqual({ status: 'fulfilled', value: undefined });
      if (!closeFirst) {
        await expect(readAll(reader)).rejects.toBeInstanceOf(DigestMismatchError);
      }

      const retry = upstream(content.length);
      retry.feed.push(content);
      retry.feed.end();
      const again = await cache.open(digest, retry.fetch);
      expect(again.origin).toBe('miss');
      expectBytes(await readAll(again), content);
      expect(retry.calls()).toBe(1);
      await until(() => cache.stats().inflight === 0, 'fills to settle');
      expect(await tmpFiles()).toEqual([]);
      expect(await blobFiles()).toEqual([digest.slice(7)]);
    });

    it('still serves verified bytes when the commit fails, and does not cache them', async () => {
      const { events, seen } = recorder();
      const cache = await newCache(1 << 30, events);
      const content = randomBytes(10_000);
      const digest = sha256(content);
      const { feed, fetch } = upstream(content.length);
      const reader = await cache.open(digest, fetch);
      // The rename into blobs/sha256 will fail.
      await rm(join(dir, 'blobs'), { recursive: true });
      feed.push(content);
      feed.end();
      expectBytes(await readAll(reader), content);
      expect(seen.storeError.map(([operation, error]) => [operation, (error as NodeJS.ErrnoException).code])).toEqual([['commit', 'ENOENT']]);
      await until(() => cache.stats().inflight === 0, 'fill to settle');
      expect(await tmpFiles()).toEqual([]);
      expect(await cache.lookup(digest)).toBeUndefined();
      expect(cache.stats()).toMatchObject({ entries: 0, digestMismatches: 0 });
    });

    it('serves but does not cache a blob larger than the cache', async () => {
      const cache = await newCache(1_000);
      const content = randomBytes(1_001);
      const digest = sha256(content);
      const { feed, fetch } = upstream(content.length);
      feed.push(content);
      feed.end();
      expectBytes(await readAll(await cache.open(digest, fetch)), content);
      expect(await cache.lookup(digest)).toBeUndefined();
      expect(await blobFiles()).toEqual([]);
      expect(await tmpFiles()).toEqual([]);
    });

    it('fills an empty blob', async () => {
      const cache = await newCache();
      const empty = Buffer.alloc(0);
      const digest = await fill(cache, empty);
      expectBytes(await readAll((await cache.lookup(digest))!), empty);
    });

    it('fills a blob of unknown size', async () => {
      const cache = await newCache();
      const content = randomBytes(3_000);
      const digest = sha256(content);
      const { feed, fetch } = upstream(undefined);
      const reader = await cache.open(digest, fetch);
      expect(reader.size()).toBeUndefined();
      feed.push(content);
      feed.end();
      expectBytes(await readAll(reader), content);
      expect(await cache.sizeOf(digest)).toBe(content.length);
    });
  });

  describe('eviction', () => {
    it('evicts the least recently used blobs and deletes their files', async () => {
      const { events, seen } = recorder();
      const cache = await newCache(1_000, events);
      const [a, b, c] = [randomBytes(400), randomBytes(400), randomBytes(400)];
      const da = await fill(cache, a);
      const db = await fill(cache, b);
      expect(seen.evicted).toEqual([]);
      // Reading a makes b the oldest.
      await readAll((await cache.lookup(da))!);
      const dc = await fill(cache, c);
      expect(seen.evicted).toEqual([db]);
      await until(async () => !(await exists(blobFile(db))), 'the evicted file to be deleted');
      expect(await cache.lookup(db)).toBeUndefined();
      expect((await blobFiles()).sort()).toEqual([da.slice(7), dc.slice(7)].sort());
      expect(cache.stats()).toMatchObject({ bytes: 800, entries: 2, evictions: 1 });
    });

    it('does not evict a blob being read (that frees nothing): a fill needing its room is relayed, and evicts it once the reader is done', async () => {
      const { events, seen } = recorder();
      const bypassed: Error[] = [];
      const cache = await newCache(1_000, { ...events, cacheBypassed: (_digest, reason) => bypassed.push(reason) });
      const a = randomBytes(600);
      const da = await fill(cache, a);
      const reader = (await cache.lookup(da))!;
      const b = randomBytes(600);
      await fill(cache, b);
      expect(bypassed.map((reason) => (reason as NoRoomError).limit)).toEqual(['cache_max_bytes']);
      expect(seen.evicted).toEqual([]);
      expect(await cache.lookup(sha256(b))).toBeUndefined();
      expectBytes(await new Drain(reader).rest(), a);
      reader.close();
      const c = randomBytes(600);
      const dc = await fill(cache, c);
      expect(seen.evicted).toEqual([da]);
      await until(async () => !(await exists(blobFile(da))), 'the evicted file to be deleted');
      expect(await blobFiles()).toEqual([dc.slice(7)]);
    });

    it('evicts small content (putSmall) the same way', async () => {
      const { events, seen } = recorder();
      const cache = await newCache(100, events);
      const blobs = [randomBytes(40), randomBytes(40), randomBytes(40)];
      const digests = blobs.map(sha256);
      for (const [i, bytes] of blobs.entries()) await cache.putSmall(digests[i]!, bytes, 'application/json');
      expect(seen.evicted).toEqual([digests[0]]);
      await until(async () => !(await exists(blobFile(digests[0]!))), 'the evicted file to be deleted');
      expect(await getSmall(cache, digests[0]!)).toBeUndefined();
      expectBytes((await getSmall(cache, digests[2]!))?.bytes, blobs[2]!);
    });
  });

  describe('small content', () => {
    it('round-trips bytes and media type', async () => {
      const cache = await newCache();
      const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [] }));
      const digest = sha256(manifest);
      await cache.putSmall(digest, manifest, 'application/vnd.oci.image.index.v1+json');
      expect(await getSmall(cache, digest)).toEqual({ bytes: manifest, mediaType: 'application/vnd.oci.image.index.v1+json' });

      const plain = Buffer.from('{"config":{}}');
      const plainDigest = sha256(plain);
      await cache.putSmall(plainDigest, plain, undefined);
      expect(await getSmall(cache, plainDigest)).toEqual({ bytes: plain, mediaType: undefined });

      expect(await getSmall(cache, sha256(Buffer.from('unknown')))).toBeUndefined();
      expect(await tmpFiles()).toEqual([]);
    });

    it('does not store content larger than the cache', async () => {
      const cache = await newCache(10);
      const bytes = randomBytes(11);
      await cache.putSmall(sha256(bytes), bytes, 'application/json');
      expect(await getSmall(cache, sha256(bytes))).toBeUndefined();
      expect(await blobFiles()).toEqual([]);
    });

    it('detects small content corrupted on disk on every read', async () => {
      const { events, seen } = recorder();
      const cache = await newCache(1 << 30, events);
      const bytes = Buffer.from('{"schemaVersion":2}');
      const digest = sha256(bytes);
      await cache.putSmall(digest, bytes, 'application/json');
      await writeFile(blobFile(digest), '{"schemaVersion":3}');
      expect(await getSmall(cache, digest)).toBeUndefined();
      expect(seen.corrupt.map(([d, e]) => [d, e.name])).toEqual([[digest, 'DigestMismatchError']]);
      await until(async () => !(await exists(blobFile(digest))), 'the corrupt file to be deleted');
      expect(await getSmall(cache, digest)).toBeUndefined();
    });
  });

  describe('small content held under the body budget', () => {
    it('holds room for the size before reading, and gives it back when the body is released or found corrupt', async () => {
      const cache = await newCache();
      const budget = new BodyBudget({ bytes: 100, waiters: 1, waitMs: 60_000 });
      const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, pad: 'x'.repeat(40) }));
      const digest = sha256(bytes);
      await cache.putSmall(digest, bytes, 'application/json');
      const first = (await cache.getSmall(digest, budget))!;
      expect(budget.state()).toEqual({ held: bytes.length, waiting: 0 });
      // No room for a second copy until the first is released: it waits, and is read once room frees.
      const second = cache.getSmall(digest, budget);
      await until(() => budget.state().waiting === 1, 'the second read to wait');
      first.body.release();
      const got = (await second)!;
      expectBytes(got.body.bytes, bytes);
      expect(budget.state()).toEqual({ held: bytes.length, waiting: 0 });
      got.body.release();
      // A corrupt file is read under the budget too, and its room given back at once.
      await writeFile(blobFile(digest), Buffer.alloc(bytes.length, 0x20));
      expect(await cache.getSmall(digest, budget)).toBeUndefined();
      expect(budget.state()).toEqual({ held: 0, waiting: 0 });
    });

    it("leaves the budget queue when the caller's signal aborts, holding nothing", async () => {
      const cache = await newCache();
      const budget = new BodyBudget({ bytes: 10, waiters: 1, waitMs: 60_000 });
      const bytes = Buffer.from('{"schemaVersion":2}');
      const digest = sha256(bytes);
      await cache.putSmall(digest, bytes, 'application/json');
      const other = await budget.acquire(10);
      const gone = new AbortController();
      const read = cache.getSmall(digest, budget, gone.signal);
      await until(() => budget.state().waiting === 1, 'the read to wait');
      gone.abort(new Error('client gone'));
      await expect(read).rejects.toThrow('client gone');
      other.release();
      expect(budget.state()).toEqual({ held: 0, waiting: 0 });
      // The lease was given back too: the entry can be evicted.
      expect(cache.stats()).toMatchObject({ entries: 1 });
    });
  });

  describe('room: cache_max_bytes and free disk space, fills included', () => {
    /** Bytes in blobs/ and tmp/: what the cache holds on disk right now. */
    async function bytesOnDisk(): Promise<number> {
      let sum = 0;
      for (const sub of [join(dir, 'blobs', 'sha256'), join(dir, 'tmp')]) {
        for (const name of await readdir(sub)) sum += await stat(join(sub, name)).then((info) => info.size, () => 0);
      }
      return sum;
    }

    /** A file system of `total` bytes whose free space the test sets. */
    function fakeDisk(total: number, free: number): { options: CacheOptions; setFree(bytes: number): void; checks(): number } {
      let current = free;
      let checks = 0;
      return {
        options: {
          freeSpace: async () => {
            checks += 1;
            return { free: current, total };
          },
          recheckBytes: 10_000,
        },
        setFree: (bytes) => {
          current = bytes;
        },
        checks: () => checks,
      };
    }

    it('keeps committed + claimed bytes (temp files included) within cache_max_bytes while fills run; what does not fit is relayed whole', async () => {
      const bypassed: Digest[] = [];
      const cache = await newCache(100_000, { cacheBypassed: (digest) => bypassed.push(digest) });
      const old = await fill(cache, randomBytes(20_000));
      const blobs = Array.from({ length: 5 }, () => randomBytes(30_000));
      const feeds = blobs.map(() => upstream(30_000));
      const readers = await Promise.all(blobs.map((blob, i) => cache.open(sha256(blob), feeds[i]!.fetch)));
      const drains = readers.map((reader) => new Drain(reader));
      let samples = 0;
      const check = async (): Promise<void> => {
        const { bytes, claimed } = cache.stats();
        expect(bytes + claimed).toBeLessThanOrEqual(100_000);
        expect(await bytesOnDisk()).toBeLessThanOrEqual(100_000);
        samples += 1;
      };
      for (let offset = 0; offset < 30_000; offset += 5_000) {
        for (const [i, { feed }] of feeds.entries()) {
          feed.push(blobs[i]!.subarray(offset, offset + 5_000));
          // A fill holds back its last written byte until the blob is verified.
          await drains[i]!.atLeast(offset + 5_000 - 1);
          await check();
        }
      }
      for (const { feed } of feeds) feed.end();
      for (const [i, drain] of drains.entries()) {
        expectBytes(await drain.rest(), blobs[i]!);
        readers[i]!.close();
      }
      await until(() => cache.stats().inflight === 0, 'fills to settle');
      await check();
      // 20,000 were cached: three 30,000-byte fills fit after evicting them, two are relayed.
      expect(samples).toBeGreaterThan(30);
      expect(bypassed).toHaveLength(2);
      expect(await cache.lookup(old)).toBeUndefined();
      expect(await tmpFiles()).toEqual([]);
      const cached = (await blobFiles()).sort();
      expect(cached).toEqual(blobs.map(sha256).filter((d) => !bypassed.includes(d)).map((d) => d.slice(7)).sort());
      expect(cache.stats()).toMatchObject({ bytes: 90_000, claimed: 0, entries: 3 });
    });

    it('claims as it writes when no size was announced, and relays mid-way at cache_max_bytes', async () => {
      const bypassed: Error[] = [];
      const cache = await newCache(50_000, { cacheBypassed: (_digest, reason) => bypassed.push(reason) });
      const content = randomBytes(80_000);
      const { feed, fetch } = upstream(undefined);
      const reader = await cache.open(sha256(content), fetch);
      const drain = new Drain(reader);
      feed.push(content.subarray(0, 40_000));
      await drain.atLeast(39_999);
      expect(cache.stats().claimed).toBe(40_000);
      expect(bypassed).toEqual([]);
      feed.push(content.subarray(40_000));
      feed.end();
      expectBytes(await drain.rest(), content);
      reader.close();
      expect(bypassed.map((reason) => reason.message)).toEqual([expect.stringContaining('cache_max_bytes')]);
      await until(() => cache.stats().inflight === 0, 'fill to settle');
      expect(await tmpFiles()).toEqual([]);
      expect(cache.stats()).toMatchObject({ bytes: 0, claimed: 0, entries: 0 });
    });

    it('switches to relaying mid-way when free space runs out as the fill grows (checked again while it writes)', async () => {
      const bypassed: Error[] = [];
      // 1,000,000-byte disk: the reserve is 50,000.
      const disk = fakeDisk(1_000_000, 500_000);
      const cache = await newCache(1 << 30, { cacheBypassed: (_digest, reason) => bypassed.push(reason) }, disk.options);
      const content = randomBytes(100_000);
      const { feed, fetch } = upstream(undefined);
      const reader = await cache.open(sha256(content), fetch);
      const drain = new Drain(reader);
      feed.push(content.subarray(0, 30_000));
      await drain.atLeast(29_999);
      const [temp] = await tmpFiles();
      expect((await stat(join(dir, 'tmp', temp!))).size).toBe(30_000);
      expect(bypassed).toEqual([]);
      const checksBefore = disk.checks();
      expect(checksBefore).toBeGreaterThanOrEqual(1);
      // Something else filled the disk: 55,000 free, less than the reserve plus the next step.
      disk.setFree(55_000);
      feed.push(content.subarray(30_000, 60_000));
      await drain.atLeast(59_999);
      expect(bypassed).toEqual([expect.any(NoRoomError)]);
      expect(disk.checks()).toBeGreaterThan(checksBefore);
      expect((bypassed[0] as NoRoomError).limit).toBe('free_space');
      expect(bypassed[0]!.message).toContain('not enough free disk space');
      // The file stopped growing; the rest comes from memory.
      expect((await stat(join(dir, 'tmp', temp!))).size).toBe(30_000);
      feed.push(content.subarray(60_000));
      feed.end();
      expectBytes(await drain.rest(), content);
      reader.close();
      await until(() => cache.stats().inflight === 0, 'fill to settle');
      expect(await tmpFiles()).toEqual([]);
      expect(await blobFiles()).toEqual([]);
      expect(cache.stats().claimed).toBe(0);
    });

    it('counts the bytes other running fills announced but have not written yet', async () => {
      const bypassed: Digest[] = [];
      // Reserve 50,000; 300,000 free: one 150,000-byte blob fits, two at once do not.
      const disk = fakeDisk(1_000_000, 300_000);
      const cache = await newCache(1 << 30, { cacheBypassed: (digest) => bypassed.push(digest) }, disk.options);
      const [a, b] = [randomBytes(150_000), randomBytes(150_000)];
      const [ua, ub] = [upstream(a.length), upstream(b.length)];
      const readers = [await cache.open(sha256(a), ua.fetch), await cache.open(sha256(b), ub.fetch)];
      // Neither has written a byte when both are checked.
      ua.feed.push(a);
      ua.feed.end();
      ub.feed.push(b);
      ub.feed.end();
      expectBytes(await readAll(readers[0]!), a);
      expectBytes(await readAll(readers[1]!), b);
      await until(() => cache.stats().inflight === 0, 'fills to settle');
      expect(bypassed).toEqual([sha256(b)]);
      expect(await blobFiles()).toEqual([sha256(a).slice(7)]);
    });

    it('does not cache small content (putSmall) past the free-space reserve', async () => {
      const disk = fakeDisk(1_000_000, 100_000);
      const cache = await newCache(2_000, {}, disk.options);
      const fits = randomBytes(800);
      expect(await cache.putSmall(sha256(fits), fits, undefined)).toBe(true);
      disk.setFree(50_500);
      const other = randomBytes(800);
      expect(await cache.putSmall(sha256(other), other, undefined)).toBe(false);
      expect(await blobFiles()).toEqual([sha256(fits).slice(7)]);
      expect(await tmpFiles()).toEqual([]);
      expect(cache.stats()).toMatchObject({ bytes: 800, claimed: 0 });
    });
  });

  describe('relaying fills nobody reads', () => {
    /** An upstream body that can be destroyed, like undici's, and tells when its download ended. */
    function destroyable(size?: number): { feed: Feed; fetch: () => Promise<FillSource>; destroyed: () => Error | undefined; ended: () => number } {
      const feed = new Feed();
      let destroyed: Error | undefined;
      let ended = 0;
      return {
        feed,
        destroyed: () => destroyed,
        ended: () => ended,
        fetch: async () => ({
          size,
          body: Object.assign(feed.body(), {
            destroy: (error?: Error) => {
              destroyed = error ?? new Error('destroyed');
              feed.fail(destroyed);
            },
          }),
          ended: () => {
            ended += 1;
          },
        }),
      };
    }

    it('stops a relaying fill once its last reader left and relayed bytes were dropped: upstream destroyed, download ended, nothing cached', async () => {
      const { events, seen } = recorder();
      const cache = await newCache(50_000, events);
      const content = randomBytes(100_000);
      const digest = sha256(content);
      const up = destroyable();
      const reader = await cache.open(digest, up.fetch);
      const drain = new Drain(reader);
      up.feed.push(content.subarray(0, 40_000));
      await drain.atLeast(39_999);
      // Past cache_max_bytes: the fill relays from memory from here on.
      up.feed.push(content.subarray(40_000, 70_000));
      await drain.atLeast(69_000);
      await drain.stop();
      reader.close();
      await until(() => up.ended() === 1, 'the download to end');
      expect(up.destroyed()).toBeInstanceOf(FillAbandonedError);
      await until(() => cache.stats().inflight === 0, 'the fill to settle');
      expect(await tmpFiles()).toEqual([]);
      expect(await blobFiles()).toEqual([]);
      expect(cache.stats()).toMatchObject({ entries: 0, claimed: 0 });
      // Nobody was there to fail: it is no upstream failure either.
      expect(seen.fillFailed).toEqual([]);
      // The next request fetches again.
      const again = upstream(content.length);
      again.feed.push(content);
      again.feed.end();
      expectBytes(await readAll(await cache.open(digest, again.fetch)), content);
    });

    it('stops it at the next chunk when the body cannot be destroyed', async () => {
      const cache = await newCache(50_000);
      const content = randomBytes(100_000);
      const { feed, fetch } = upstream(undefined);
      const reader = await cache.open(sha256(content), fetch);
      const drain = new Drain(reader);
      feed.push(content.subarray(0, 60_000));
      await drain.atLeast(59_000);
      await drain.stop();
      reader.close();
      feed.push(content.subarray(60_000, 61_000));
      await until(() => cache.stats().inflight === 0, 'the fill to settle');
      expect(await tmpFiles()).toEqual([]);
    });

    it('lets a file-backed fill whose readers all left complete and be cached when upstream announced its size', async () => {
      const cache = await newCache(1 << 30);
      const content = randomBytes(100_000);
      const digest = sha256(content);
      const up = destroyable(content.length);
      const reader = await cache.open(digest, up.fetch);
      const drain = new Drain(reader);
      up.feed.push(content.subarray(0, 40_000));
      await drain.atLeast(39_999);
      await drain.stop();
      reader.close();
      up.feed.push(content.subarray(40_000));
      up.feed.end();
      await until(() => up.ended() === 1, 'the download to end');
      expect(up.destroyed()).toBeUndefined();
      await until(() => cache.stats().inflight === 0, 'the fill to settle');
      expect(await blobFiles()).toEqual([digest.slice(7)]);
    });

    it('stops a file-backed fill whose readers all left when upstream never announced its size: upstream destroyed, nothing cached', async () => {
      const cache = await newCache(1 << 30);
      const content = randomBytes(100_000);
      const up = destroyable();
      const reader = await cache.open(sha256(content), up.fetch);
      const drain = new Drain(reader);
      up.feed.push(content.subarray(0, 40_000));
      await drain.atLeast(39_999);
      await drain.stop();
      reader.close();
      await until(() => up.ended() === 1, 'the download to end');
      expect(up.destroyed()?.message).toContain('never announced its size');
      await until(() => cache.stats().inflight === 0, 'the fill to settle');
      expect(await blobFiles()).toEqual([]);
      expect(await tmpFiles()).toEqual([]);
    });
  });

  describe('clients leaving before upstream answered', () => {
    /** A fetch that waits (like a download queued for a slot) until `unwanted` aborts or the test answers. */
    function queued(): { fetch: (unwanted: AbortSignal) => Promise<FillSource>; answer(size: number): Feed; unwanted: () => AbortSignal | undefined; calls: () => number } {
      let signal: AbortSignal | undefined;
      let resolve: ((source: FillSource) => void) | undefined;
      let calls = 0;
      return {
        fetch: (unwanted) => {
          calls += 1;
          signal = unwanted;
          return new Promise<FillSource>((ok, fail) => {
            resolve = ok;
            unwanted.addEventListener('abort', () => fail(unwanted.reason), { once: true });
          });
        },
        answer: (size) => {
          const feed = new Feed();
          resolve?.({ size, body: feed.body() });
          return feed;
        },
        unwanted: () => signal,
        calls: () => calls,
      };
    }

    it('the only client leaving drops the fill before upstream is asked; nothing counts as failed', async () => {
      const { events, seen } = recorder();
      const cache = await newCache(1 << 30, events);
      const content = randomBytes(1_000);
      const digest = sha256(content);
      const slot = queued();
      const client = new AbortController();
      const opening = cache.open(digest, slot.fetch, client.signal);
      await until(() => slot.calls() === 1, 'the fetch to start');
      const gone = new Error('client gone');
      client.abort(gone);
      await expect(opening).rejects.toBe(gone);
      expect(slot.unwanted()?.aborted).toBe(true);
      expect(slot.unwanted()?.reason).toBeInstanceOf(FillAbandonedError);
      await until(() => cache.stats().inflight === 0, 'the fill to be dropped');
      expect(seen.fillFailed).toEqual([]);
      expect(await tmpFiles()).toEqual([]);
      // The next request fetches afresh.
      const again = upstream(content.length);
      again.feed.push(content);
      again.feed.end();
      expectBytes(await readAll(await cache.open(digest, again.fetch)), content);
      expect(again.calls()).toBe(1);
    });

    it('one client leaving does not drop the fill others wait for', async () => {
      const cache = await newCache();
      const content = randomBytes(1_000);
      const digest = sha256(content);
      const slot = queued();
      const leaving = new AbortController();
      const first = cache.open(digest, slot.fetch, leaving.signal);
      await until(() => slot.calls() === 1, 'the fetch to start');
      const second = cache.open(digest, slot.fetch);
      await until(() => cache.stats().joined === 1, 'the second client to join');
      leaving.abort(new Error('client gone'));
      await expect(first).rejects.toThrow('client gone');
      expect(slot.unwanted()?.aborted).toBe(false);
      const feed = slot.answer(content.length);
      feed.push(content);
      feed.end();
      expectBytes(await readAll(await second), content);
      expect(slot.calls()).toBe(1);
    });

    it('refuses at once a client that is already gone, without fetching', async () => {
      const cache = await newCache();
      const slot = queued();
      const gone = new AbortController();
      gone.abort(new Error('client gone'));
      await expect(cache.open(sha256(randomBytes(10)), slot.fetch, gone.signal)).rejects.toThrow('client gone');
      expect(slot.calls()).toBe(0);
    });
  });

  describe('restart', () => {
    it('serves committed blobs after init() and scan(), and removes temp leftovers', async () => {
      const first = await newCache();
      const blob = randomBytes(50_000);
      const digest = await fill(first, blob);
      const manifest = Buffer.from('{"schemaVersion":2,"manifests":[]}');
      const manifestDigest = sha256(manifest);
      await first.putSmall(manifestDigest, manifest, 'application/vnd.oci.image.index.v1+json');
      await writeFile(join(dir, 'tmp', 'crashed-fill'), randomBytes(1_000));
      await writeFile(join(dir, 'blobs', 'sha256', 'not-a-digest'), 'ignored');

      const second = new BlobCache(dir, 1 << 30);
      opened.push(second);
      expect(await second.init()).toEqual({ removedTemp: 1 });
      expect(await tmpFiles()).toEqual([]);
      expect(second.ready).toBe(false);
      expect(await second.scan()).toEqual({ blobs: 2, bytes: blob.length + manifest.length });
      expect(second.ready).toBe(true);

      const reader = await second.open(digest, () => Promise.reject(new Error('upstream must not be asked')));
      expect(reader.origin).toBe('hit');
      expectBytes(await readAll(reader), blob);
      expect(await getSmall(second, manifestDigest)).toEqual({ bytes: manifest, mediaType: 'application/vnd.oci.image.index.v1+json' });
      expect(second.stats()).toMatchObject({ entries: 2, bytes: blob.length + manifest.length });
    });

    it('serves committed blobs before the scan has finished', async () => {
      const first = await newCache();
      const blob = randomBytes(1_000);
      const digest = await fill(first, blob);
      const second = new BlobCache(dir, 1 << 30);
      opened.push(second);
      await second.init();
      expect(await second.sizeOf(digest)).toBe(blob.length);
      expectBytes(await readAll((await second.lookup(digest))!), blob);
    });

    it('restores LRU order from file times and evicts what no longer fits', async () => {
      const first = await newCache();
      const blobs = [randomBytes(100), randomBytes(100), randomBytes(100)];
      const digests: Digest[] = [];
      for (const bytes of blobs) digests.push(await fill(first, bytes));
      // Used order: 1 (oldest), 2, 0 (newest).
      const times = [3_000, 1_000, 2_000];
      for (const [i, digest] of digests.entries()) await utimes(blobFile(digest), times[i]!, times[i]!);

      const { events, seen } = recorder();
      const second = new BlobCache(dir, 250, events);
      opened.push(second);
      await second.init();
      await second.scan();
      expect(seen.evicted).toEqual([digests[1]]);
      await until(async () => !(await exists(blobFile(digests[1]!))), 'the evicted file to be deleted');
      // The next commit evicts the next oldest.
      await fill(second, randomBytes(100));
      expect(seen.evicted).toEqual([digests[1], digests[2]]);
    });

    it('keeps blobs committed while the start-up scan ran as the most recently used', async () => {
      const first = await newCache();
      const older = await fill(first, randomBytes(100));
      const newer = await fill(first, randomBytes(100));
      await utimes(blobFile(older), 1_000, 1_000);
      await utimes(blobFile(newer), 2_000, 2_000);

      const { events, seen } = recorder();
      const second = new BlobCache(dir, 250, events);
      opened.push(second);
      await second.init();
      // Committed before the scan indexed what is on disk: newer than anything found there.
      const during = await fill(second, randomBytes(100));
      await second.scan();
      expect(seen.evicted).toEqual([older]);
      expect(await exists(blobFile(older))).toBe(false);
      // The next commit evicts the oldest found blob, not the one committed during the scan.
      await fill(second, randomBytes(100));
      expect(seen.evicted).toEqual([older, newer]);
      expect(await exists(blobFile(during))).toBe(true);
    });

    it('detects a blob corrupted on disk at its first serve and removes it', async () => {
      const first = await newCache();
      const blob = randomBytes(20_000);
      const digest = await fill(first, blob);
      const corrupted = Buffer.from(blob);
      corrupted[12_345] = corrupted[12_345]! ^ 0xff;
      await writeFile(blobFile(digest), corrupted);

      const { events, seen } = recorder();
      const second = await newCache(1 << 30, events);
      expect(await second.lookup(digest)).toBeUndefined();
      expect(seen.corrupt).toHaveLength(1);
      expect(seen.corrupt[0]?.[0]).toBe(digest);
      expect(seen.corrupt[0]?.[1]).toBeInstanceOf(DigestMismatchError);
      await until(async () => !(await exists(blobFile(digest))), 'the corrupt file to be deleted');
      expect(second.stats()).toMatchObject({ entries: 0, digestMismatches: 1 });

      // The next open fetches a good copy.
      const { feed, fetch, calls } = upstream(blob.length);
      feed.push(blob);
      feed.end();
      const reader = await second.open(digest, fetch);
      expect(reader.origin).toBe('miss');
      expectBytes(await readAll(reader), blob);
      expect(calls()).toBe(1);
    });

    it('re-hashes a found blob once, for concurrent first serves', async () => {
      const first = await newCache();
      const blob = randomBytes(20_000);
      const digest = await fill(first, blob);
      const second = await newCache();
      const rehash = vi.spyOn(second.store, 'verify');
      const readers = await Promise.all([second.lookup(digest), second.lookup(digest), second.lookup(digest)]);
      for (const reader of readers) expectBytes(await readAll(reader!), blob);
      // Served again, one after the other: verified once, not again.
      for (let i = 0; i < 2; i += 1) expectBytes(await readAll((await second.lookup(digest))!), blob);
      expect(rehash.mock.calls).toEqual([[digest]]);
    });

    it('detects a blob truncated after restart, before its first serve (size check first, then hash)', async () => {
      const first = await newCache();
      const blob = randomBytes(20_000);
      const digest = await fill(first, blob);
      const { events, seen } = recorder();
      const second = await newCache(1 << 30, events);
      await truncate(blobFile(digest), 10_000);
      expect(await second.lookup(digest)).toBeUndefined();
      expect(seen.corrupt[0]?.[1]).toBeInstanceOf(SizeMismatchError);
      await until(async () => !(await exists(blobFile(digest))), 'the corrupt file to be deleted');
    });

    it('detects a blob rewritten in place with the same size while running (stamp changed → re-hash)', async () => {
      const { events, seen } = recorder();
      const cache = await newCache(1 << 30, events);
      const blob = randomBytes(20_000);
      const digest = await fill(cache, blob);
      expectBytes(await readAll((await cache.lookup(digest))!), blob);
      const handle = await open(blobFile(digest), 'r+');
      await handle.write(Buffer.from([blob[100]! ^ 0xff]), 0, 1, 100);
      await handle.close();
      expect(await cache.lookup(digest)).toBeUndefined();
      expect(seen.corrupt[0]?.[1]).toBeInstanceOf(DigestMismatchError);
    });

    it('detects a verified blob truncated on disk by its size', async () => {
      const { events, seen } = recorder();
      const cache = await newCache(1 << 30, events);
      const blob = randomBytes(20_000);
      const digest = await fill(cache, blob);
      await truncate(blobFile(digest), 19_999);
      expect(await cache.lookup(digest)).toBeUndefined();
      expect(seen.corrupt).toHaveLength(1);
      expect(seen.corrupt[0]?.[1]).toBeInstanceOf(SizeMismatchError);
      expect(seen.corrupt[0]?.[1]).toMatchObject({ expected: 20_000, actual: 19_999 });
      await until(async () => !(await exists(blobFile(digest))), 'the corrupt file to be deleted');
      expect(cache.stats()).toMatchObject({ entries: 0, bytes: 0, digestMismatches: 1 });
    });

    it('treats a blob deleted behind its back as a miss', async () => {
      const { events, seen } = recorder();
      const cache = await newCache(1 << 30, events);
      const digest = await fill(cache, randomBytes(1_000));
      await rm(blobFile(digest));
      expect(await cache.lookup(digest)).toBeUndefined();
      expect(await cache.sizeOf(digest)).toBeUndefined();
      expect(seen.corrupt.map(([d, e]) => [d, (e as NodeJS.ErrnoException).code])).toEqual([[digest, 'ENOENT']]);
    });
  });
});
