import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type InProcessAgent, startAgent, writeAgentConfig } from './fixtures/agent.ts';
import { type ContainerdHandle, startContainerd } from './fixtures/containerd.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { makeImage, pushImage } from './fixtures/image.ts';
import { runCommand } from './fixtures/process.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const ADMIN_REGISTRY = 'registry.corp.example:5000';
const NEW_REGISTRY = 'other.corp.example';
const UNRELATED = 'untouched.example.com';

/** What an admin might have: their own CA (relative path), skip_verify, another mirror with headers. */
function adminHostsToml(mirrorUrl: string): string {
  return `# admin's own file: keep me byte for byte
server = "https://${ADMIN_REGISTRY}"

[host."${mirrorUrl}"]
  capabilities = ["pull", "resolve"]
  ca = "corp-ca.pem"
  skip_verify = true
  [host."${mirrorUrl}".header]
    x-team = ["platform"]
`;
}

describe('the agent wires containerd itself and cleans up after itself', () => {
  let dir: string;
  let hostsDir: string;
  let registry: RegistryHandle;
  let direct: CountingProxy;
  let agent: InProcessAgent | undefined;
  let containerd: ContainerdHandle;
  let adminOriginal: string;
  let unrelatedOriginal: string;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-wiring');
    hostsDir = join(dir, 'certs.d');
    await Promise.all([startRegistry().then((r) => (registry = r)), startContainerd().then((c) => (containerd = c))]);
    const image = await makeImage({ layers: 2, layerBytes: 64 * 1024 });
    await pushImage(registry.url, 'team/app', 'v1', image);
    await pushImage(registry.url, 'team/other', 'v1', image);
    // The admin's own mirror: a counting proxy in front of the same registry.
    direct = await startCountingProxy(registry.url);
    adminOriginal = adminHostsToml(direct.url);
    await mkdir(join(hostsDir, ADMIN_REGISTRY), { recursive: true });
    await writeFile(join(hostsDir, ADMIN_REGISTRY, 'hosts.toml'), adminOriginal);
    // A real (self-signed) CA: containerd loads it from the path relative to the registry's directory.
    const ca = await runCommand('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=corp-ca', '-keyout', join(dir, 'ca.key'), '-out', join(hostsDir, ADMIN_REGISTRY, 'corp-ca.pem')]);
    expect(ca.code, ca.stderr).toBe(0);
    unrelatedOriginal = 'server = "https://untouched.example.com"\n';
    await mkdir(join(hostsDir, UNRELATED), { recursive: true });
    await writeFile(join(hostsDir, UNRELATED, 'hosts.toml'), unrelatedOriginal);
    await writeFile(join(dir, 'containerd-config.toml'), `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "${hostsDir}"\n`);
  });

  afterAll(async () => {
    await agent?.stop();
    await Promise.all([containerd?.stop(), direct?.stop()]);
    await registry?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('writes hosts.toml with the agent first, keeping the admin file, and containerd pulls through it', async () => {
    agent = await startAgent({
      dir,
      manageHosts: true,
      mirrors: [
        { registry: ADMIN_REGISTRY, upstream: registry.url },
        { registry: NEW_REGISTRY, upstream: registry.url },
      ],
    });
    const written = await readFile(join(hostsDir, ADMIN_REGISTRY, 'hosts.toml'), 'utf8');
    const agentAt = written.indexOf(`[host."${agent.url}"]`);
    const adminAt = written.indexOf(`[host."${direct.url}"]`);
    expect(agentAt).toBeGreaterThan(0);
    expect(adminAt).toBeGreaterThan(agentAt);
    expect(written).toContain(`server = "https://${ADMIN_REGISTRY}"`);
    expect(written).toContain('ca = "corp-ca.pem"');
    expect(written).toContain('skip_verify = true');
    expect(await readFile(join(hostsDir, ADMIN_REGISTRY, 'hosts.toml.registry-proxy-agent.orig'), 'utf8')).toBe(adminOriginal);
    expect(await readFile(join(hostsDir, UNRELATED, 'hosts.toml'), 'utf8')).toBe(unrelatedOriginal);
    expect(agent.logs.some((l) => l['state'] === 'ok')).toBe(true);

    const before = direct.requests.length;
    const pulled = await containerd.pull(`${ADMIN_REGISTRY}/team/app:v1`, { hostsDir });
    expect(pulled.code, pulled.stderr).toBe(0);
    expect(agent.requests.filter((r) => r.outcome.registry === ADMIN_REGISTRY && r.status === 200).length).toBeGreaterThanOrEqual(4);
    // The agent answered: the admin's mirror behind it was not needed.
    expect(direct.requests.length).toBe(before);

    const fresh = await containerd.pull(`${NEW_REGISTRY}/team/other:v1`, { hostsDir });
    expect(fresh.code, fresh.stderr).toBe(0);
    expect(agent.requests.some((r) => r.outcome.registry === NEW_REGISTRY)).toBe(true);
  });

  it('falls back to the admin host when the agent is down (file order), and a restart does not touch the backup', async () => {
    await agent?.stop();
    agent = undefined;
    const pulled = await containerd.pull(`${ADMIN_REGISTRY}/team/other:v1`, { hostsDir, namespace: 'fallback' });
    expect(pulled.code, pulled.stderr).toBe(0);
    expect(direct.count({ method: 'GET', pathIncludes: '/blobs/' })).toBeGreaterThan(0);

    agent = await startAgent({ dir, manageHosts: true, mirrors: [{ registry: ADMIN_REGISTRY, upstream: registry.url }] });
    expect(await readFile(join(hostsDir, ADMIN_REGISTRY, 'hosts.toml.registry-proxy-agent.orig'), 'utf8')).toBe(adminOriginal);
    // NEW_REGISTRY left the config: the file the agent created is gone.
    expect(await readdir(hostsDir)).not.toContain(NEW_REGISTRY);
  });

  it('cleanup restores every admin file byte for byte and removes what it created', async () => {
    await agent?.stop();
    agent = undefined;
    const config = await writeAgentConfig({ dir, manageHosts: true, mirrors: [{ registry: ADMIN_REGISTRY, upstream: registry.url }, { registry: NEW_REGISTRY, upstream: registry.url }] });
    const main = new URL('../agent/main.ts', import.meta.url).pathname;
    const result = await runCommand(process.execPath, [main, 'cleanup', '--config', config]);
    expect(result.code, result.stderr).toBe(0);
    expect(await readFile(join(hostsDir, ADMIN_REGISTRY, 'hosts.toml'), 'utf8')).toBe(adminOriginal);
    expect(await readdir(join(hostsDir, ADMIN_REGISTRY))).toEqual(['corp-ca.pem', 'hosts.toml']);
    expect(await readFile(join(hostsDir, UNRELATED, 'hosts.toml'), 'utf8')).toBe(unrelatedOriginal);
    expect((await readdir(hostsDir)).sort()).toEqual([ADMIN_REGISTRY, UNRELATED].sort());
  });
});

