import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type InProcessAgent, startAgent } from './fixtures/agent.ts';
import { type ContainerdHandle, startContainerd } from './fixtures/containerd.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { sha256 } from './fixtures/digest.ts';
import { type Answer, type OciErrorBody, fetchAnswer } from './fixtures/http-client.ts';
import { type MemoryBlob, type TestImage, makeImage, makeRandomBlob, pushBlob, pushImage } from './fixtures/image.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { type Sentinel, startSentinel } from './fixtures/sentinel.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const auth = { username: 'puller', password: 'correct horse' };
const REGISTRY = 'registry.corp.example:5000';
const REPO = 'team/app';

/** A connection of its own for one request, as separate containerd pulls would have: a shared pool could queue them. */
function ownConnection(): Agent {
  return new Agent({ keepAliveTimeout: 10, keepAliveMaxTimeout: 10 });
}

/** Each GET on its own connection. */
function getBlob(agentUrl: string, digest: string, headers: Record<string, string> = {}): Promise<Answer> {
  return fetchAnswer(`${agentUrl}/v2/${REPO}/blobs/${digest}?ns=${REGISTRY}`, { headers, dispatcher: ownConnection() });
}

/** GETs a blob and reports whether the body arrived whole, or the connection was cut. */
async function tryGetBlob(agentUrl: string, digest: string): Promise<{ status: number; complete: boolean; body?: Buffer }> {
  try {
    const result = await getBlob(agentUrl, digest);
    return { status: result.status, complete: true, body: result.body };
  } catch {
    return { status: 0, complete: false };
  }
}

/** The first entry of an OCI error body; fails the test when the body is not one. */
function ociError(body: Buffer): OciErrorBody['errors'][number] {
  const parsed = JSON.parse(body.toString('utf8')) as OciErrorBody;
  expect(parsed.errors).toHaveLength(1);
  return parsed.errors[0]!;
}

/** HEAD or GET of any path on the agent, on its own connection; the body is read whole. */
function call(url: string, method: 'GET' | 'HEAD' = 'GET'): Promise<Answer> {
  return fetchAnswer(url, { method, dispatcher: ownConnection() });
}

/** The headers every blob answer carries, whatever its origin (upstream, cache). */
function expectBlobHeaders(headers: Record<string, string | string[] | undefined>, blob: MemoryBlob): void {
  expect(headers['docker-content-digest']).toBe(blob.digest);
  expect(headers['etag']).toBe(`"${blob.digest}"`);
  expect(headers['cache-control']).toBe('max-age=31536000, immutable');
  expect(headers['content-length']).toBe(String(blob.bytes.length));
  expect(headers['content-type']).toBe('application/octet-stream');
  expect(headers['docker-distribution-api-version']).toBe('registry/2.0');
}

async function cachedBlobFiles(cacheDir: string): Promise<string[]> {
  return readdir(join(cacheDir, 'blobs', 'sha256'));
}

