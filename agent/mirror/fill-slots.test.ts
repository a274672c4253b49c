import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Lane } from '../admission/priority.ts';
import { BlobCache } from '../cache/blob-cache.ts';
import type { BlobReadable } from '../cache/blob-reader.ts';
import type { MirrorConfig } from '../config/types.ts';
import { toOciError } from '../http/errors.ts';
import { type Digest, sha256Of } from '../oci/digest.ts';
import { type RepositoryName, parseRepositoryName } from '../oci/reference.ts';
import { UpstreamClient } from '../upstream/client.ts';
import { FillQueueFullError } from './errors.ts';
import { type FillSlotEvent, FillSlots } from './fill-slots.ts';
import { Mirror } from './mirror.ts';
import { TagStore } from './tag-store.ts';

const REGISTRY = 'registry.test:5000';
const NAME: RepositoryName = parseRepositoryName('team/app');

const sha256 = sha256Of;

/** Settles `promise` into a value the test can look at without awaiting it to the end. */
function track<T>(promise: Promise<T>): { state: () => 'pending' | 'resolved' | 'rejected'; value: () => T | undefined; error: () => unknown } {
  let state: 'pending' | 'resolved' | 'rejected' = 'pending';
  let value: T | undefined;
  let error: unknown;
  promise.then(
    (v) => {
      state = 'resolved';
      value = v;
    },
    (e: unknown) => {
      state = 'rejected';
      error = e;
    },
  );
  return { state: () => state, value: () => value, error: () => error };
}

/** Waits for a state the code under test reaches on its own (file I/O involved); bounded, not a fixed sleep. */
async function until(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** Lets every pending promise callback run (no timer involved). */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i += 1) await new Promise<void>((resolve) => setImmediate(resolve));
}

describe('FillSlots', () => {
  function slots(running: number, queued: number): { slots: FillSlots; events: FillSlotEvent[] } {
    const events: FillSlotEvent[] = [];
    return { slots: new FillSlots(REGISTRY, { running, queued }, (event) => events.push(event)), events };
  }

  it('grants up to `running` slots at once, then queues first come, first served', async () => {
    const { slots: s, events } = slots(2, 10);
    const held = [await s.acquire(), await s.acquire()];
    expect(s.running).toBe(2);
    const order: string[] = [];
    const waiters = ['w1', 'w2', 'w3'].map((name) => s.acquire().then((slot) => (order.push(name), slot)));
    await settle();
    expect(order).toEqual([]);
    expect(s.waiting).toBe(3);
    held[1]!.release();
    await settle();
    expect(order).toEqual(['w1']);
    held[0]!.release();
    await settle();
    expect(order).toEqual(['w1', 'w2']);
    const w1 = await waiters[0]!;
    w1.release();
    await settle();
    expect(order).toEqual(['w1', 'w2', 'w3']);
    // A released slot goes to the next waiter: the count never dropped below the limit meanwhile.
    expect(s.running).toBe(2);
    for (const slot of [await waiters[1]!, await waiters[2]!]) slot.release();
    expect(s.running).toBe(0);
    expect(events).toEqual(['waiting', 'waiting', 'waiting', 'started', 'started', 'started']);
  });

  it('refuses beyond the queue bound with FillQueueFullError, which becomes a 429 TOOMANYREQUESTS', async () => {
    const { slots: s, events } = slots(1, 2);
    const held = await s.acquire();
    const queued = [track(s.acquire()), track(s.acquire())];
    const refused = track(s.acquire());
    await settle();
    expect(refused.state()).toBe('rejected');
    const error = refused.error() as FillQueueFullError;
    expect(error).toBeInstanceOf(FillQueueFullError);
    expect(error).toMatchObject({ registry: REGISTRY, running: 1, queued: 2 });
    expect(queued.map((q) => q.state())).toEqual(['pending', 'pending']);
    expect(events).toEqual(['waiting', 'waiting', 'rejected']);

    const oci = toOciError(error);
    expect(oci.status).toBe(429);
    expect(oci.code).toBe('TOOMANYREQUESTS');
    expect(Number(oci.headers['retry-after'])).toBeGreaterThan(0);
    expect(oci.toJSON()).toEqual({ errors: [{ code: 'TOOMANYREQUESTS', message: expect.stringContaining(REGISTRY), detail: { registry: REGISTRY, running: 1, queued: 2 } }] });
    expect(oci.cause).toBe(error);

    held.release();
    await settle();
    expect(queued.map((q) => q.state())).toEqual(['resolved', 'pending']);
  });

  it('counts a slot released twice once', async () => {
    const { slots: s } = slots(1, 5);
    const first = await s.acquire();
    const waiter = track(s.acquire());
    const third = track(s.acquire());
    first.release();
    first.release();
    await settle();
    expect(waiter.state()).toBe('resolved');
    expect(third.state()).toBe('pending');
    expect(s.running).toBe(1);
  });

  it('lets a waiter whose signal aborts leave the queue; the others keep their order', async () => {
    const { slots: s, events } = slots(1, 5);
    const held = await s.acquire();
    const leaving = new AbortController();
    const staying = new AbortController();
    const first = track(s.acquire(leaving.signal));
    const second = track(s.acquire(staying.signal));
    const reason = new Error('nobody wants it');
    leaving.abort(reason);
    await settle();
    expect(first.state()).toBe('rejected');
    expect(first.error()).toBe(reason);
    expect(s.waiting).toBe(1);
    held.release();
    await settle();
    expect(second.state()).toBe('resolved');
    // Aborting after the grant changes nothing.
    staying.abort(new Error('late'));
    second.value()!.release();
    expect(s.running).toBe(0);
    expect(events).toEqual(['waiting', 'waiting', 'abandoned', 'started']);
  });

  it('refuses at once a request whose signal already aborted, without queueing it', async () => {
    const { slots: s, events } = slots(1, 5);
    const gone = new AbortController();
    gone.abort(new Error('gone'));
    await expect(s.acquire(gone.signal)).rejects.toThrow('gone');
    expect(s.running).toBe(0);
    expect(events).toEqual([]);
  });
});

