import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, startAgentProcess, writeAgentConfig } from './fixtures/agent.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { makeRandomBlob, pushBlob } from './fixtures/image.ts';
import { freePort } from './fixtures/net.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const REGISTRY = 'registry.corp.example:5000';

describe('5. the agent killed with SIGKILL in the middle of a blob', () => {
  let dir: string;
  let registry: RegistryHandle;
  let proxy: CountingProxy;
  let agent: AgentProcess | undefined;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-crash');
    registry = await startRegistry();
    proxy = await startCountingProxy(registry.url);
  });

  afterAll(async () => {
    await agent?.process.stop();
    await proxy?.stop();
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('serves no partial blob after restart, and the next pull succeeds', async () => {
    const blob = makeRandomBlob(16 * 1024 * 1024);
    await pushBlob(registry.url, 'team/app', blob);
    const port = await freePort();
    const config = await writeAgentConfig({ dir, port, mirrors: [{ registry: REGISTRY, upstream: proxy.url }] });
    agent = await startAgentProcess(config, join(dir, 'agent-1.log'), port);
    const url = `${agent.url}/v2/team/app/blobs/${blob.digest}?ns=${REGISTRY}`;

    await proxy.setFault({ kind: 'throttle', bytesPerSecond: 2 * 1024 * 1024, pathIncludes: blob.digest });
    const response = await request(url);
    expect(response.statusCode).toBe(200);
    let received = 0;
    const firstBytes = new Promise<void>((resolve) => {
      response.body.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received > 1024 * 1024) resolve();
      });
    });
    const ended = new Promise<boolean>((resolve) => {
      response.body.on('end', () => resolve(true));
      response.body.on('error', () => resolve(false));
    });
    await firstBytes;
    process.kill(agent.process.pid, 'SIGKILL');
    await agent.process.exited;
    // The client saw a cut connection, never a complete (short) body.
    expect(await ended).toBe(false);
    expect(received).toBeLessThan(blob.bytes.length);

    const cacheDir = join(dir, 'cache');
    expect(await readdir(join(cacheDir, 'tmp'))).toHaveLength(1);
    expect(await readdir(join(cacheDir, 'blobs', 'sha256'))).not.toContain(blob.digest.slice(7));

    await proxy.setFault(undefined);
    agent = await startAgentProcess(config, join(dir, 'agent-2.log'), port);
    expect(await readdir(join(cacheDir, 'tmp'))).toEqual([]);
    expect(await agent.logs()).toContain('removed partial downloads left by an earlier run');

    const again = await request(url);
    const body = Buffer.from(await again.body.arrayBuffer());
    expect(again.statusCode).toBe(200);
    expect(`sha256:${createHash('sha256').update(body).digest('hex')}`).toBe(blob.digest);
    expect(await readdir(join(cacheDir, 'blobs', 'sha256'))).toContain(blob.digest.slice(7));
  });
});