describe('pull-through mirror core with a real registry and containerd', () => {
  let dir: string;
  let registry: RegistryHandle;
  let proxy: CountingProxy;
  let agent: InProcessAgent;
  let containerd: ContainerdHandle;
  let hostsDir: string;
  let image: TestImage;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-core');
    hostsDir = join(dir, 'certs.d');
    await Promise.all([
      startRegistry({ auth }).then((r) => (registry = r)),
      startContainerd().then((c) => (containerd = c)),
      makeImage({ layers: 3, layerBytes: 256 * 1024 }).then((i) => (image = i)),
    ]);
    await pushImage(registry.url, REPO, 'v1', image, auth);
    proxy = await startCountingProxy(registry.url);
    agent = await startAgent({
      dir,
      manageHosts: true,
      mirrors: [{ registry: REGISTRY, upstream: proxy.url, username: auth.username, password: auth.password }],
    });
  });

  afterAll(async () => {
    await Promise.all([agent?.stop(), containerd?.stop(), proxy?.stop()]);
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('1. containerd pulls a 3-layer image through the agent, each blob fetched from upstream once', async () => {
    const result = await containerd.pull(`${REGISTRY}/${REPO}:v1`, { hostsDir, user: `${auth.username}:${auth.password}` });
    // ctr's progress display may log "failed to get content info … context canceled" when it is
    // stopped as the pull ends: its own shutdown, not a failed fetch.
    const output = (result.stderr + result.stdout)
      .split('\n')
      .filter((line) => !/msg="failed to get content info" error="context canceled"/.test(line))
      .join('\n');
    expect(output).not.toMatch(/error|failed/i);
    expect(result.code).toBe(0);
    for (const blob of [image.config, ...image.layers]) {
      expect(proxy.count({ method: 'GET', pathIncludes: `/blobs/${blob.digest}` }), blob.digest).toBe(1);
    }
    // containerd selected the mirror with ?ns=<registry>.
    expect(agent.requests.some((r) => r.outcome.registry === REGISTRY && r.outcome.kind === 'blob')).toBe(true);
  });

  it('2. pulls again into a fresh containerd namespace with the upstream stopped', async () => {
    const before = proxy.requests.length;
    await proxy.setFault({ kind: 'down' });
    try {
      const result = await containerd.pull(`${REGISTRY}/${REPO}:v1`, { hostsDir, namespace: 'fresh', user: `${auth.username}:${auth.password}` });
      expect(result.code, result.stderr).toBe(0);
    } finally {
      await proxy.setFault(undefined);
    }
    expect(proxy.requests.length).toBe(before);
    const blobRequests = agent.requests.filter((r) => r.outcome.kind === 'blob' && r.method === 'GET').slice(-4);
    expect(blobRequests.map((r) => r.outcome.cache)).toEqual(['hit', 'hit', 'hit', 'hit']);
    expect(agent.logs.some((l) => l['msg'] === 'upstream unavailable: serving the last known digest for this tag')).toBe(true);
  });

  it('3. 20 concurrent GETs of one uncached 64 MiB blob cause exactly one upstream GET', async () => {
    const blob = makeRandomBlob(64 * 1024 * 1024);
    await pushBlob(registry.url, REPO, blob, auth);
    const results = await Promise.all(Array.from({ length: 20 }, () => getBlob(agent.url, blob.digest)));
    for (const result of results) {
      expect(result.status).toBe(200);
      expect(result.body.length).toBe(blob.bytes.length);
      expect(sha256(result.body)).toBe(blob.digest);
    }
    expect(proxy.count({ method: 'GET', pathIncludes: `/blobs/${blob.digest}` })).toBe(1);
    const origins = agent.requests.filter((r) => r.outcome.kind === 'blob').slice(-20).map((r) => r.outcome.cache);
    expect(origins.filter((o) => o === 'miss')).toHaveLength(1);
    expect(await cachedBlobFiles(join(dir, 'cache'))).toContain(blob.digest.slice(7));
  }, 120_000); // 1.28 GiB through an in-process agent and 20 clients on 2 cores: ~20 s idle, more under load

  it('4. an upstream serving wrong bytes for a digest: the client fails and nothing is cached', async () => {
    const blob = makeRandomBlob(3 * 1024 * 1024 + 17);
    await pushBlob(registry.url, REPO, blob, auth);
    await proxy.setFault({ kind: 'corrupt', pathIncludes: blob.digest });
    try {
      const attempts = await Promise.all([tryGetBlob(agent.url, blob.digest), tryGetBlob(agent.url, blob.digest)]);
      for (const attempt of attempts) {
        // Either the connection was cut mid-body or an error status came back: never a complete 200.
        expect(attempt.complete && attempt.status === 200).toBe(false);
      }
    } finally {
      await proxy.setFault(undefined);
    }
    expect(await cachedBlobFiles(join(dir, 'cache'))).not.toContain(blob.digest.slice(7));
    expect(await readdir(join(dir, 'cache', 'tmp'))).toEqual([]);
    expect(agent.runtime.cache.stats().digestMismatches).toBeGreaterThanOrEqual(1);
    const retry = await getBlob(agent.url, blob.digest);
    expect(retry.status).toBe(200);
    expect(sha256(retry.body)).toBe(blob.digest);
  });

  it('6. Range requests on a cached and on an in-flight blob return the right bytes', async () => {
    const blob = makeRandomBlob(8 * 1024 * 1024);
    await pushBlob(registry.url, REPO, blob, auth);
    await proxy.setFault({ kind: 'throttle', bytesPerSecond: 4 * 1024 * 1024, pathIncludes: blob.digest });
    try {
      const full = getBlob(agent.url, blob.digest);
      // The fill is running (about 2 s at this pace): the range request joins it.
      await pollUntil(() => agent.runtime.cache.stats().inflight === 1, { timeoutMs: 10_000, intervalMs: 5, what: 'fill running' });
      const inflight = await getBlob(agent.url, blob.digest, { range: 'bytes=1000-2999' });
      expect(inflight.status).toBe(206);
      // It joined the fill (its last byte waits for the whole blob to be verified, like every in-flight read).
      expect(agent.requests.some((r) => r.status === 206 && r.outcome.cache === 'joined')).toBe(true);
      expect(inflight.headers['content-range']).toBe(`bytes 1000-2999/${blob.bytes.length}`);
      expect(inflight.body.equals(blob.bytes.subarray(1000, 3000))).toBe(true);
      expect((await full).body.equals(blob.bytes)).toBe(true);
    } finally {
      await proxy.setFault(undefined);
    }
    const open = await getBlob(agent.url, blob.digest, { range: 'bytes=5000000-' });
    expect(open.status).toBe(206);
    expect(open.body.equals(blob.bytes.subarray(5_000_000))).toBe(true);
    const suffix = await getBlob(agent.url, blob.digest, { range: 'bytes=-10' });
    expect(suffix.body.equals(blob.bytes.subarray(blob.bytes.length - 10))).toBe(true);
    const beyond = await getBlob(agent.url, blob.digest, { range: `bytes=${blob.bytes.length}-` });
    expect(beyond.status).toBe(416);
    expect(beyond.headers['content-range']).toBe(`bytes */${blob.bytes.length}`);
    expect(JSON.parse(beyond.body.toString()).errors[0].code).toBe('RANGE_INVALID');
    expect(proxy.count({ method: 'GET', pathIncludes: `/blobs/${blob.digest}` })).toBe(1);
  });

  it('honours a Range under If-Range only when it names the blob\'s ETag; otherwise the whole blob, 200', async () => {
    const blob = makeRandomBlob(64 * 1024);
    await pushBlob(registry.url, REPO, blob, auth);
    const whole = await getBlob(agent.url, blob.digest);
    const etag = whole.headers['etag'];
    expect(etag).toBe(`"${blob.digest}"`);
    const matching = await getBlob(agent.url, blob.digest, { range: 'bytes=0-1', 'if-range': String(etag) });
    expect(matching.status).toBe(206);
    expect(matching.body.equals(blob.bytes.subarray(0, 2))).toBe(true);
    for (const validator of ['"x"', `W/${String(etag)}`, 'Sat, 05 Dec 2026 08:00:00 GMT']) {
      const other = await getBlob(agent.url, blob.digest, { range: 'bytes=0-1', 'if-range': validator });
      expect(other.status, validator).toBe(200);
      expect(other.headers['content-range'], validator).toBeUndefined();
      expect(other.body.equals(blob.bytes), validator).toBe(true);
    }
  });

  it('serves manifests with the right headers on HEAD and GET', async () => {
    const url = `${agent.url}/v2/${REPO}/manifests/v1?ns=${REGISTRY}`;
    const head = await request(url, { method: 'HEAD' });
    await head.body.dump();
    expect(head.statusCode).toBe(200);
    expect(head.headers['content-type']).toBe(image.manifestMediaType);
    expect(head.headers['docker-content-digest']).toBe(image.manifestDigest);
    expect(head.headers['content-length']).toBe(String(image.manifest.length));
    expect(head.headers['docker-distribution-api-version']).toBe('registry/2.0');
    const byDigest = await request(`${agent.url}/v2/${REPO}/manifests/${image.manifestDigest}?ns=${REGISTRY}`);
    const body = Buffer.from(await byDigest.body.arrayBuffer());
    expect(body.equals(image.manifest)).toBe(true);
    expect(byDigest.headers['cache-control']).toContain('immutable');
    expect(byDigest.headers['etag']).toBe(`"${image.manifestDigest}"`);
    const missing = await request(`${agent.url}/v2/${REPO}/manifests/nope?ns=${REGISTRY}`);
    expect(missing.statusCode).toBe(404);
    expect(((await missing.body.json()) as { errors: Array<{ code: string }> }).errors[0]?.code).toBe('MANIFEST_UNKNOWN');
  });

  it('refuses registries that are not configured and write methods', async () => {
    const other = await request(`${agent.url}/v2/${REPO}/manifests/v1?ns=evil.example.com`);
    expect(other.statusCode).toBe(404);
    expect(((await other.body.json()) as { errors: Array<{ code: string }> }).errors[0]?.code).toBe('NAME_UNKNOWN');
    const put = await request(`${agent.url}/v2/${REPO}/manifests/v1?ns=${REGISTRY}`, { method: 'PUT', body: '{}' });
    expect(put.statusCode).toBe(405);
    expect(((await put.body.json()) as { errors: Array<{ code: string }> }).errors[0]?.code).toBe('UNSUPPORTED');
    const sha512 = await request(`${agent.url}/v2/${REPO}/blobs/sha512:${'a'.repeat(128)}?ns=${REGISTRY}`);
    expect(sha512.statusCode).toBe(400);
    expect(((await sha512.body.json()) as { errors: Array<{ message: string }> }).errors[0]?.message).toMatch(/only sha256/);
  });
  it('blob HEAD and GET carry digest, ETag, immutable caching, length, type and API version; a HEAD never fills the cache', async () => {
    const blob = makeRandomBlob(200 * 1024 + 3);
    await pushBlob(registry.url, REPO, blob, auth);
    const url = `${agent.url}/v2/${REPO}/blobs/${blob.digest}?ns=${REGISTRY}`;
    const cacheDir = join(dir, 'cache');

    // Uncached: the size comes from an upstream HEAD; no body is fetched and nothing is cached.
    const coldHead = await call(url, 'HEAD');
    expect(coldHead.status).toBe(200);
    expectBlobHeaders(coldHead.headers, blob);
    expect(coldHead.body.length).toBe(0);
    expect(proxy.count({ method: 'HEAD', pathIncludes: `/blobs/${blob.digest}` })).toBe(1);
    expect(proxy.count({ method: 'GET', pathIncludes: `/blobs/${blob.digest}` })).toBe(0);
    expect(await cachedBlobFiles(cacheDir)).not.toContain(blob.digest.slice(7));

    const get = await call(url);
    expect(get.status).toBe(200);
    expectBlobHeaders(get.headers, blob);
    expect(get.body.equals(blob.bytes)).toBe(true);
    expect(proxy.count({ method: 'GET', pathIncludes: `/blobs/${blob.digest}` })).toBe(1);

    // Cached: HEAD and GET are answered from disk with the same headers; upstream is not asked again.
    const warmHead = await call(url, 'HEAD');
    expect(warmHead.status).toBe(200);
    expectBlobHeaders(warmHead.headers, blob);
    expect(warmHead.body.length).toBe(0);
    const warmGet = await call(url);
    expectBlobHeaders(warmGet.headers, blob);
    expect(warmGet.body.equals(blob.bytes)).toBe(true);
    expect(proxy.count({ pathIncludes: `/blobs/${blob.digest}` })).toBe(2);
    expect(agent.requests.filter((r) => r.outcome.kind === 'blob' && r.method === 'GET').at(-1)?.outcome.cache).toBe('hit');
  });

  it('without ?ns= (skopeo, curl) the only configured mirror serves manifests and blobs', async () => {
    const blob = makeRandomBlob(64 * 1024);
    await pushBlob(registry.url, REPO, blob, auth);
    const before = agent.requests.length;

    const manifest = await call(`${agent.url}/v2/${REPO}/manifests/v1`);
    expect(manifest.status).toBe(200);
    expect(manifest.headers['docker-content-digest']).toBe(image.manifestDigest);
    expect(manifest.body.equals(image.manifest)).toBe(true);
    const got = await call(`${agent.url}/v2/${REPO}/blobs/${blob.digest}`);
    expect(got.status).toBe(200);
    expect(sha256(got.body)).toBe(blob.digest);

    // Fetched through that mirror's upstream, and recorded as that mirror's requests.
    expect(proxy.count({ method: 'GET', pathIncludes: `/blobs/${blob.digest}` })).toBe(1);
    expect(agent.requests.slice(before).map((r) => r.outcome.registry)).toEqual([REGISTRY, REGISTRY]);
  });

  it('an upstream 404 for a blob is 404 BLOB_UNKNOWN as an OCI error, and nothing is cached', async () => {
    const absent = makeRandomBlob(1024); // never pushed
    const url = `${agent.url}/v2/${REPO}/blobs/${absent.digest}?ns=${REGISTRY}`;
    const cacheDir = join(dir, 'cache');

    const get = await call(url);
    expect(get.status).toBe(404);
    expect(get.headers['content-type']).toMatch(/^application\/json/);
    expect(get.headers['docker-distribution-api-version']).toBe('registry/2.0');
    const error = ociError(get.body);
    expect(error.code).toBe('BLOB_UNKNOWN');
    expect(error.detail).toEqual({ digest: absent.digest });
    const head = await call(url, 'HEAD');
    expect(head.status).toBe(404);
    expect(head.body.length).toBe(0);

    // Upstream was asked (the 404 is its answer, not a local refusal), and no trace is left on disk.
    expect(proxy.count({ method: 'GET', pathIncludes: `/blobs/${absent.digest}` })).toBe(1);
    expect(proxy.count({ method: 'HEAD', pathIncludes: `/blobs/${absent.digest}` })).toBe(1);
    expect(await cachedBlobFiles(cacheDir)).not.toContain(absent.digest.slice(7));
    expect(await readdir(join(cacheDir, 'tmp'))).toEqual([]);
    expect(agent.runtime.cache.stats().inflight).toBe(0);
  });
});

