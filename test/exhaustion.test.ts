// Resource exhaustion, end to end (a security review's findings): an upstream that announces a
// huge blob and sends one byte must not empty the cache; a download nobody reads any more must
// give its slot back. In-process agents against scripted upstreams; the cache's own counters and
// the files on disk are the proof.
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { mkdtemp, readdir, stat } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type InProcessAgent, startAgent } from './fixtures/agent.ts';
import { sha256 } from './fixtures/digest.ts';
import { recordFigures } from './fixtures/figures.ts';
import { type Answer, fetchAnswer } from './fixtures/http-client.ts';
import { OCI_MANIFEST } from './fixtures/image.ts';
import { pollUntil } from './fixtures/poll.ts';
import { rawSocket } from './fixtures/raw-http.ts';
import { type ScriptedRegistry, startScriptedRegistry } from './fixtures/scripted-registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const REGISTRY = 'registry.exhaustion.example';
const REPO = 'team/app';
const KiB = 1024;
const MiB = 1024 * KiB;

async function pull(agent: InProcessAgent, digest: string): Promise<{ status: number; body: Buffer }> {
  const response = await request(`${agent.url}/v2/${REPO}/blobs/${digest}?ns=${REGISTRY}`, { signal: AbortSignal.timeout(10_000) });
  return { status: response.statusCode, body: Buffer.from(await response.body.arrayBuffer()) };
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

describe('exhaustion', () => {
  let dir: string;
  let upstream: ScriptedRegistry;
  const agents: InProcessAgent[] = [];
  /** Upstream responses a test left open (stalled or endless); destroyed after each test. */
  const open: ServerResponse[] = [];

  beforeAll(async () => {
    dir = await makeTempDir('rpa-exhaustion');
    upstream = await startScriptedRegistry();
  });

  afterEach(async () => {
    for (const res of open.splice(0)) res.destroy();
    await Promise.all(agents.splice(0).map((agent) => agent.stop()));
  });

  afterAll(async () => {
    await upstream?.stop();
    if (dir) await removeTempDir(dir);
  });

  async function agentWith(name: string, setup: { cacheMaxBytes: number; extraToml?: string }): Promise<InProcessAgent> {
    const agent = await startAgent({ dir: await mkdtemp(join(dir, `${name}-`)), mirrors: [{ registry: REGISTRY, upstream: upstream.url }], ...setup });
    agents.push(agent);
    return agent;
  }

  it('an upstream announcing a Content-Length just under cache_max_bytes and sending one byte evicts nothing', async () => {
    const cap = 4 * MiB;
    const agent = await agentWith('false-length', { cacheMaxBytes: cap });
    const cacheDir = join(agent.runtime.config.cacheDir);
    const blobs = Array.from({ length: 4 }, () => randomBytes(900 * KiB));
    const digests = blobs.map((blob) => upstream.serveBlob(REPO, blob));
    for (const [i, digest] of digests.entries()) {
      const pulled = await pull(agent, digest);
      expect(pulled.status).toBe(200);
      expect(pulled.body.equals(blobs[i]!)).toBe(true);
    }
    await pollUntil(() => agent.runtime.cache.stats().inflight === 0, { timeoutMs: 5_000, what: 'fills settled' });
    expect(agent.runtime.cache.stats()).toMatchObject({ entries: 4, evictions: 0 });

    const lie = sha256(randomBytes(64));
    upstream.on('GET', `/v2/${REPO}/blobs/${lie}`, (req, res) => {
      req.resume();
      open.push(res);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(cap - 1) });
      // One byte, then nothing: the response stays open.
      res.write(Buffer.from([0x42]));
    });
    const client = request(`${agent.url}/v2/${REPO}/blobs/${lie}?ns=${REGISTRY}`);
    client.catch(() => undefined);
    const tmp = join(cacheDir, 'tmp');
    // The agent has the byte on disk: upstream's announcement has been acted on, and the one byte written.
    await pollUntil(async () => (await Promise.all((await readdir(tmp)).map((name) => stat(join(tmp, name))))).some((info) => info.size === 1), {
      timeoutMs: 5_000,
      what: 'the one byte in a temp file',
    });
    const stats = agent.runtime.cache.stats();
    const files = await Promise.all(digests.map((digest) => exists(join(cacheDir, 'blobs', 'sha256', digest.slice('sha256:'.length)))));
    await recordFigures('exhaustion', 'false Content-Length', {
      entriesBefore: 4,
      entriesAfter: stats.entries,
      evictions: stats.evictions,
      filesKept: files.filter(Boolean).length,
      claimedBytes: stats.claimed,
      cacheBytes: stats.bytes,
    });
    expect(stats).toMatchObject({ entries: 4, evictions: 0 });
    expect(files).toEqual([true, true, true, true]);
    expect(stats.bytes + stats.claimed).toBeLessThanOrEqual(cap);
    // The cached blobs are still served from the cache.
    const before = upstream.count({ method: 'GET', pathIncludes: digests[0]! });
    expect((await pull(agent, digests[0]!)).body.equals(blobs[0]!)).toBe(true);
    expect(upstream.count({ method: 'GET', pathIncludes: digests[0]! })).toBe(before);
  });

  it('an endless upstream body nobody reads any more gives its download slot back (max_fills_per_mirror = 1)', async () => {
    const agent = await agentWith('endless', { cacheMaxBytes: MiB, extraToml: 'max_fills_per_mirror = 1' });
    const endless = sha256(randomBytes(64));
    let sent = 0;
    let upstreamClosed = false;
    upstream.on('GET', `/v2/${REPO}/blobs/${endless}`, (req, res) => {
      req.resume();
      open.push(res);
      res.on('close', () => (upstreamClosed = true));
      // No Content-Length, and it never ends: as fast as the agent takes it.
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      const chunk = randomBytes(64 * KiB);
      const pump = (): void => {
        while (!res.destroyed) {
          sent += chunk.length;
          if (!res.write(chunk)) return;
        }
      };
      res.on('drain', pump);
      pump();
    });
    const response = await request(`${agent.url}/v2/${REPO}/blobs/${endless}?ns=${REGISTRY}`);
    expect(response.statusCode).toBe(200);
    // Past cache_max_bytes (1 MiB): the fill relays from memory, paced by this client.
    let received = 0;
    for await (const chunk of response.body) {
      received += (chunk as Buffer).length;
      if (received >= 3 * MiB) break;
    }
    response.body.destroy();
    const left = performance.now();
    await pollUntil(() => upstreamClosed, { timeoutMs: 10_000, what: 'the agent to stop the endless download' });
    const stoppedMs = performance.now() - left;
    // The only slot is free again: another blob is served.
    const other = randomBytes(200 * KiB);
    const otherDigest = upstream.serveBlob(REPO, other);
    const pulled = await pull(agent, otherDigest);
    const servedMs = performance.now() - left;
    expect(pulled.status).toBe(200);
    expect(pulled.body.equals(other)).toBe(true);
    await pollUntil(() => agent.runtime.cache.stats().inflight === 0, { timeoutMs: 5_000, what: 'fills settled' });
    expect(agent.runtime.cache.stats()).toMatchObject({ entries: 1, claimed: 0 });
    expect(await readdir(join(agent.runtime.config.cacheDir, 'tmp'))).toEqual([]);
    await recordFigures('exhaustion', 'endless relay nobody reads', {
      clientReadMiB: Math.round((received / MiB) * 10) / 10,
      upstreamSentMiB: Math.round((sent / MiB) * 10) / 10,
      stoppedAfterMs: Math.round(stoppedMs),
      nextBlobServedAfterMs: Math.round(servedMs),
    });
  });

  /** A valid image manifest of `size` bytes (padded with an annotation). */
  function largeManifest(size: number): Buffer {
    const base = { schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(Buffer.from('{}')), size: 2 }, layers: [], annotations: { pad: '' } };
    const pad = size - Buffer.byteLength(JSON.stringify(base));
    return Buffer.from(JSON.stringify({ ...base, annotations: { pad: 'x'.repeat(pad) } }));
  }

  /** Peak resident memory of this process (agent and test) while sampling. */
  function rssSampler(): { stop(): number } {
    let peak = process.memoryUsage.rss();
    const timer = setInterval(() => (peak = Math.max(peak, process.memoryUsage.rss())), 5);
    return {
      stop: () => {
        clearInterval(timer);
        return Math.max(peak, process.memoryUsage.rss());
      },
    };
  }

  it('clients asking for a cached 4 MiB manifest and never reading: memory stays bounded, the excess is refused, others are served once room frees, the budget returns to zero', async () => {
    const agent = await agentWith('manifest-memory', { cacheMaxBytes: 256 * MiB });
    const manifest = largeManifest(4 * MiB - KiB);
    const digest = upstream.serveManifest('team/big', 'v1', manifest, OCI_MANIFEST);
    const path = `/v2/team/big/manifests/${digest}?ns=${REGISTRY}`;
    const primed = await request(`${agent.url}${path}`);
    expect(Buffer.from(await primed.body.arrayBuffer()).equals(manifest)).toBe(true);
    const port = Number(new URL(agent.url).port);
    const bodies = agent.runtime.bodies;
    const answered = agent.requests.length;
    const handled = (): number => agent.requests.length - answered;
    const sockets: Socket[] = [];
    /** Clients that send the request and then never read a byte. */
    const stalled = async (count: number): Promise<void> => {
      const opened = await Promise.all(Array.from({ length: count }, () => rawSocket(port)));
      for (const socket of opened) {
        socket.on('error', () => undefined);
        socket.write(`GET ${path} HTTP/1.1\r\nHost: mirror\r\n\r\n`);
        sockets.push(socket);
      }
    };
    const settledAt = async (count: number): Promise<void> =>
      pollUntil(() => handled() + bodies.state().waiting >= count, { timeoutMs: 60_000, what: `${count} requests answered or waiting` });
    global.gc?.();
    const baseline = process.memoryUsage.rss();
    const sampler = rssSampler();
    try {
      await stalled(200);
      await settledAt(200);
      // An ordinary client asks while the budget is taken: it waits its turn.
      const queued = request(`${agent.url}${path}`, { signal: AbortSignal.timeout(60_000) });
      await settledAt(201);
      await stalled(100);
      await settledAt(301);
      const full = await request(`${agent.url}${path}`);
      const refusal = JSON.parse(Buffer.from(await full.body.arrayBuffer()).toString('utf8')) as { errors: Array<{ code: string }> };
      const peak = sampler.stop();
      const state = bodies.state();
      const refused = agent.requests.slice(answered).filter((r) => r.status === 429).length;
      await recordFigures('exhaustion', 'stalled manifest readers', {
        clients: 302,
        manifestMiB: Math.round((manifest.length / MiB) * 100) / 100,
        heldMiB: Math.round((state.held / MiB) * 10) / 10,
        waiting: state.waiting,
        refused,
        rssBaselineMiB: Math.round(baseline / MiB),
        rssPeakMiB: Math.round(peak / MiB),
        rssGrowthMiB: Math.round((peak - baseline) / MiB),
      });
      expect(peak - baseline).toBeLessThan(192 * MiB);
      expect(state.held).toBeLessThanOrEqual(64 * MiB);
      expect(state.held).toBe(16 * manifest.length);
      expect(state.waiting).toBe(256);
      // 300 stalled + the queued client + this one: 16 hold room, 256 wait, the rest are refused.
      expect(full.statusCode).toBe(429);
      expect(full.headers['retry-after']).toBeDefined();
      expect(refusal.errors[0]?.code).toBe('TOOMANYREQUESTS');
      expect(refused).toBe(302 - 16 - 256);
      // The stalled clients go away: their room comes back, and the queued client is served.
      for (const socket of sockets.splice(0)) socket.destroy();
      const served = await queued;
      expect(served.statusCode).toBe(200);
      expect(Buffer.from(await served.body.arrayBuffer()).equals(manifest)).toBe(true);
      await pollUntil(() => bodies.state().held === 0 && bodies.state().waiting === 0, { timeoutMs: 10_000, what: 'the budget back to zero' });
    } finally {
      sampler.stop();
      for (const socket of sockets) socket.destroy();
    }
  });
});