describe('telling the admin whether containerd listens to the hosts dir', () => {
  let dir: string;
  let agent: InProcessAgent | undefined;

  afterAll(async () => {
    await agent?.stop();
    if (dir) await removeTempDir(dir);
  });

  it('reports the verdict at start and again only when it changes, with what to set', async () => {
    dir = await makeTempDir('rpa-verdict');
    const containerdConfig = join(dir, 'containerd-config.toml');
    await writeFile(containerdConfig, 'version = 2\n');
    agent = await startAgent({ dir, manageHosts: true, containerdConfig, mirrors: [{ registry: ADMIN_REGISTRY, upstream: 'http://127.0.0.1:1' }] });
    const hostsDir = join(dir, 'certs.d');
    const unset = agent.logs.filter((l) => l['state'] === 'config_path_unset');
    expect(unset).toHaveLength(1);
    expect(String(unset[0]!['msg'])).toContain(`plugins."io.containerd.grpc.v1.cri".registry.config_path`);
    expect(String(unset[0]!['msg'])).toContain(hostsDir);
    expect(agent.runtime.wiring?.containerd.state).toBe('config_path_unset');
    await agent.runtime.rewire();
    expect(agent.logs.filter((l) => l['state'] === 'config_path_unset')).toHaveLength(1);
    await writeFile(containerdConfig, `version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "${hostsDir}"\n`);
    await agent.runtime.rewire();
    expect(agent.runtime.wiring?.containerd.state).toBe('ok');
    expect(agent.logs.filter((l) => l['state'] === 'ok')).toHaveLength(1);
    const metrics = await (await request(`${agent.runtime.healthUrl}/metrics`)).body.text();
    expect(metrics).toContain('registry_proxy_containerd_config_state{state="ok"} 1');
    expect(metrics).toContain('registry_proxy_containerd_config_state{state="config_path_unset"} 0');
    expect(metrics).toContain(`registry_proxy_hosts_toml_state{registry="${ADMIN_REGISTRY}",state="unchanged"} 1`);
  });
});
