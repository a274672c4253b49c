import { type RequestListener, type Server, type ServerResponse, createServer } from 'node:http';
import type { Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { closeServer, listenLoopback } from '../../test/fixtures/http-server.ts';
import { pollUntil } from '../../test/fixtures/poll.ts';
import { rawExchange, rawSocket } from '../../test/fixtures/raw-http.ts';
import { ConnectionCounts } from './connection-gate.ts';
import { type GuardEvents, type GuardOptions, LINGER_MS, guardServer } from './guard.ts';
import { writeAll } from './respond.ts';

const REFUSAL = 'HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nfull';
const BAD = 'HTTP/1.1 400 Bad Request\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbad';

interface Counted {
  opened: number;
  closed: number;
  refused: number;
  requestTimeouts: number;
  sendTimeouts: number;
  pipelining: number;
  saturated: boolean[];
}

function counting(): { counts: Counted; events: GuardEvents } {
  const counts: Counted = { opened: 0, closed: 0, refused: 0, requestTimeouts: 0, sendTimeouts: 0, pipelining: 0, saturated: [] };
  const cuts = { request_timeout: 'requestTimeouts', send_timeout: 'sendTimeouts', pipelining: 'pipelining' } as const;
  return {
    counts,
    events: {
      connection: (event) => void (counts[event] += 1),
      cut: (reason) => void (counts[cuts[reason]] += 1),
      saturated: (atCap) => void counts.saturated.push(atCap),
    },
  };
}

const servers: Server[] = [];
const sockets: Socket[] = [];
afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  await Promise.all(servers.splice(0).map((s) => closeServer(s)));
});

/** A guarded test server: short timeouts, a cap of 4; `onRequest` gets the raw request. */
async function guardedRaw(onRequest: RequestListener, options: Partial<GuardOptions> = {}): Promise<{ port: number; counts: Counted; server: Server }> {
  const { counts, events } = counting();
  const server = createServer({ connectionsCheckingInterval: 50 }, onRequest);
  guardServer(server, {
    maxConnections: 4,
    requestTimeoutMs: 400,
    sendTimeoutMs: 300,
    keepAliveTimeoutMs: 5_000,
    maxRequestsPerSocket: 100,
    maxPipelined: 16,
    refusal: REFUSAL,
    clientErrorAnswer: () => BAD,
    events,
    ...options,
  });
  servers.push(server);
  return { port: await listenLoopback(server), counts, server };
}

/** A guarded test server whose handler answers without reading the request body. */
function guarded(handler: (res: ServerResponse, url: string) => void, options: Partial<GuardOptions> = {}): Promise<{ port: number; counts: Counted; server: Server }> {
  return guardedRaw((req, res) => {
    req.resume();
    handler(res, req.url ?? '');
  }, options);
}

async function openIdle(port: number, count: number): Promise<Socket[]> {
  const opened = await Promise.all(Array.from({ length: count }, () => rawSocket(port)));
  for (const socket of opened) socket.on('error', () => undefined);
  sockets.push(...opened);
  return opened;
}

function closedWithin(socket: Socket, ms: number): Promise<{ closed: boolean; data: string }> {
  return new Promise((resolve) => {
    let data = '';
    socket.on('data', (d: Buffer) => void (data += d.toString('latin1')));
    const timer = setTimeout(() => resolve({ closed: false, data }), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve({ closed: true, data });
    });
  });
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return Promise.race([promise, new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`not settled after ${ms} ms`)), ms))]);
}

const ok = (res: ServerResponse): void => void res.end('ok');

