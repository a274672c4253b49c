// Mirror's tag resolution against a real scripted upstream on loopback, a real BlobCache and a real
// TagStore in a temp dir. The clock is Mirror's `now` hook, so tag_ttl and max_stale are crossed
// without waiting. Upstream request counts (by method and path) are the proof.
import { createHash } from 'node:crypto';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlobCache } from '../cache/blob-cache.ts';
import { BodyBudget } from '../memory/body-budget.ts';
import type { MirrorConfig } from '../config/types.ts';
import { type Digest, parseDigest } from '../oci/digest.ts';
import { toOciError } from '../http/errors.ts';
import { ContentUnknownError } from '../oci/errors.ts';
import { MANIFEST_ACCEPT } from '../oci/media-types.ts';
import { type RepositoryName, parseRepositoryName } from '../oci/reference.ts';
import { UpstreamClient } from '../upstream/client.ts';
import { UpstreamError } from '../upstream/errors.ts';
import { type ManifestResult, Mirror } from './mirror.ts';
import { TagStore } from './tag-store.ts';
import { closeServer, listenLoopback } from '../../test/fixtures/http-server.ts';

const REGISTRY = 'registry.test:5000';
const NAME: RepositoryName = parseRepositoryName('team/app');
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;

interface Seen {
  readonly method: string;
  readonly path: string;
  readonly accept: string | undefined;
}

/** A manifest answer after its body was copied out and released. */
type Served = Omit<ManifestResult, 'body'> & { readonly bytes: Buffer };

interface Manifest {
  readonly bytes: Buffer;
  readonly digest: Digest;
}

function manifest(label: string): Manifest {
  const bytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digestOf(`config ${label}`), size: 2 },
      layers: [],
      annotations: { label },
    }),
  );
  return { bytes, digest: digestOf(bytes) };
}

function digestOf(bytes: Buffer | string): Digest {
  return parseDigest(`sha256:${createHash('sha256').update(bytes).digest('hex')}`);
}

/**
 * A registry on 127.0.0.1 that serves manifests by tag and by digest (HEAD and GET), records every
 * request, and fails where a test says so.
 */
class ScriptedUpstream {
  readonly seen: Seen[] = [];
  /** Status to answer instead of the content, by `METHOD /path`. */
  readonly faults = new Map<string, number>();
  /** Some registries answer a manifest HEAD without Docker-Content-Digest. */
  headWithoutDigest = false;
  /** Kept: a stopped server has no address, and a restarted mirror still points here. */
  readonly url: URL;
  readonly #server: Server;
  readonly #manifests = new Map<string, Buffer>();
  readonly #tags = new Map<string, Digest>();

  private constructor(server: Server, port: number) {
    this.#server = server;
    this.url = new URL(`http://127.0.0.1:${port}/`);
    server.on('request', (req: IncomingMessage, res: ServerResponse) => this.#answer(req, res));
  }

  static async start(): Promise<ScriptedUpstream> {
    const server = createServer();
    return new ScriptedUpstream(server, await listenLoopback(server));
  }

  /** Points `tag` at `m` (pushes it). */
  tag(tag: string, m: Manifest): void {
    this.#manifests.set(m.digest, m.bytes);
    this.#tags.set(tag, m.digest);
  }

  untag(tag: string): void {
    this.#tags.delete(tag);
  }

  count(method: 'GET' | 'HEAD', reference?: string): number {
    return this.seen.filter((s) => s.method === method && (reference === undefined || s.path === path(reference))).length;
  }

  forget(): void {
    this.seen.length = 0;
  }

  /** Stops listening and drops open connections: from now on upstream refuses connections. */
  stop(): Promise<void> {
    return closeServer(this.#server);
  }

  #answer(req: IncomingMessage, res: ServerResponse): void {
    const method = req.method ?? '';
    const url = req.url ?? '';
    this.seen.push({ method, path: url, accept: req.headers.accept });
    req.resume();
    const fault = this.faults.get(`${method} ${url}`);
    const match = /^\/v2\/team\/app\/manifests\/([^/]+)$/.exec(url);
    const reference = match?.[1] ?? '';
    const digest = reference.startsWith('sha256:') ? reference : this.#tags.get(reference);
    const bytes = digest === undefined ? undefined : this.#manifests.get(digest);
    if (fault !== undefined || !digest || !bytes) {
      const body = JSON.stringify({ errors: [{ code: fault ? 'UNAVAILABLE' : 'MANIFEST_UNKNOWN', message: 'scripted' }] });
      res.writeHead(fault ?? 404, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) });
      res.end(method === 'HEAD' ? undefined : body);
      return;
    }
    const headers: Record<string, string> = { 'content-type': OCI_MANIFEST, 'content-length': String(bytes.length) };
    if (!(method === 'HEAD' && this.headWithoutDigest)) headers['docker-content-digest'] = digest;
    res.writeHead(200, headers);
    res.end(method === 'HEAD' ? undefined : bytes);
  }
}