describe('FillSlots priorities', () => {
  function slots(running: number, queued: number): { slots: FillSlots; events: FillSlotEvent[] } {
    const events: FillSlotEvent[] = [];
    return { slots: new FillSlots(REGISTRY, { running, queued }, (event) => events.push(event)), events };
  }
  const background = (): Lane => new Lane('background');

  it('admits every live waiter before any background one, whenever they came', async () => {
    const { slots: s, events } = slots(1, 10);
    let held = await s.acquire();
    const order: string[] = [];
    const ask = (name: string, lane?: Lane): Promise<void> =>
      s.acquire(undefined, lane).then((slot) => {
        order.push(name);
        held = slot;
      });
    const waiters = [ask('b1', background()), ask('l1'), ask('b2', background()), ask('l2')];
    await settle();
    expect(s.waiting).toBe(4);
    for (let i = 0; i < 4; i += 1) {
      held.release();
      await settle();
    }
    await Promise.all(waiters);
    expect(order).toEqual(['l1', 'l2', 'b1', 'b2']);
    expect(events).toEqual(['waiting', 'waiting', 'waiting', 'waiting', 'started', 'started', 'started', 'started']);
  });

  it('never lets background downloads take the last free slot; a live request takes it at once', async () => {
    const { slots: s } = slots(3, 10);
    expect(s.free('background')).toBe(true);
    const b1 = await s.acquire(undefined, background());
    const b2 = await s.acquire(undefined, background());
    // One slot is free, but it is the last: background waits, live does not.
    expect(s.free('background')).toBe(false);
    expect(s.free('live')).toBe(true);
    const b3 = track(s.acquire(undefined, background()));
    await settle();
    expect(b3.state()).toBe('pending');
    const live = await s.acquire();
    expect(s.running).toBe(3);
    // A background download ending makes room for the next background one, never more than 2 at once.
    b1.release();
    await settle();
    expect(b3.state()).toBe('resolved');
    expect(s.running).toBe(3);
    live.release();
    await settle();
    expect(s.free('background')).toBe(false);
    for (const slot of [b2, b3.value()!]) slot.release();
    expect(s.running).toBe(0);
  });

  it('lets background take the only slot of a mirror that has one', async () => {
    const { slots: s } = slots(1, 10);
    expect(s.free('background')).toBe(true);
    const only = await s.acquire(undefined, background());
    expect(s.running).toBe(1);
    only.release();
  });

  it('moves a waiting background request up when its lane is raised: ahead of background, and into the last slot', async () => {
    const { slots: s } = slots(2, 10);
    const running = await s.acquire(undefined, background());
    const lanes = [background(), background()];
    const first = track(s.acquire(undefined, lanes[0]));
    const second = track(s.acquire(undefined, lanes[1]));
    await settle();
    expect([first.state(), second.state()]).toEqual(['pending', 'pending']);
    // A live request joined the second: it is live now and the last slot is its.
    lanes[1]!.raise();
    await settle();
    expect([first.state(), second.state()]).toEqual(['pending', 'resolved']);
    running.release();
    await settle();
    expect(first.state()).toBe('resolved');
    for (const slot of [first.value()!, second.value()!]) slot.release();
    expect(s.running).toBe(0);
  });

  it('bounds the queue per priority: background requests filling it do not get live ones refused', async () => {
    const { slots: s, events } = slots(1, 2);
    const held = await s.acquire();
    const queued = [track(s.acquire(undefined, background())), track(s.acquire(undefined, background()))];
    await expect(s.acquire(undefined, background())).rejects.toBeInstanceOf(FillQueueFullError);
    const live = [track(s.acquire()), track(s.acquire())];
    await expect(s.acquire()).rejects.toBeInstanceOf(FillQueueFullError);
    await settle();
    expect([...queued, ...live].map((q) => q.state())).toEqual(['pending', 'pending', 'pending', 'pending']);
    expect(events).toEqual(['waiting', 'waiting', 'rejected', 'waiting', 'waiting', 'rejected']);
    held.release();
    await settle();
    expect(live[0]!.state()).toBe('resolved');
  });

  it('lets an aborted background waiter leave; a raised one that aborts leaves the live queue', async () => {
    const { slots: s, events } = slots(1, 5);
    const held = await s.acquire();
    const gone = new AbortController();
    const lane = background();
    const leaving = track(s.acquire(gone.signal, lane));
    await settle();
    lane.raise();
    gone.abort(new Error('gone'));
    await settle();
    expect(leaving.state()).toBe('rejected');
    expect(s.waiting).toBe(0);
    held.release();
    expect(s.running).toBe(0);
    expect(events).toEqual(['waiting', 'abandoned']);
  });
});