describe('guardServer: connection cap', () => {
  it('answers connections over the cap with the refusal and closes them; the ones within are served', async () => {
    const { port, counts } = await guarded(ok);
    await openIdle(port, 4);
    const over = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', { timeoutMs: 2_000 });
    expect(over.responses[0]?.status).toBe(503);
    expect(over.responses[0]?.body.toString()).toBe('full');
    expect(over.closed).toBe(true);
    expect(counts.refused).toBe(1);
    expect(counts.saturated).toEqual([true]);
  });

  it('serves again once connections close, and reports leaving the cap', async () => {
    const { port, counts } = await guarded(ok);
    const held = await openIdle(port, 4);
    expect((await rawExchange(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', { timeoutMs: 2_000 })).responses[0]?.status).toBe(503);
    await Promise.all(held.map((s) => new Promise((resolve) => s.once('close', resolve).destroy())));
    const served = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', { responses: 1, timeoutMs: 2_000 });
    expect(served.responses[0]?.status).toBe(200);
    expect(counts.saturated).toEqual([true, false]);
    await pollUntil(() => counts.opened === counts.closed, { timeoutMs: 2_000, what: 'every connection closed' });
  });

  it('a refused client that never closes is dropped after the linger time', async () => {
    const { port } = await guarded(ok, { maxConnections: 1 });
    await openIdle(port, 1);
    const [lingering] = await openIdle(port, 1);
    const started = Date.now();
    const { closed, data } = await closedWithin(lingering!, LINGER_MS + 2_000);
    expect(data).toContain('503');
    expect(closed).toBe(true);
    expect(Date.now() - started).toBeLessThan(LINGER_MS + 1_000);
  });
});

describe('guardServer: timeouts', () => {
  it('cuts idle and half-sent connections at the request timeout and counts them', async () => {
    const { port, counts } = await guarded(ok);
    const [idle, half] = await openIdle(port, 2);
    half!.write('GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ');
    const [a, b] = await Promise.all([closedWithin(idle!, 3_000), closedWithin(half!, 3_000)]);
    expect(a.closed && b.closed).toBe(true);
    expect(b.data).toContain('400');
    expect(counts.requestTimeouts).toBe(2);
  });

  it('resets a response its client stopped reading after the send timeout', async () => {
    const big = Buffer.alloc(64 * 1024 * 1024);
    let closed: Promise<number> | undefined;
    const { port, counts } = await guarded((res) => {
      const started = Date.now();
      closed = new Promise((resolve) => res.once('close', () => resolve(Date.now() - started)));
      res.writeHead(200, { 'content-length': String(big.length) });
      res.end(big);
    });
    const [client] = await openIdle(port, 1);
    client!.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    client!.pause();
    await pollUntil(() => closed !== undefined, { timeoutMs: 2_000, what: 'request arrived' });
    expect(await withTimeout(closed!, 3_000)).toBeGreaterThanOrEqual(300);
    expect(counts.sendTimeouts).toBe(1);
    // A reset, not a FIN queued behind megabytes the client will never read.
    const reset = new Promise<string | undefined>((resolve) => client!.once('error', (e: NodeJS.ErrnoException) => resolve(e.code)));
    client!.resume();
    expect(await reset).toBe('ECONNRESET');
  });

  it('does not cut a response while the server itself is waiting (nothing queued for the client)', async () => {
    const { port, counts } = await guarded((res) => {
      res.writeHead(200, { 'content-length': '2' });
      res.write('o');
      setTimeout(() => res.end('k'), 900);
    });
    const answer = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', { responses: 1, timeoutMs: 3_000 });
    expect(answer.responses[0]?.body.toString()).toBe('ok');
    expect(counts.sendTimeouts).toBe(0);
  });

  it('a slow reader that keeps taking chunks is not cut', async () => {
    const chunk = 256 * 1024;
    const chunks = 24;
    const { port, counts } = await guarded((res) => {
      res.writeHead(200, { 'content-length': String(chunk * chunks) });
      let sent = 0;
      const more = (): void => {
        while (sent < chunks) {
          sent += 1;
          if (!res.write(Buffer.alloc(chunk))) return void res.once('drain', more);
        }
        res.end();
      };
      more();
    }, { sendTimeoutMs: 1_500 });
    const [client] = await openIdle(port, 1);
    client!.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    let received = 0;
    // Reads in bursts with pauses shorter than the send timeout: progress, however slow.
    client!.on('data', (d: Buffer) => {
      received += d.length;
      client!.pause();
      setTimeout(() => client!.resume(), 20);
    });
    await new Promise((resolve) => client!.once('close', resolve));
    expect(received).toBeGreaterThan(chunk * chunks);
    expect(counts.sendTimeouts).toBe(0);
  }, 30_000);
});

describe('guardServer: a request whose body never arrives whole', () => {
  /** A handler that answers only once it has the whole body (like the token endpoint's POST). */
  async function bodyReader(): Promise<{ port: number; counts: Counted; answered: () => number }> {
    let answered = 0;
    const { port, counts } = await guardedRaw((req, res) => {
      void (async () => {
        try {
          for await (const chunk of req) void chunk;
          answered += 1;
          res.end('read it all');
        } catch {
          // The client went away mid-body.
        }
      })();
    });
    return { port, counts, answered: () => answered };
  }

  it('is answered and closed at the request timeout while the client stays connected', async () => {
    const { port, counts, answered } = await bodyReader();
    const [socket] = await openIdle(port, 1);
    socket!.write('POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx');
    const result = await closedWithin(socket!, 2_000);
    expect(result.closed).toBe(true);
    expect(result.data).toBe(BAD);
    expect(counts.requestTimeouts).toBe(1);
    expect(answered()).toBe(0);
  });

  it('is closed at once when the client half-closes mid-body: no connection is left waiting for bytes that cannot come', async () => {
    const { port, counts } = await bodyReader();
    const opened = await openIdle(port, 4);
    for (const socket of opened) socket.end('POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx');
    const results = await Promise.all(opened.map((socket) => closedWithin(socket, 1_500)));
    expect(results.every((r) => r.closed)).toBe(true);
    await pollUntil(() => counts.closed === 4, { timeoutMs: 2_000, what: 'all four connections given back' });
    // The cap is free again: a new client is served.
    const next = await rawExchange(port, 'POST /t HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok', { timeoutMs: 2_000 });
    expect(next.responses[0]?.status).toBe(200);
  });
});

describe('guardServer: sockets taken over or answered raw', () => {
  it('a client that resets right after a CONNECT answer raises nothing', async () => {
    const { port, server } = await guarded(ok);
    server.on('connect', (_req, socket) => {
      // Writes a lot, so the reset arrives while the answer is still being written.
      socket.write(Buffer.alloc(4 * 1024 * 1024));
      socket.end();
    });
    const uncaught: unknown[] = [];
    const onUncaught = (error: unknown): void => void uncaught.push(error);
    process.on('uncaughtException', onUncaught);
    try {
      for (let i = 0; i < 20; i += 1) {
        const [socket] = await openIdle(port, 1);
        socket!.write('CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n');
        await new Promise((resolve) => socket!.once('data', resolve));
        socket!.resetAndDestroy();
      }
      const served = await rawExchange(port, 'GET / HTTP/1.1\r\nHost: x\r\n\r\n', { responses: 1, timeoutMs: 2_000 });
      expect(served.responses[0]?.status).toBe(200);
    } finally {
      process.off('uncaughtException', onUncaught);
    }
    expect(uncaught).toEqual([]);
  });

  it('answers a parse error after the responses already under way on that connection', async () => {
    const { port } = await guarded((res, url) => {
      if (url === '/slow') setTimeout(() => res.end('slow'), 100);
      else res.end('fast');
    });
    const answer = await rawExchange(port, 'GET /slow HTTP/1.1\r\nHost: x\r\n\r\nBLAH\r\n\r\n', { responses: 2, timeoutMs: 3_000 });
    expect(answer.responses.map((r) => r.status)).toEqual([200, 400]);
    expect(answer.responses[0]?.body.toString()).toBe('slow');
  });
});

describe('guardServer: one request at a time per connection', () => {
  it('answers pipelined requests one after the other, never two handlers at once for one connection', async () => {
    let running = 0;
    let peak = 0;
    const { port } = await guarded((res, url) => {
      running += 1;
      peak = Math.max(peak, running);
      setTimeout(() => {
        running -= 1;
        res.end(url);
      }, 5);
    });
    const requests = Array.from({ length: 10 }, (_, i) => `GET /${i} HTTP/1.1\r\nHost: x\r\n\r\n`).join('');
    const answer = await rawExchange(port, requests, { responses: 10, timeoutMs: 5_000 });
    expect(answer.responses.map((r) => r.body.toString())).toEqual(Array.from({ length: 10 }, (_, i) => `/${i}`));
    expect(peak).toBe(1);
  });

  it('resets a connection that pipelines more requests than may wait, without running their handlers', async () => {
    let handled = 0;
    const { port, counts } = await guarded((res) => {
      handled += 1;
      setTimeout(() => res.end('ok'), 50);
    });
    const requests = Array.from({ length: 400 }, (_, i) => `GET /${i} HTTP/1.1\r\nHost: x\r\n\r\n`).join('');
    const answer = await rawExchange(port, requests, { timeoutMs: 5_000 });
    expect(answer.closed).toBe(true);
    expect(counts.pipelining).toBe(1);
    // The one being answered when the pipeline overflowed; none of the 399 behind it.
    expect(handled).toBe(1);
  });
});

describe('guardServer: a client must keep taking its answer', () => {
  it('cuts a reader that takes a few bytes now and then, below 1 MiB per four send timeouts', async () => {
    const { port, counts } = await guarded((res) => {
      res.writeHead(200, { 'content-length': String(32 * 1024 * 1024) });
      const chunk = Buffer.alloc(64 * 1024);
      let sent = 0;
      const more = (): void => {
        while (sent < 512) {
          sent += 1;
          if (!res.write(chunk)) return void res.once('drain', more);
        }
        res.end();
      };
      more();
    }, { sendTimeoutMs: 600 });
    const [client] = await openIdle(port, 1);
    client!.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    // 4 KiB every 100 ms: never silent for long, but far below 1 MiB per send timeout.
    client!.pause();
    const crawl = setInterval(() => client!.read(4096), 100);
    try {
      await pollUntil(() => counts.sendTimeouts === 1, { timeoutMs: 10_000, what: 'the crawling reader cut' });
    } finally {
      clearInterval(crawl);
    }
  });
});

describe('ConnectionCounts', () => {
  const counts = (options: Partial<{ maxConnections: number; maxPerAddress: number; loopbackReserve: number }>) =>
    new ConnectionCounts({ maxConnections: 4, refusal: '', ...options });

  it('caps connections per remote address, not per loopback client', () => {
    const gate = counts({ maxConnections: 100, maxPerAddress: 2 });
    expect(gate.admit('10.0.0.5')).toBeDefined();
    expect(gate.admit('10.0.0.5')).toBeDefined();
    expect(gate.admit('10.0.0.5')).toBeUndefined();
    expect(gate.admit('10.0.0.6')).toBeDefined();
    for (let i = 0; i < 5; i += 1) expect(gate.admit('127.0.0.1')).toBeDefined();
  });

  it('keeps the loopback reserve for loopback clients once remote ones hold the cap', () => {
    const gate = counts({ maxConnections: 2, loopbackReserve: 1 });
    const first = gate.admit('10.0.0.5');
    expect(gate.admit('10.0.0.6')).toBeDefined();
    expect(gate.admit('10.0.0.7')).toBeUndefined();
    const probe = gate.admit('::ffff:127.0.0.1') ?? gate.admit('127.0.0.1');
    expect(probe).toBeDefined();
    expect(gate.admit('127.0.0.1')).toBeUndefined();
    first?.();
    expect(gate.admit('10.0.0.7')).toBeDefined();
  });

  it('gives each connection back exactly once', () => {
    const gate = counts({ maxConnections: 1 });
    const release = gate.admit('10.0.0.5');
    release?.();
    release?.();
    expect(gate.admit('10.0.0.6')).toBeDefined();
    expect(gate.admit('10.0.0.7')).toBeUndefined();
  });
});

describe('guardServer: a bursty reader above the minimum pace', () => {
  it('is not cut, though the kernel hands its progress over in steps of megabytes', async () => {
    const MiB = 1024 * 1024;
    const total = 12 * MiB;
    const { port, counts } = await guarded(
      (res) => {
        res.writeHead(200, { 'content-length': String(total) });
        async function* chunks(): AsyncGenerator<Buffer> {
          for (let sent = 0; sent < total; sent += MiB) yield Buffer.alloc(MiB, 1);
        }
        void writeAll(res, chunks()).then(() => res.end(), () => undefined);
      },
      { sendTimeoutMs: 2_000 },
    );
    const [client] = await openIdle(port, 1);
    client!.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    // 1 MiB at a time, then a pause: about 1.4 MiB/s, lumpy (the kernel hands progress over in steps
    // of megabytes), far above the floor of 1 MiB per 4 × 2 s.
    let received = 0;
    let sinceBurst = 0;
    client!.on('data', (d: Buffer) => {
      received += d.length;
      sinceBurst += d.length;
      if (sinceBurst >= MiB) {
        sinceBurst = 0;
        client!.pause();
        setTimeout(() => client!.resume(), 400);
      }
    });
    await new Promise((resolve) => client!.once('close', resolve).once('end', resolve));
    expect(counts.sendTimeouts).toBe(0);
    expect(received).toBeGreaterThan(total);
  }, 30_000);
});