describe('the body budget is back to zero after every manifest and token path', () => {
  const PT = 'registry.budget.example';
  let dir: string;
  let upstream: ScriptedRegistry;
  let agent: InProcessAgent;
  const small = (label: string): Buffer =>
    Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(Buffer.from(label)), size: 2 }, layers: [] }));

  beforeAll(async () => {
    dir = await makeTempDir('rpa-budget-paths');
    upstream = await startScriptedRegistry();
    // Passthrough (no credentials): cached content is only served after upstream confirmed access, and tokens are forwarded.
    agent = await startAgent({ dir, mirrors: [{ registry: PT, upstream: upstream.url, tagTtl: '0s', maxStale: '1h' }] });
  });

  afterEach(async () => {
    await pollUntil(() => agent.runtime.bodies.state().held === 0 && agent.runtime.bodies.state().waiting === 0, {
      timeoutMs: 5_000,
      what: `the body budget back to zero (${JSON.stringify(agent.runtime.bodies.state())})`,
    });
  });

  afterAll(async () => {
    await agent?.stop();
    await upstream?.stop();
    if (dir) await removeTempDir(dir);
  });

  function get(path: string, method: 'GET' | 'HEAD' = 'GET', headers: Record<string, string> = {}): Promise<Answer> {
    return fetchAnswer(`${agent.url}${path}`, { method, headers, signal: AbortSignal.timeout(10_000) });
  }

  const manifestPath = (repo: string, reference: string): string => `/v2/${repo}/manifests/${reference}?ns=${PT}`;

  it('GET by digest: a miss, then a hit', async () => {
    const bytes = small('by-digest');
    const digest = upstream.serveManifest('paths/digest', 'v1', bytes, OCI_MANIFEST);
    for (let i = 0; i < 2; i += 1) {
      const answer = await get(manifestPath('paths/digest', digest));
      expect(answer.status).toBe(200);
      expect(answer.body.equals(bytes)).toBe(true);
    }
    expect(agent.requests.slice(-2).map((r) => r.outcome.cache)).toEqual(['miss', 'hit']);
  });

  it('HEAD and GET by tag', async () => {
    const bytes = small('by-tag');
    upstream.serveManifest('paths/tag', 'v1', bytes, OCI_MANIFEST);
    expect((await get(manifestPath('paths/tag', 'v1'), 'HEAD')).status).toBe(200);
    const answer = await get(manifestPath('paths/tag', 'v1'));
    expect(answer.status).toBe(200);
    expect(answer.body.equals(bytes)).toBe(true);
  });

  it('GET by tag from a registry whose HEAD names no digest (GET by tag upstream)', async () => {
    const bytes = small('no-digest-head');
    upstream.on('*', '/v2/paths/nodigest/manifests/v1', (req, res) => {
      req.resume();
      res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': String(bytes.length) });
      res.end(req.method === 'HEAD' ? undefined : bytes);
    });
    const answer = await get(manifestPath('paths/nodigest', 'v1'));
    expect(answer.status).toBe(200);
    expect(answer.headers['docker-content-digest']).toBe(sha256(bytes));
  });

  it('stale: upstream down, the last known digest served from the cache', async () => {
    const bytes = small('stale');
    let down = false;
    const honest = (req: import('node:http').IncomingMessage, res: ServerResponse): void => {
      req.resume();
      if (down) {
        res.writeHead(503, { 'content-length': '0' });
        res.end();
        return;
      }
      res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': String(bytes.length), 'docker-content-digest': sha256(bytes) });
      res.end(req.method === 'HEAD' ? undefined : bytes);
    };
    upstream.on('*', /^\/v2\/paths\/stale\//, honest);
    expect((await get(manifestPath('paths/stale', 'v1'))).status).toBe(200);
    down = true;
    const answer = await get(manifestPath('paths/stale', 'v1'));
    expect(answer.status).toBe(200);
    expect(answer.body.equals(bytes)).toBe(true);
    expect(agent.requests.at(-1)?.outcome.cache).toBe('stale');
  });

  it.each<[string, (bytes: Buffer) => (req: import('node:http').IncomingMessage, res: ServerResponse) => void, number]>([
    [
      'content that does not match its digest',
      (bytes) => (req, res) => {
        req.resume();
        res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': String(bytes.length + 1) });
        res.end(Buffer.concat([bytes, Buffer.from(' ')]));
      },
      502,
    ],
    [
      'an announced size over 4 MiB',
      () => (req, res) => {
        req.resume();
        res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': String(4 * MiB + 1) });
        res.end(Buffer.alloc(4 * MiB + 1, 0x20));
      },
      502,
    ],
    [
      'more than 4 MiB without Content-Length',
      () => (req, res) => {
        req.resume();
        res.writeHead(200, { 'content-type': OCI_MANIFEST });
        res.end(Buffer.alloc(4 * MiB + 1, 0x20));
      },
      502,
    ],
    [
      'a body cut short',
      (bytes) => (req, res) => {
        req.resume();
        res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': String(bytes.length) });
        res.write(bytes.subarray(0, 10), () => res.destroy());
      },
      503,
    ],
  ])('an upstream manifest with %s: a clean error', async (label, handler, status) => {
    const repo = `paths/error-${label.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/-$/, '')}`;
    const bytes = small(label);
    upstream.on('GET', `/v2/${repo}/manifests/${sha256(bytes)}`, handler(bytes));
    const answer = await get(manifestPath(repo, sha256(bytes)));
    expect(answer.status).toBe(status);
  });

  it('a client gone before its manifest arrived: the body is released when it does', async () => {
    const bytes = small('client-gone');
    const digest = sha256(bytes);
    let asked!: () => void;
    const upstreamAsked = new Promise<void>((resolve) => (asked = resolve));
    let answer!: () => void;
    const answered = new Promise<void>((resolve) => (answer = resolve));
    upstream.on('GET', `/v2/paths/gone/manifests/${digest}`, async (req, res) => {
      req.resume();
      asked();
      await answered;
      res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': String(bytes.length) });
      res.end(bytes);
    });
    const before = agent.requests.length;
    const socket = await rawSocket(Number(new URL(agent.url).port));
    socket.on('error', () => undefined);
    socket.write(`GET ${manifestPath('paths/gone', digest)} HTTP/1.1\r\nHost: mirror\r\n\r\n`);
    await upstreamAsked;
    socket.destroy();
    answer();
    await pollUntil(() => agent.requests.length > before, { timeoutMs: 5_000, what: 'the request to finish' });
  });

  it.each([
    ['while the realm answers (GET)', 'GET', ''],
    ['in the middle of its OAuth2 form (POST)', 'POST', 'Content-Length: 100\r\nContent-Type: application/x-www-form-urlencoded\r\n'],
  ])('a token request whose client resets %s is recorded as aborted, for its mirror, never as a 500', async (_label, method, extraHeaders) => {
    const repo = `paths/token-reset-${method.toLowerCase()}`;
    let asked!: () => void;
    const realmAsked = new Promise<void>((resolve) => (asked = resolve));
    let answer!: () => void;
    const answered = new Promise<void>((resolve) => (answer = resolve));
    upstream.on('*', `/token-reset-${method}`, async (req, res) => {
      req.resume();
      asked();
      await answered;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token: 'late-token' }));
    });
    upstream.on('*', new RegExp(`^/v2/${repo}/`), (req, res) => {
      req.resume();
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${upstream.url}/token-reset-${method}",service="budget"`, 'content-type': 'application/json', 'content-length': '2' });
      res.end('{}');
    });
    const challenge = await get(manifestPath(repo, 'v1'));
    const realm = /realm="([^"]+)"/.exec(String(challenge.headers['www-authenticate']))?.[1] ?? '';
    const path = realm.slice(agent.url.length);
    const before = agent.requests.length;
    const openConnections = async (): Promise<number> =>
      (await agent.runtime.metrics.connectionsOpen.get()).values.find((v) => v.labels['listener'] === 'mirror')?.value ?? 0;
    const openBefore = await openConnections();
    const socket = await rawSocket(Number(new URL(agent.url).port));
    socket.on('error', () => undefined);
    socket.write(`${method} ${path} HTTP/1.1\r\nHost: mirror\r\n${extraHeaders}\r\n${method === 'POST' ? 'grant_type=password' : ''}`);
    // The GET is cut while the realm is asked; the POST while its form is still arriving.
    if (method === 'GET') await realmAsked;
    else await pollUntil(async () => (await openConnections()) > openBefore, { timeoutMs: 2_000, what: 'the request arrived' });
    socket.resetAndDestroy();
    // The agent has seen the reset before the realm answers.
    await pollUntil(async () => (await openConnections()) === openBefore, { timeoutMs: 2_000, what: 'the reset seen' });
    answer();
    await pollUntil(() => agent.requests.length > before, { timeoutMs: 5_000, what: 'the token request to finish' });
    const record = agent.requests.at(-1)!;
    expect(record.outcome.kind).toBe('token');
    expect(record.outcome.registry).toBe(PT);
    expect(record.aborted).toBe(true);
    expect(record.error?.code).toBeUndefined();
    expect(record.status).not.toBe(500);
  });

  it.each([
    ['a token answer', 2_000, 200],
    ['a token answer over 64 KiB', 64 * KiB + 1, 502],
  ])('%s through the token endpoint', async (label, size, status) => {
    const repo = `paths/token-${size}`;
    upstream.on('*', `/token-${size}`, (req, res) => {
      req.resume();
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token: 'good-token', pad: 'x'.repeat(size - 30) }));
    });
    upstream.on('*', new RegExp(`^/v2/${repo}/`), (req, res) => {
      req.resume();
      res.writeHead(401, { 'www-authenticate': `Bearer realm="${upstream.url}/token-${size}",service="budget"`, 'content-type': 'application/json', 'content-length': '2' });
      res.end('{}');
    });
    const challenge = await get(manifestPath(repo, 'v1'));
    expect(challenge.status).toBe(401);
    const realm = /realm="([^"]+)"/.exec(String(challenge.headers['www-authenticate']))?.[1] ?? '';
    expect(realm.startsWith(agent.url), label).toBe(true);
    const token = await get(realm.slice(agent.url.length));
    expect(token.status).toBe(status);
  });
});