function path(reference: string): string {
  return `/v2/${NAME}/manifests/${reference}`;
}

describe('Mirror: tags', () => {
  const bodies = new BodyBudget();
  let dir: string;
  let upstream: ScriptedUpstream;
  let clock: number;
  let warnings: string[];
  const clients: UpstreamClient[] = [];

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rpa-mirror-'));
    upstream = await ScriptedUpstream.start();
    clock = 1_700_000_000_000;
    warnings = [];
  });

  afterEach(async () => {
    // Every manifest answer, served or failed, gave its bytes back.
    expect(bodies.state()).toEqual({ held: 0, waiting: 0 });
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await upstream.stop();
    await rm(dir, { recursive: true, force: true });
  });

  /** A mirror as runtime.ts builds it (agent auth, direct route), with the test's clock; `tags` survives a "restart". */
  async function newMirror(times: { tagTtlMs?: number; maxStaleMs?: number } = {}): Promise<{ mirror: Mirror; tags: TagStore }> {
    const config: MirrorConfig = {
      registry: REGISTRY,
      upstream: upstream.url,
      tagTtlMs: times.tagTtlMs ?? 0,
      maxStaleMs: times.maxStaleMs ?? HOUR,
      repositoryPrefix: '',
      route: 'direct',
      auth: 'agent',
      mode: 'online',
      preload: [],
      preloadIntervalMs: 900_000,
      budget: {},
    };
    const cache = new BlobCache(join(dir, 'cache'), 64 * 1024 * 1024);
    await cache.init();
    const tags = new TagStore(join(dir, 'cache', 'tags'));
    await tags.init();
    const client = new UpstreamClient({ registry: REGISTRY, base: upstream.url, auth: 'agent' });
    clients.push(client);
    const log = pino({ level: 'warn' }, { write: (line: string) => warnings.push((JSON.parse(line) as { msg: string }).msg) });
    return { mirror: new Mirror({ config, upstream: client, cache, tags, log, now: () => clock, bodies }), tags };
  }

  /** A manifest answer as the HTTP handler would take it: the bytes copied out, the body released at once. */
  async function served(answer: Promise<ManifestResult>): Promise<Served> {
    const { body, ...result } = await answer;
    const bytes = Buffer.from(body.bytes);
    body.release();
    return { ...result, bytes };
  }

  function get(mirror: Mirror, tag = 'v1'): Promise<Served> {
    return served(mirror.manifest(NAME, { kind: 'tag', tag }));
  }

  function expectServes(result: Served, m: Manifest, origin: ManifestResult['origin']): void {
    expect(result.digest).toBe(m.digest);
    expect(result.mediaType).toBe(OCI_MANIFEST);
    expect(result.size).toBe(m.bytes.length);
    expect(result.bytes.equals(m.bytes)).toBe(true);
    expect(result.origin).toBe(origin);
  }

  async function failureOf(promise: Promise<unknown>): Promise<unknown> {
    try {
      await promise;
    } catch (error) {
      return error;
    }
    throw new Error('expected the manifest request to fail');
  }

  it('GET of a tag resolves with a HEAD and fetches by digest; a second GET costs one HEAD and no manifest GET', async () => {
    const v1 = manifest('v1');
    upstream.tag('v1', v1);
    const { mirror } = await newMirror();

    expectServes(await get(mirror), v1, 'miss');
    expect(upstream.seen.map((s) => `${s.method} ${s.path}`)).toEqual([`HEAD ${path('v1')}`, `GET ${path(v1.digest)}`]);
    // The HEAD asks with the same Accept as the GET, so it names the manifest a GET would return.
    expect(upstream.seen.map((s) => s.accept)).toEqual([MANIFEST_ACCEPT, MANIFEST_ACCEPT]);

    upstream.forget();
    expectServes(await get(mirror), v1, 'hit');
    expect(upstream.seen.map((s) => `${s.method} ${s.path}`)).toEqual([`HEAD ${path('v1')}`]);
    expect(upstream.count('GET')).toBe(0);
  });

  it('a HEAD and a GET of a tag share the cached manifest', async () => {
    const v1 = manifest('v1');
    upstream.tag('v1', v1);
    const { mirror } = await newMirror();
    const head = await served(mirror.manifest(NAME, { kind: 'tag', tag: 'v1' }));
    expect(head.digest).toBe(v1.digest);
    upstream.forget();
    expectServes(await get(mirror), v1, 'hit');
    expect(upstream.count('HEAD', 'v1')).toBe(1);
    expect(upstream.count('GET')).toBe(0);
  });

  it('a fresh tag_ttl answer skips upstream; an expired one asks again with a HEAD', async () => {
    const v1 = manifest('v1');
    const v2 = manifest('v2');
    upstream.tag('v1', v1);
    const { mirror } = await newMirror({ tagTtlMs: 5 * MINUTE });
    expectServes(await get(mirror), v1, 'miss');
    upstream.forget();

    // The tag moves upstream, but the answer is still fresh: nobody asks.
    upstream.tag('v1', v2);
    clock += 5 * MINUTE - 1;
    expectServes(await get(mirror), v1, 'hit');
    expect((await served(mirror.manifest(NAME, { kind: 'tag', tag: 'v1' }))).digest).toBe(v1.digest);
    expect(upstream.seen).toEqual([]);

    clock += 1;
    expectServes(await get(mirror), v2, 'miss');
    expect(upstream.seen.map((s) => `${s.method} ${s.path}`)).toEqual([`HEAD ${path('v1')}`, `GET ${path(v2.digest)}`]);

    // The new answer is fresh from now on.
    upstream.forget();
    clock += MINUTE;
    expectServes(await get(mirror), v2, 'hit');
    expect(upstream.seen).toEqual([]);
  });

  it('upstream unreachable: the last known digest is served within max_stale, an error after', async () => {
    const v1 = manifest('v1');
    upstream.tag('v1', v1);
    const { mirror } = await newMirror({ maxStaleMs: HOUR });
    await get(mirror);
    await upstream.stop();

    clock += HOUR;
    expectServes(await get(mirror), v1, 'stale');
    expect(warnings).toContain('upstream unavailable: serving the last known digest for this tag');

    clock += 1;
    const error = await failureOf(get(mirror));
    expect(error).toBeInstanceOf(UpstreamError);
    expect((error as UpstreamError).failure).toBe('unreachable');
    expect(warnings).toContain('upstream unavailable and the cached tag is older than max_stale');
  });

  it('upstream unreachable and the tag never seen: the error, nothing served', async () => {
    const { mirror } = await newMirror();
    await upstream.stop();
    const error = await failureOf(get(mirror));
    expect(error).toBeInstanceOf(UpstreamError);
    expect((error as UpstreamError).unavailable).toBe(true);
  });

  it('upstream 5xx: the last known digest is served within max_stale', async () => {
    const v1 = manifest('v1');
    upstream.tag('v1', v1);
    const { mirror } = await newMirror();
    await get(mirror);
    upstream.forget();
    upstream.faults.set(`HEAD ${path('v1')}`, 503);

    clock += 10 * MINUTE;
    expectServes(await get(mirror), v1, 'stale');
    expect(upstream.seen.map((s) => `${s.method} ${s.path}`)).toEqual([`HEAD ${path('v1')}`]);

    clock += HOUR;
    const error = await failureOf(get(mirror));
    expect(error).toBeInstanceOf(UpstreamError);
    expect((error as UpstreamError).status).toBe(503);
  });

  it('upstream 404 for a tag that was known: MANIFEST_UNKNOWN, not the stale digest', async () => {
    const v1 = manifest('v1');
    upstream.tag('v1', v1);
    const { mirror } = await newMirror();
    await get(mirror);
    upstream.untag('v1');

    const error = await failureOf(get(mirror));
    expect(error).toBeInstanceOf(ContentUnknownError);
    expect(toOciError(error).code).toBe('MANIFEST_UNKNOWN');
    // The manifest itself is still cached and served by digest.
    upstream.forget();
    expect((await served(mirror.manifest(NAME, { kind: 'digest', digest: v1.digest }))).origin).toBe('hit');
    expect(upstream.seen).toEqual([]);
  });

  it('the tag moved but the new manifest cannot be fetched: the old one is served, and the record still points at it', async () => {
    const v1 = manifest('v1');
    const v2 = manifest('v2');
    upstream.tag('v1', v1);
    const { mirror, tags } = await newMirror();
    await get(mirror);
    const before = await tags.get(REGISTRY, NAME, 'v1');
    expect(before?.digest).toBe(v1.digest);

    upstream.tag('v1', v2);
    upstream.faults.set(`GET ${path(v2.digest)}`, 503);
    clock += MINUTE;
    // Twice: the stale answer does not change the record, so the next request asks upstream again.
    for (let attempt = 0; attempt < 2; attempt += 1) {
      upstream.forget();
      const result = await served(mirror.manifest(NAME, { kind: 'tag', tag: 'v1' }));
      expect(result.digest).toBe(v1.digest);
      expect(result.origin).toBe('stale');
      expect(upstream.seen.map((s) => `${s.method} ${s.path}`)).toEqual([`HEAD ${path('v1')}`, `GET ${path(v2.digest)}`]);
    }
    // Not confirmed by upstream: the record keeps its digest and the time it was last confirmed.
    expect(await tags.get(REGISTRY, NAME, 'v1')).toEqual(before);

    // Upstream now goes away entirely: the record must still lead to cached bytes.
    await upstream.stop();
    expectServes(await get(mirror), v1, 'stale');
  });

  it('the tag moved and the new manifest arrives: the record follows only then', async () => {
    const v1 = manifest('v1');
    const v2 = manifest('v2');
    upstream.tag('v1', v1);
    const { mirror, tags } = await newMirror();
    await get(mirror);
    upstream.tag('v1', v2);
    clock += MINUTE;
    expectServes(await get(mirror), v2, 'miss');
    expect(await tags.get(REGISTRY, NAME, 'v1')).toEqual({ digest: v2.digest, mediaType: OCI_MANIFEST, size: v2.bytes.length, checkedAt: clock });
  });

  it('a HEAD without Docker-Content-Digest: GET by tag, verified and cached by its computed digest', async () => {
    const v1 = manifest('v1');
    upstream.tag('v1', v1);
    upstream.headWithoutDigest = true;
    const { mirror, tags } = await newMirror();

    expectServes(await get(mirror), v1, 'miss');
    expect(upstream.seen.map((s) => `${s.method} ${s.path}`)).toEqual([`HEAD ${path('v1')}`, `GET ${path('v1')}`]);
    expect(upstream.seen.map((s) => s.accept)).toEqual([MANIFEST_ACCEPT, MANIFEST_ACCEPT]);
    expect((await tags.get(REGISTRY, NAME, 'v1'))?.digest).toBe(v1.digest);

    await upstream.stop();
    expectServes(await get(mirror), v1, 'stale');
    expect((await served(mirror.manifest(NAME, { kind: 'digest', digest: v1.digest }))).origin).toBe('hit');
  });

  it('a restarted agent serves the persisted tag answer while upstream is down', async () => {
    const v1 = manifest('v1');
    upstream.tag('v1', v1);
    await get((await newMirror()).mirror);
    await upstream.stop();
    const restarted = await newMirror();
    expectServes(await get(restarted.mirror), v1, 'stale');
  });
});