describe('two mirrors and a request without ?ns=', () => {
  const A = 'a.corp.example:5000';
  const B = 'b.corp.example';
  let dir: string;
  let sentinel: Sentinel;
  let agent: InProcessAgent;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-two-mirrors');
    sentinel = await startSentinel();
    agent = await startAgent({ dir, mirrors: [{ registry: A, upstream: sentinel.url }, { registry: B, upstream: sentinel.url }] });
  });

  afterAll(async () => {
    await agent?.stop();
    await sentinel?.stop();
    if (dir) await removeTempDir(dir);
  });

  /** Requests for content that reached the upstream (the reachability probe's `GET /v2/` is not one). */
  const contentRequests = () => sentinel.hits.filter((h) => h.kind === 'request' && /\/(manifests|blobs)\//.test(h.detail));

  it('is refused with NAME_UNKNOWN saying to add ?ns=, and nothing is forwarded', async () => {
    const digest = makeRandomBlob(16).digest;
    for (const path of [`/v2/${REPO}/manifests/v1`, `/v2/${REPO}/blobs/${digest}`]) {
      const response = await call(`${agent.url}${path}`);
      expect(response.status, path).toBe(404);
      expect(response.headers['content-type']).toMatch(/^application\/json/);
      const error = ociError(response.body);
      expect(error.code).toBe('NAME_UNKNOWN');
      expect(error.message).toContain('add ?ns=<registry>');
      expect((error.detail?.['registries'] as string[]).sort()).toEqual([A, B].sort());
    }
    expect(contentRequests()).toEqual([]);

    // The same request with ?ns= is forwarded to that mirror's upstream: the check above could fail.
    await call(`${agent.url}/v2/${REPO}/manifests/v1?ns=${A}`);
    expect(contentRequests().length).toBeGreaterThan(0);
  });
});

