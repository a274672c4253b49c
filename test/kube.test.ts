import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { KubernetesOptions } from '../agent/kube/kubernetes.ts';
import { type InProcessAgent, type TestMirror, startAgent } from './fixtures/agent.ts';
import { makeImage, pushImage } from './fixtures/image.ts';
import { CORE_EVENTS, type JsonObject, type KubeApi, LEASES, REGISTRY_MIRRORS, SECRETS, startKubeApi } from './fixtures/kube-api.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const NS = 'registry-proxy-agent';
const REG = 'registry.corp.example:5000';
const SECURED = 'secured.corp.example';
const ALICE = { username: 'alice', password: 'wonderland' };
const MANAGER = 'registry-proxy-agent';
const LEADER_LEASE_PATH = `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases/registry-proxy-agent-leader`;

/** Short timings: aggregation every 200 ms, leader lease 1.5 s, local re-evaluation every 100 ms. */
const FAST: KubernetesOptions = {
  debounceMs: 50,
  initialSyncTimeoutMs: 1_000,
  backoff: { initialMs: 100, maxMs: 500 },
  reportIntervalMs: 100,
  leaseDurationMs: 1_500,
  aggregateIntervalMs: 200,
};

interface Condition {
  type: string;
  status: string;
  reason: string;
  message: string;
  observedGeneration?: number;
}

interface Status {
  observedGeneration?: number;
  conditions?: Condition[];
  nodes?: { ready: number; failing: number; failingNodes?: Array<{ node: string; reason: string; message?: string }> };
}

const until = (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000): Promise<void> =>
  pollUntil(check, { what, timeoutMs, intervalMs: 25 });

/** The status code of a manifest GET through the agent for `registry` (as containerd sends it, with ?ns=). */
async function pull(agent: InProcessAgent, registry: string, repo: string, tag: string): Promise<number> {
  const res = await request(`${agent.url}/v2/${repo}/manifests/${tag}?ns=${registry}`, {
    headers: { accept: 'application/vnd.oci.image.manifest.v1+json' },
  });
  await res.body.dump();
  return res.statusCode;
}

function containerdConfig(hostsDir: string | undefined): string {
  const registry = hostsDir === undefined ? '' : `[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "${hostsDir}"\n`;
  return `version = 2\n${registry}`;
}

