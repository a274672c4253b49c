import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../agent/config/load.ts';
import { type AgentProcess, type InProcessAgent, startAgent, startAgentProcess, writeAgentConfig } from './fixtures/agent.ts';
import { makeImage, pushImage } from './fixtures/image.ts';
import { freePort } from './fixtures/net.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const A = 'a.corp.example:5000';
const B = 'b.corp.example';

describe('live reconfiguration', () => {
  let dir: string;
  let registry: RegistryHandle;
  let agent: InProcessAgent | undefined;
  let child: AgentProcess | undefined;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-reconf');
    registry = await startRegistry();
    await pushImage(registry.url, 'team/app', 'v1', await makeImage({ layers: 1, layerBytes: 1024 }));
  });

  afterAll(async () => {
    await agent?.stop();
    await child?.process.stop();
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('adds and removes mirrors without a restart: hosts.toml and routing follow', async () => {
    agent = await startAgent({ dir, manageHosts: true, mirrors: [{ registry: A, upstream: registry.url }] });
    const status = async (ns: string) => {
      const response = await request(`${agent!.url}/v2/team/app/manifests/v1?ns=${ns}`);
      await response.body.dump();
      return response.statusCode;
    };
    expect(await status(A)).toBe(200);
    expect(await status(B)).toBe(404);
    const both = parseConfig(
      `[[mirror]]\nregistry = "${A}"\nupstream = "${registry.url}"\n[[mirror]]\nregistry = "${B}"\nupstream = "${registry.url}"\n`,
      'inline',
    ).mirrors;
    const first = await agent.runtime.setMirrors(both);
    expect(first).toEqual({ added: [B], changed: [], removed: [] });
    expect(await status(B)).toBe(200);
    expect((await readdir(join(dir, 'certs.d'))).sort()).toEqual([A, B].sort());
    const second = await agent.runtime.setMirrors(both.filter((m) => m.registry === B));
    expect(second).toEqual({ added: [], changed: [], removed: [A] });
    expect(await status(A)).toBe(404);
    expect(await readdir(join(dir, 'certs.d'))).toEqual([B]);
  });

  it('SIGHUP reloads the file; a broken file changes nothing and says why', async () => {
    const port = await freePort();
    const childDir = join(dir, 'child');
    await (await import('node:fs/promises')).mkdir(childDir);
    const config = await writeAgentConfig({ dir: childDir, port, mirrors: [{ registry: A, upstream: registry.url }] });
    child = await startAgentProcess(config, join(childDir, 'agent.log'), port);
    await writeAgentConfig({ dir: childDir, port, mirrors: [{ registry: A, upstream: registry.url }, { registry: B, upstream: registry.url }] });
    process.kill(child.process.pid, 'SIGHUP');
    await pollUntil(async () => (await child!.logs()).includes('mirrors reconfigured'), { timeoutMs: 10_000, what: 'reload' });
    const viaB = await request(`${child.url}/v2/team/app/manifests/v1?ns=${B}`);
    await viaB.body.dump();
    expect(viaB.statusCode).toBe(200);
    await writeFile(config, 'listen = 5\n');
    process.kill(child.process.pid, 'SIGHUP');
    await pollUntil(async () => (await child!.logs()).includes('configuration reload failed'), { timeoutMs: 10_000, what: 'failed reload' });
    expect(await child.logs()).toContain('listen: expected a string');
    const still = await request(`${child.url}/v2/team/app/manifests/v1?ns=${B}`);
    await still.body.dump();
    expect(still.statusCode).toBe(200);
  });
});
