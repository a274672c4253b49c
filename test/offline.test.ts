import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MirrorConfig } from '../agent/config/types.ts';
import { type InProcessAgent, startAgent } from './fixtures/agent.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { type TestImage, makeImage, pushImage } from './fixtures/image.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const OFFLINE = 'registry.corp.example:5000';
const OTHER = 'other.corp.example';
const MANIFEST_ACCEPT = 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json';

async function get(agent: InProcessAgent, registry: string, path: string, method: 'GET' | 'HEAD' = 'GET'): Promise<{ status: number; body: Buffer; code: string | undefined }> {
  const response = await request(`${agent.url}/v2/${path}?ns=${registry}`, { method, headers: { accept: MANIFEST_ACCEPT } });
  const body = Buffer.from(await response.body.arrayBuffer());
  let code: string | undefined;
  if (response.statusCode >= 400 && method === 'GET') code = (JSON.parse(body.toString('utf8')) as { errors: Array<{ code: string }> }).errors[0]?.code;
  return { status: response.statusCode, body, code };
}

function offline(config: MirrorConfig): MirrorConfig {
  return { ...config, mode: 'offline', maxStaleMs: 1 };
}

describe('mode = "offline": the cache and the tag records only, upstream never contacted', () => {
  let dir: string;
  let registry: RegistryHandle;
  let upstream: CountingProxy;
  let agent: InProcessAgent | undefined;
  let app: TestImage;
  let secret: TestImage;

  beforeAll(async () => {
    dir = await makeTempDir('offline');
    await mkdir(join(dir, 'agent'));
    registry = await startRegistry();
    upstream = await startCountingProxy(registry.url);
    app = await makeImage({ layers: 2, layerBytes: 64 * 1024 });
    secret = await makeImage({ layers: 1, layerBytes: 64 * 1024 });
    await pushImage(registry.url, 'team/app', '1', app);
    await pushImage(registry.url, 'team/secret', '1', secret);
    agent = await startAgent({
      dir: join(dir, 'agent'),
      mirrors: [
        { registry: OFFLINE, upstream: upstream.url },
        { registry: OTHER, upstream: upstream.url },
      ],
    });
    // Online first: the tag, its manifest and one layer through the mirror that goes offline; the
    // secret image only through the other mirror (the cache holds one copy of each digest).
    expect((await get(agent, OFFLINE, 'team/app/manifests/1')).status).toBe(200);
    expect((await get(agent, OFFLINE, `team/app/blobs/${app.config.digest}`)).status).toBe(200);
    expect((await get(agent, OFFLINE, `team/app/blobs/${app.layers[0]!.digest}`)).status).toBe(200);
    expect((await get(agent, OTHER, 'team/secret/manifests/1')).status).toBe(200);
    expect((await get(agent, OTHER, `team/secret/blobs/${secret.layers[0]!.digest}`)).status).toBe(200);
  }, 60_000);

  afterAll(async () => {
    await agent?.stop();
    await upstream?.stop();
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('serves the tag from its record whatever its age, and what it names from the cache', async () => {
    await agent!.runtime.setMirrors(agent!.runtime.config.mirrors.map((m) => (m.registry === OFFLINE ? offline(m) : m)));
    await upstream.setFault({ kind: 'down' });
    const before = upstream.requests.length;
    await new Promise((resolve) => setTimeout(resolve, 20)); // older than max_stale (1 ms): offline ignores it
    const manifest = await get(agent!, OFFLINE, 'team/app/manifests/1');
    expect(manifest.status).toBe(200);
    expect(manifest.body.equals(app.manifest)).toBe(true);
    expect((await get(agent!, OFFLINE, `team/app/manifests/${app.manifestDigest}`)).status).toBe(200);
    expect((await get(agent!, OFFLINE, `team/app/blobs/${app.layers[0]!.digest}`)).body.length).toBe(app.layers[0]!.bytes.length);
    expect((await get(agent!, OFFLINE, `team/app/blobs/${app.layers[0]!.digest}`, 'HEAD')).status).toBe(200);
    expect(upstream.requests.length).toBe(before);
  });

  it('anything else is unknown here: never fetched, never another mirror\'s cached content', async () => {
    const before = upstream.requests.length;
    // Not cached (the second layer was never pulled): 404, not a fetch.
    expect(await get(agent!, OFFLINE, `team/app/blobs/${app.layers[1]!.digest}`)).toMatchObject({ status: 404, code: 'BLOB_UNKNOWN' });
    expect(await get(agent!, OFFLINE, 'team/app/manifests/2')).toMatchObject({ status: 404, code: 'MANIFEST_UNKNOWN' });
    // Cached through the other mirror: the offline mirror's records do not name it.
    expect(await get(agent!, OFFLINE, `team/secret/manifests/${secret.manifestDigest}`)).toMatchObject({ status: 404, code: 'MANIFEST_UNKNOWN' });
    expect(await get(agent!, OFFLINE, `team/secret/blobs/${secret.layers[0]!.digest}`)).toMatchObject({ status: 404, code: 'BLOB_UNKNOWN' });
    expect(await get(agent!, OFFLINE, `team/secret/manifests/1`)).toMatchObject({ status: 404, code: 'MANIFEST_UNKNOWN' });
    // A blob of this mirror's image asked for under another repository is not this mirror's either.
    expect(await get(agent!, OFFLINE, `team/secret/blobs/${app.layers[0]!.digest}`)).toMatchObject({ status: 404, code: 'BLOB_UNKNOWN' });
    expect(upstream.requests.length).toBe(before);
  });

  it('after a restart, a digest is served straight away (the catalog is read from the tag records)', async () => {
    await agent!.stop();
    // The same directory: the config gets the mode, the cache and tag records stay.
    agent = await startAgent({
      dir: join(dir, 'agent'),
      mirrors: [
        { registry: OFFLINE, upstream: upstream.url, lines: ['mode = "offline"'] },
        { registry: OTHER, upstream: upstream.url },
      ],
    });
    const before = upstream.requests.length;
    await waitForOfflineCatalog(agent);
    expect((await get(agent, OFFLINE, `team/app/blobs/${app.layers[0]!.digest}`)).status).toBe(200);
    expect((await get(agent, OFFLINE, `team/app/manifests/${app.manifestDigest}`)).status).toBe(200);
    expect(upstream.requests.length).toBe(before);
    expect(agent.runtime.mirrors.list().find((m) => m.registry === OFFLINE)?.offline).toBe(true);
  });
});

async function waitForOfflineCatalog(agent: InProcessAgent): Promise<void> {
  const { pollUntil } = await import('./fixtures/poll.ts');
  await pollUntil(() => agent.logs.some((l) => l['msg'] === 'offline mirror: serving its tag records and what they name from the cache'), { timeoutMs: 10_000, what: 'offline catalog read' });
}