describe('RegistryMirrors from the Kubernetes API', () => {
  let registry: RegistryHandle;
  let secured: RegistryHandle;
  let api: KubeApi;
  let dirs: string[] = [];
  let agents: InProcessAgent[] = [];
  const dirOf = new Map<InProcessAgent, string>();

  beforeAll(async () => {
    [registry, secured] = await Promise.all([startRegistry(), startRegistry({ auth: ALICE })]);
    const [v1, v2] = await Promise.all([makeImage({ layers: 1, layerBytes: 512 }), makeImage({ layers: 1, layerBytes: 512 })]);
    await Promise.all([
      pushImage(registry.url, 'team/app', 'v1', v1),
      pushImage(registry.url, 'prefixed/team/app', 'v2', v2),
      pushImage(secured.url, 'team/app', 'v1', v1, ALICE),
    ]);
  });

  afterAll(async () => {
    await Promise.all([registry?.stop(), secured?.stop()]);
  });

  beforeEach(async () => {
    api = await startKubeApi();
  });

  afterEach(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    agents = [];
    await api.stop();
    await Promise.all(dirs.map((d) => removeTempDir(d)));
    dirs = [];
  });

  /** One node: its own dir (cache, hosts dir, state file), a containerd config that uses the hosts dir. */
  async function startNode(nodeName: string, opts: { mirrors?: TestMirror[]; dir?: string; extraToml?: string } = {}): Promise<InProcessAgent> {
    let dir = opts.dir;
    if (dir === undefined) {
      dir = await makeTempDir(`rpa-kube-${nodeName}`);
      dirs.push(dir);
    }
    await writeFile(join(dir, 'containerd-config.toml'), containerdConfig(join(dir, 'certs.d')));
    const kubeconfig = join(dir, 'kubeconfig');
    await writeFile(kubeconfig, api.kubeconfigYaml());
    const agent = await startAgent({
      dir,
      mirrors: opts.mirrors ?? [],
      manageHosts: true,
      kubernetes: { kubeconfig, nodeName, namespace: NS },
      kubernetesOptions: FAST,
      ...(opts.extraToml ? { extraToml: opts.extraToml } : {}),
    });
    agents.push(agent);
    dirOf.set(agent, dir);
    return agent;
  }

  async function stopNode(agent: InProcessAgent): Promise<void> {
    agents = agents.filter((a) => a !== agent);
    await agent.stop();
  }

  function putMirror(name: string, spec: Record<string, unknown>): void {
    api.store.put(REGISTRY_MIRRORS, { apiVersion: 'registry-proxy.dev/v1alpha1', kind: 'RegistryMirror', metadata: { name }, spec });
  }

  function putBasicAuthSecret(name: string, username: string, password: string): void {
    api.store.put(SECRETS, { metadata: { name, namespace: NS }, type: 'kubernetes.io/basic-auth', stringData: { username, password } });
  }

  function statusOf(name: string): Status {
    return (api.store.get(REGISTRY_MIRRORS, undefined, name)?.status ?? {}) as Status;
  }

  function ready(status: Status): Condition | undefined {
    return status.conditions?.find((c) => c.type === 'Ready');
  }

  function events(): JsonObject[] {
    return api.store.list(CORE_EVENTS, 'default');
  }

  it('applies a created RegistryMirror without a restart, follows updates, and restores hosts.toml on delete', async () => {
    const dir = await makeTempDir('rpa-kube-a');
    dirs.push(dir);
    const adminFile = join(dir, 'certs.d', REG, 'hosts.toml');
    const adminText = `# the admin's own file\nserver = "https://${REG}"\n`;
    await mkdir(join(dir, 'certs.d', REG), { recursive: true });
    await writeFile(adminFile, adminText);
    const agent = await startNode('node-a', { dir });
    const runtime = agent.runtime;
    expect(await pull(agent, REG, 'team/app', 'v1')).toBe(404);

    putMirror('corp', { registry: REG, upstream: registry.url });
    await until('served', async () => (await pull(agent, REG, 'team/app', 'v1')) === 200);
    await until('hosts.toml written', async () => (await readFile(adminFile, 'utf8')).includes('Managed by registry-proxy-agent'));
    const managed = await readFile(adminFile, 'utf8');
    expect(managed).toContain('Managed by registry-proxy-agent');
    expect(managed).toContain(`[host."${agent.url}"]`);
    expect(managed).toContain(`server = "https://${REG}"`);

    // repositoryPrefix: "team/app" is now fetched as "prefixed/team/app" upstream.
    putMirror('corp', { registry: REG, upstream: registry.url, repositoryPrefix: 'prefixed' });
    await until('prefix applied', async () => (await pull(agent, REG, 'team/app', 'v2')) === 200);
    expect(await pull(agent, REG, 'team/app', 'v1')).toBe(404);
    expect(agent.runtime).toBe(runtime);

    api.store.delete(REGISTRY_MIRRORS, undefined, 'corp');
    await until('removed', async () => (await pull(agent, REG, 'team/app', 'v2')) === 404);
    expect(agent.runtime.mirrors.list()).toEqual([]);
    await until('admin file restored', async () => (await readFile(adminFile, 'utf8')) === adminText);
  });

  it('takes upstream credentials from a basic-auth Secret and applies a rotated Secret live', async () => {
    const agent = await startNode('node-a');
    putBasicAuthSecret('secured-creds', ALICE.username, 'not-the-password');
    putMirror('secured', { registry: SECURED, upstream: secured.url, credentialsSecretRef: { name: 'secured-creds' } });
    await until('mirror applied', () => agent.runtime.mirrors.list().some((m) => m.registry === SECURED));
    expect(agent.runtime.mirrors.list()[0]?.config.auth).toBe('agent');
    expect(await pull(agent, SECURED, 'team/app', 'v1')).not.toBe(200);

    putBasicAuthSecret('secured-creds', ALICE.username, ALICE.password);
    await until('rotated credentials used', async () => (await pull(agent, SECURED, 'team/app', 'v1')) === 200);

    // The last good configuration, credentials included, is on disk for root only.
    const stateFile = join(String(agent.runtime.config.cacheDir), 'kubernetes-mirrors.json');
    await until('state persisted', async () => (await readFile(stateFile, 'utf8').catch(() => '')).includes(ALICE.password));
    expect((await stat(stateFile)).mode & 0o777).toBe(0o600);
    expect(JSON.stringify(agent.logs)).not.toContain(ALICE.password);

    // A missing Secret is a problem of that RegistryMirror only.
    putMirror('missing', { registry: 'missing.corp.example', upstream: secured.url, credentialsSecretRef: { name: 'nope' } });
    await until('missing secret reported', () => ready(statusOf('missing'))?.reason === 'SecretNotFound');
    expect(agent.runtime.mirrors.list().map((m) => m.registry)).toEqual([SECURED]);
  });

  it('refuses a spec the CRD admits but the agent does not: Ready=False with the reason, not applied, previous good version kept', async () => {
    const agent = await startNode('node-a');
    // No [connectivity_proxy] in this agent's configuration.
    putMirror('cp', { registry: 'cp.corp.example', upstream: 'http://registry.virtual:5000', route: 'connectivity-proxy' });
    await until('InvalidSpec status', () => ready(statusOf('cp'))?.reason === 'InvalidSpec');
    const status = statusOf('cp');
    expect(ready(status)).toMatchObject({ status: 'False', observedGeneration: 1 });
    expect(ready(status)?.message).toContain('spec.route: route = "connectivity-proxy" needs a [connectivity_proxy] table with url');
    expect(status.nodes).toEqual({ ready: 0, failing: 1, failingNodes: [{ node: 'node-a', reason: 'InvalidSpec', message: expect.stringContaining('spec.route') }] });
    expect(await pull(agent, 'cp.corp.example', 'team/app', 'v1')).toBe(404);
    await expect(stat(join(String(agent.runtime.config.hostsDir), 'cp.corp.example'))).rejects.toThrow();

    putMirror('corp', { registry: REG, upstream: registry.url });
    await until('corp ready', () => ready(statusOf('corp'))?.status === 'True');
    putMirror('corp', { registry: REG, upstream: registry.url, tagTTL: 'soon' });
    await until('corp InvalidSpec', () => ready(statusOf('corp'))?.reason === 'InvalidSpec');
    expect(ready(statusOf('corp'))?.message).toContain('spec.tagTTL:');
    expect(statusOf('corp').observedGeneration).toBe(2);
    expect(await pull(agent, REG, 'team/app', 'v1')).toBe(200);
    expect(agent.logs.some((l) => l.msg === 'RegistryMirror not applied' && l.registryMirror === 'corp' && l.serving === 'previous good version')).toBe(true);
  });

  it("refuses a RegistryMirror for the registry of the agent's own image (bootstrap deadlock) unless confirmed", async () => {
    const agent = await startNode('node-a', { extraToml: `own_image = "${REG}/platform/registry-proxy-agent:1.0"` });
    putMirror('own', { registry: REG, upstream: registry.url });
    await until('OwnImageRegistry status', () => ready(statusOf('own'))?.reason === 'OwnImageRegistry');
    expect(statusOf('own').nodes?.failingNodes?.[0]?.message).toContain("the agent's own image");
    expect(await pull(agent, REG, 'team/app', 'v1')).toBe(404);
    expect(agent.runtime.mirrors.list()).toHaveLength(0);
  });

  it('reports a registry configured in the TOML file and by a RegistryMirror as a conflict; the file wins', async () => {
    const agent = await startNode('node-a', { mirrors: [{ registry: REG, upstream: registry.url }] });
    putMirror('dup', { registry: REG, upstream: registry.url, repositoryPrefix: 'prefixed' });
    await until('Conflict status', () => ready(statusOf('dup'))?.reason === 'Conflict');
    expect(statusOf('dup').nodes).toMatchObject({ ready: 0, failing: 1, failingNodes: [{ node: 'node-a', reason: 'Conflict' }] });
    expect(ready(statusOf('dup'))?.message).toContain(`registry ${REG} is also configured in`);
    const logged = agent.logs.filter((l) => l.reason === 'Conflict' && l.registryMirror === 'dup');
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ level: 'warn', msg: 'RegistryMirror conflicts: not applied' });
    // The file's mirror (no prefix) is what serves.
    expect(await pull(agent, REG, 'team/app', 'v1')).toBe(200);
    expect(await pull(agent, REG, 'team/app', 'v2')).toBe(404);
    expect(agent.runtime.mirrors.list()).toHaveLength(1);
  });

  it('keeps serving while the API server is down, and a restart with the API down serves the persisted configuration', async () => {
    const dir = await makeTempDir('rpa-kube-down');
    dirs.push(dir);
    const first = await startNode('node-a', { dir });
    putMirror('corp', { registry: REG, upstream: registry.url });
    await until('served', async () => (await pull(first, REG, 'team/app', 'v1')) === 200);
    await until('persisted', async () => (await readFile(join(dir, 'cache', 'kubernetes-mirrors.json'), 'utf8').catch(() => '')).includes(REG));

    await api.setDown(true);
    await until('watch failure noticed', () => first.logs.some((l) => l.msg === 'Kubernetes watch failed: keeping the last known objects and retrying'));
    expect(await pull(first, REG, 'team/app', 'v1')).toBe(200);
    await stopNode(first);

    const started = Date.now();
    const second = await startNode('node-a', { dir });
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(second.logs.some((l) => l.msg === 'Kubernetes API unreachable: serving the last good RegistryMirror configuration and retrying')).toBe(true);
    expect(await pull(second, REG, 'team/app', 'v1')).toBe(200);
    expect(await readFile(join(dir, 'certs.d', REG, 'hosts.toml'), 'utf8')).toContain(second.url);

    // Deleted while the agent could not see it: applied once the API answers again.
    api.store.delete(REGISTRY_MIRRORS, undefined, 'corp');
    await api.setDown(false);
    await until('resynced', async () => (await pull(second, REG, 'team/app', 'v1')) === 404);
    await until('hosts.toml removed', async () => (await stat(join(dir, 'certs.d', REG)).catch(() => undefined)) === undefined);
  });

  it('folds two nodes\' reports into the status, names the failing node, announces changes only, and is quiet at steady state', async () => {
    const a = await startNode('node-a');
    const b = await startNode('node-b');
    putMirror('corp', { registry: REG, upstream: registry.url });
    await until('both ready', () => statusOf('corp').nodes?.ready === 2);
    expect(statusOf('corp')).toMatchObject({ observedGeneration: 1, nodes: { ready: 2, failing: 0, failingNodes: [] } });
    expect(ready(statusOf('corp'))).toMatchObject({ status: 'True', reason: 'AllNodesReady' });
    expect([a, b].filter((n) => n.kubernetes?.leading)).toHaveLength(1);
    const report = api.store.get(LEASES, NS, 'rpa-node-node-b');
    expect(report?.spec).toMatchObject({ holderIdentity: 'node-b' });
    expect(JSON.parse(String((report?.metadata as JsonObject).annotations && ((report?.metadata as JsonObject).annotations as JsonObject)['registry-proxy.dev/report']))).toEqual({
      corp: { ok: true, reason: 'Ready', message: expect.any(String), generation: 1 },
    });

    // node-b's containerd stops reading the hosts dir.
    const bDir = dirOf.get(b) ?? '';
    await writeFile(join(bDir, 'containerd-config.toml'), containerdConfig(undefined));
    await b.runtime.rewire();
    await until('node-b failing', () => statusOf('corp').nodes?.failing === 1);
    expect(statusOf('corp').nodes).toEqual({ ready: 1, failing: 1, failingNodes: [{ node: 'node-b', reason: 'ConfigPathUnset', message: expect.any(String) }] });
    expect(ready(statusOf('corp'))).toMatchObject({ status: 'False', reason: 'ConfigPathUnset' });
    expect(ready(statusOf('corp'))?.message).toMatch(/^1 of 2 nodes failing; node-b: ConfigPathUnset: /);
    await until('NodeFailing event', () => events().length === 1);
    expect(events()[0]).toMatchObject({
      reason: 'NodeFailing',
      type: 'Warning',
      involvedObject: { kind: 'RegistryMirror', name: 'corp' },
      message: expect.stringMatching(/^node node-b: ConfigPathUnset: /),
    });

    // A report nobody renewed for over 30 minutes is from a node that is gone: ignored.
    const hourAgo = new Date(Date.now() - 3_600_000).toISOString().replace('Z', '000Z');
    api.store.put(LEASES, {
      metadata: { name: 'rpa-node-gone', namespace: NS, labels: { 'registry-proxy.dev/node-report': 'true' }, annotations: { 'registry-proxy.dev/report': '{"corp":{"ok":false,"reason":"Gone","message":"x","generation":1}}' } },
      spec: { holderIdentity: 'gone', renewTime: hourAgo },
    });

    // Steady state: nothing but the leader's lease renewals is written.
    api.clearRequests();
    await delay(10_000);
    const writes = api.writes();
    expect(writes.filter((w) => w.path !== LEADER_LEASE_PATH)).toEqual([]);
    expect(writes.length).toBeGreaterThan(0);
    expect(writes.every((w) => w.fieldManager === MANAGER)).toBe(true);
    expect(statusOf('corp').nodes?.failing).toBe(1);

    // node-b recovers: one NodeReady event, status back to 2 ready; node-a never announced anything.
    await writeFile(join(bDir, 'containerd-config.toml'), containerdConfig(join(bDir, 'certs.d')));
    await b.runtime.rewire();
    await until('recovered', () => statusOf('corp').nodes?.ready === 2);
    await until('NodeReady event', () => events().length === 2);
    expect(events().map((e) => [e.reason, e.message])).toEqual([
      ['NodeFailing', expect.stringContaining('node-b')],
      ['NodeReady', expect.stringContaining('node-b')],
    ]);
    const statusWrites = api.writes(MANAGER).filter((w) => w.path.endsWith('/registrymirrors/corp/status'));
    expect(statusWrites).toHaveLength(1);

    // The leader stops: the other agent takes over. Restarted with its state unchanged, it writes no report and announces nothing.
    const leader = a.kubernetes?.leading ? a : b;
    const other = leader === a ? b : a;
    const leaderNode = leader === a ? 'node-a' : 'node-b';
    await stopNode(leader);
    await until('failover', () => other.kubernetes?.leading === true, 10_000);
    api.clearRequests();
    const restarted = await startNode(leaderNode, { dir: dirOf.get(leader) ?? '' });
    expect(restarted.kubernetes?.source.synced).toBe(true);
    await delay(1_000);
    expect(api.writes().filter((w) => w.path.includes('/leases/rpa-node-'))).toEqual([]);
    expect(events()).toHaveLength(2);
    expect(statusOf('corp').nodes).toMatchObject({ ready: 2, failing: 0 });
  });
});

describe('kubernetes state file', () => {
  it('is not written before the API has been listed', async () => {
    const dir = await makeTempDir('rpa-kube-nofile');
    try {
      const api = await startKubeApi();
      await api.setDown(true);
      await writeFile(join(dir, 'kubeconfig'), api.kubeconfigYaml());
      const agent = await startAgent({ dir, mirrors: [], kubernetes: { kubeconfig: join(dir, 'kubeconfig'), nodeName: 'n' }, kubernetesOptions: { ...FAST, initialSyncTimeoutMs: 200 } });
      await agent.stop();
      await api.stop();
      await expect(stat(join(dir, 'cache', 'kubernetes-mirrors.json'))).rejects.toThrow();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