describe('eviction', () => {
  let dir: string;
  let registry: RegistryHandle;
  let agent: InProcessAgent;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-evict');
    registry = await startRegistry();
    agent = await startAgent({ dir, cacheMaxBytes: '3MiB', mirrors: [{ registry: REGISTRY, upstream: registry.url }] });
  });

  afterAll(async () => {
    await agent?.stop();
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('7. keeps the cache under cache_max_bytes, least recently used first', async () => {
    const blobs: MemoryBlob[] = Array.from({ length: 6 }, () => makeRandomBlob(1024 * 1024));
    for (const blob of blobs) await pushBlob(registry.url, REPO, blob);
    for (const blob of blobs) {
      const result = await getBlob(agent.url, blob.digest);
      expect(sha256(result.body)).toBe(blob.digest);
      // Touch the first blob each time: it is the most recently used and must survive.
      await getBlob(agent.url, blobs[0]!.digest);
    }
    const cacheDir = join(dir, 'cache');
    const files = await cachedBlobFiles(cacheDir);
    const sizes = await Promise.all(files.map(async (f) => (await stat(join(cacheDir, 'blobs', 'sha256', f))).size));
    expect(sizes.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(3 * 1024 * 1024);
    expect(files).toContain(blobs[0]!.digest.slice(7));
    expect(files).toContain(blobs[5]!.digest.slice(7));
    expect(files).not.toContain(blobs[1]!.digest.slice(7));
    expect(agent.runtime.cache.stats().evictions).toBeGreaterThanOrEqual(3);
  });
});