/** How the test upstream answers one blob request. */
type Script = (req: IncomingMessage, res: ServerResponse) => void;

/**
 * A registry on loopback that answers blob GETs with what the test scripts, one script per
 * request of a digest in order, and records each request (digest, Range, whether it is still open).
 */
class BlobUpstream {
  readonly requests: Array<{ digest: string; range: string | undefined; open: boolean }> = [];
  readonly url: URL;
  readonly #server: Server;
  readonly #scripts = new Map<string, Script[]>();
  readonly #changes = new EventEmitter();

  private constructor(server: Server) {
    this.#server = server;
    this.url = new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`);
    server.on('request', (req: IncomingMessage, res: ServerResponse) => {
      req.resume();
      const digest = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(req.url ?? '')?.[1] ?? '';
      // An access check (a HEAD while the slots are busy) is answered from the scripts' presence
      // and is neither a download nor recorded as one.
      if (req.method === 'HEAD') {
        res.writeHead(this.#scripts.has(digest) ? 200 : 404, { 'content-length': '0' });
        res.end();
        return;
      }
      const record = { digest, range: req.headers.range, open: true };
      this.requests.push(record);
      res.on('close', () => {
        record.open = false;
        this.#changes.emit('change');
      });
      this.#changes.emit('change');
      const script = this.#scripts.get(digest)?.shift();
      if (!script) {
        res.writeHead(404, { 'content-length': '0' });
        res.end();
        return;
      }
      script(req, res);
    });
  }

  static async start(): Promise<BlobUpstream> {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0 }, resolve));
    return new BlobUpstream(server);
  }

  script(digest: Digest, ...scripts: Script[]): void {
    this.#scripts.set(digest, scripts);
  }

  gets(digest: Digest): number {
    return this.requests.filter((r) => r.digest === digest).length;
  }

  /** Resolves as soon as `met()` holds (checked on every request event); rejects after 5 s. */
  waitFor(met: () => boolean, what: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (!met()) return;
        clearTimeout(timer);
        this.#changes.off('change', check);
        resolve();
      };
      const timer = setTimeout(() => {
        this.#changes.off('change', check);
        reject(new Error(`upstream: ${what} not seen; requests: ${JSON.stringify(this.requests)}`));
      }, 5_000);
      this.#changes.on('change', check);
      check();
    });
  }

  async stop(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}

function whole(bytes: Buffer): Script {
  return (_req, res) => {
    res.writeHead(200, { 'content-length': String(bytes.length), 'content-type': 'application/octet-stream' });
    res.end(bytes);
  };
}

/** Sends the head and the first `cut` bytes, then drops the connection (a tunnel breaking mid-blob). */
function cutAfter(bytes: Buffer, cut: number): Script {
  return (_req, res) => {
    res.writeHead(200, { 'content-length': String(bytes.length), 'content-type': 'application/octet-stream' });
    res.write(bytes.subarray(0, cut), () => res.destroy());
  };
}

/** Answers a Range request for the rest once `released` resolves. */
function resumeWhen(bytes: Buffer, released: Promise<void>): Script {
  return (req, res) => {
    const from = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1]);
    void released.then(() => {
      res.writeHead(206, { 'content-length': String(bytes.length - from), 'content-range': `bytes ${from}-${bytes.length - 1}/${bytes.length}` });
      res.end(bytes.subarray(from));
    });
  };
}

/** Sends the head and the first `hold` bytes; the rest once `released` resolves. */
function holdUntil(bytes: Buffer, hold: number, released: Promise<void>): Script {
  return (_req, res) => {
    res.writeHead(200, { 'content-length': String(bytes.length), 'content-type': 'application/octet-stream' });
    res.write(bytes.subarray(0, hold));
    void released.then(() => res.end(bytes.subarray(hold)));
  };
}

async function readAll(reader: BlobReadable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  try {
    for await (const chunk of reader.read(0)) chunks.push(Buffer.from(chunk));
  } finally {
    reader.close();
  }
  return Buffer.concat(chunks);
}

describe('Mirror.blob with download slots', () => {
  let dir: string;
  let upstream: BlobUpstream;
  const clients: UpstreamClient[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rpa-fill-slots-'));
    upstream = await BlobUpstream.start();
  });

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await upstream.stop();
    await rm(dir, { recursive: true, force: true });
  });

  async function newMirror(running: number, queued: number): Promise<{ mirror: Mirror; events: FillSlotEvent[]; cache: BlobCache }> {
    const config: MirrorConfig = { registry: REGISTRY, upstream: upstream.url, tagTtlMs: 0, maxStaleMs: 60_000, repositoryPrefix: '', route: 'direct', auth: 'agent', mode: 'online', preload: [], preloadIntervalMs: 900_000, budget: {} };
    const cache = new BlobCache(join(dir, 'cache'), 64 * 1024 * 1024);
    await cache.init();
    await cache.scan();
    const tags = new TagStore(join(dir, 'cache', 'tags'));
    await tags.init();
    const client = new UpstreamClient({ registry: REGISTRY, base: upstream.url, auth: 'agent' });
    clients.push(client);
    const events: FillSlotEvent[] = [];
    const mirror = new Mirror({ config, upstream: client, cache, tags, log: pino({ level: 'silent' }), slots: { running, queued, onEvent: (event) => events.push(event) } });
    return { mirror, events, cache };
  }

  it('holds a slot until the body ended, through a resume; the next waiter starts only then', async () => {
    const { mirror, events } = await newMirror(1, 4);
    const x = randomBytes(300_000);
    const y = randomBytes(1_000);
    const resumed = Promise.withResolvers<void>();
    upstream.script(sha256(x), cutAfter(x, 100_000), resumeWhen(x, resumed.promise));
    upstream.script(sha256(y), whole(y));
    const readingX = mirror.blob(NAME, sha256(x)).then(readAll);
    await upstream.waitFor(() => upstream.gets(sha256(x)) === 1, 'GET x');
    const yReader = track(mirror.blob(NAME, sha256(y)));
    await upstream.waitFor(() => upstream.requests.some((r) => r.range !== undefined), 'the resume of x');
    await until(() => events.length === 1, 'y queued');
    // x's first connection broke and its resume is held: x still holds the only slot.
    expect(upstream.gets(sha256(y))).toBe(0);
    expect(yReader.state()).toBe('pending');
    expect(events).toEqual(['waiting']);
    resumed.resolve();
    expect(sha256(await readingX)).toBe(sha256(x));
    await upstream.waitFor(() => upstream.gets(sha256(y)) === 1, 'GET y after x ended');
    await until(() => yReader.state() !== 'pending', 'y answered');
    expect((await readAll(yReader.value()!)).equals(y)).toBe(true);
    expect(events).toEqual(['waiting', 'started']);
  });

  it('releases the slot when the download fails', async () => {
    const { mirror } = await newMirror(1, 4);
    const x = randomBytes(10_000);
    const y = randomBytes(1_000);
    // Wrong content for x's digest: the fill fails at the end.
    upstream.script(sha256(x), whole(randomBytes(10_000)));
    upstream.script(sha256(y), whole(y));
    const readingX = mirror.blob(NAME, sha256(x)).then(readAll);
    const readingY = mirror.blob(NAME, sha256(y)).then(readAll);
    await expect(readingX).rejects.toThrow(/does not match its digest/);
    expect((await readingY).equals(y)).toBe(true);
  });

  it('releases the slot when upstream answers with an error', async () => {
    const { mirror } = await newMirror(1, 4);
    const y = randomBytes(1_000);
    upstream.script(sha256(y), whole(y));
    const refused = await mirror.blob(NAME, sha256(randomBytes(10))).then(() => undefined, (error: unknown) => error);
    expect(toOciError(refused)).toMatchObject({ code: 'BLOB_UNKNOWN' });
    expect((await readAll(await mirror.blob(NAME, sha256(y)))).equals(y)).toBe(true);
  });

  it('lets requests for a blob being fetched join it without a slot or a queue place', async () => {
    const { mirror, events } = await newMirror(1, 0);
    const x = randomBytes(200_000);
    const y = randomBytes(1_000);
    const released = Promise.withResolvers<void>();
    upstream.script(sha256(x), holdUntil(x, 50_000, released.promise));
    upstream.script(sha256(y), whole(y));
    const first = await mirror.blob(NAME, sha256(x));
    const joined = await mirror.blob(NAME, sha256(x));
    expect(joined.origin).toBe('joined');
    await expect(mirror.blob(NAME, sha256(y))).rejects.toBeInstanceOf(FillQueueFullError);
    expect(events).toEqual(['rejected']);
    released.resolve();
    const [a, b] = await Promise.all([readAll(first), readAll(joined)]);
    expect(a.equals(x) && b.equals(x)).toBe(true);
    expect(upstream.gets(sha256(x))).toBe(1);
    expect(upstream.gets(sha256(y))).toBe(0);
  });

  it('while the slots are busy, a blob upstream refuses gets its refusal at once, as a cached one would: no wait, no 429', async () => {
    const { mirror, events } = await newMirror(1, 0);
    const x = randomBytes(200_000);
    const released = Promise.withResolvers<void>();
    upstream.script(sha256(x), holdUntil(x, 50_000, released.promise));
    const first = await mirror.blob(NAME, sha256(x));
    // The only slot is taken and nobody may queue: a request for a blob upstream does not have.
    const refused = await mirror.blob(NAME, sha256(randomBytes(10))).then(() => undefined, (error: unknown) => error);
    expect(refused).not.toBeInstanceOf(FillQueueFullError);
    expect(toOciError(refused)).toMatchObject({ code: 'BLOB_UNKNOWN', status: 404 });
    expect(events).toEqual([]);
    released.resolve();
    expect((await readAll(first)).equals(x)).toBe(true);
  });

  it('starts a live pull before a background download waiting for a slot, and raises a background download a live pull joins', async () => {
    // Two slots: background downloads hold at most one.
    const { mirror, events } = await newMirror(2, 8);
    const [x, y, z] = [randomBytes(200_000), randomBytes(50_000), randomBytes(50_000)];
    const released = Promise.withResolvers<void>();
    upstream.script(sha256(x), holdUntil(x, 50_000, released.promise));
    upstream.script(sha256(y), whole(y));
    upstream.script(sha256(z), whole(z));
    const preloadX = await mirror.blob(NAME, sha256(x), { priority: 'background' });
    const preloadY = track(mirror.blob(NAME, sha256(y), { priority: 'background' }));
    await until(() => events.length === 1, 'y waiting for a slot');
    // The last slot is free, and it is the live pull's.
    expect((await readAll(await mirror.blob(NAME, sha256(z)))).equals(z)).toBe(true);
    expect(upstream.gets(sha256(y))).toBe(0);
    expect(preloadY.state()).toBe('pending');
    // A pull asks for y, which preload is waiting for: the download is raised and starts at once,
    // while x (background) still holds its slot.
    const pulled = await mirror.blob(NAME, sha256(y));
    expect(pulled.origin).toBe('joined');
    expect((await readAll(pulled)).equals(y)).toBe(true);
    expect(upstream.requests.find((r) => r.digest === sha256(x))?.open).toBe(true);
    expect(events).toEqual(['waiting', 'started']);
    await until(() => preloadY.state() === 'resolved', 'the preload of y answered');
    expect((await readAll(preloadY.value()!)).equals(y)).toBe(true);
    released.resolve();
    expect((await readAll(preloadX)).equals(x)).toBe(true);
  });

  it('drops a queued download whose only client went away; one that others wait for stays', async () => {
    const { mirror, events, cache } = await newMirror(1, 4);
    const x = randomBytes(200_000);
    const [y, z] = [randomBytes(1_000), randomBytes(1_000)];
    const released = Promise.withResolvers<void>();
    upstream.script(sha256(x), holdUntil(x, 50_000, released.promise));
    upstream.script(sha256(y), whole(y));
    upstream.script(sha256(z), whole(z));
    const first = await mirror.blob(NAME, sha256(x));
    const client = new AbortController();
    const leaving = track(mirror.blob(NAME, sha256(y), { signal: client.signal }));
    const staying = new AbortController();
    const zFirst = track(mirror.blob(NAME, sha256(z), { signal: staying.signal }));
    const zSecond = track(mirror.blob(NAME, sha256(z)));
    await until(() => events.length === 2 && cache.stats().joined === 1, 'y and z queued, the second z joined');
    expect(events).toEqual(['waiting', 'waiting']);
    const gone = new Error('client gone');
    client.abort(gone);
    staying.abort(gone);
    await settle();
    expect(leaving.error()).toBe(gone);
    expect(zFirst.error()).toBe(gone);
    expect(events).toEqual(['waiting', 'waiting', 'abandoned']);
    released.resolve();
    expect((await readAll(first)).equals(x)).toBe(true);
    await until(() => zSecond.state() !== 'pending', 'z answered');
    expect((await readAll(zSecond.value()!)).equals(z)).toBe(true);
    expect(upstream.gets(sha256(y))).toBe(0);
    expect(events).toEqual(['waiting', 'waiting', 'abandoned', 'started']);
    expect(cache.stats().inflight).toBe(0);
  });
});
