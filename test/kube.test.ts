import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { FAST } from './fixtures/kube-timings.ts';
import { type InProcessAgent, type TestMirror, startAgent, startPortedAgentProcess } from './fixtures/agent.ts';
import { makeImage, makeRandomBlob, pushBlob, pushImage } from './fixtures/image.ts';
import { startCountingProxy } from './fixtures/counting-proxy.ts';
import { sha256 } from './fixtures/digest.ts';
import { freePort } from './fixtures/net.ts';
import {
  type Authorization,
  CORE_EVENTS,
  ENDPOINT_SLICES,
  type JsonObject,
  type KubeApi,
  type KubeApiRequest,
  LEASES,
  type PolicyRule,
  REGISTRY_MIRRORS,
  SECRETS,
  grantingRule,
  startKubeApi,
} from './fixtures/kube-api.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const NS = 'registry-proxy-agent';
const REG = 'registry.corp.example:5000';
const SECURED = 'secured.corp.example';
const LATE = 'late.corp.example';
const LATER = 'later.corp.example';
const REGISTRY_MIRRORS_PATH = '/apis/registry-proxy.dev/v1alpha1/registrymirrors';
const ALICE = { username: 'alice', password: 'wonderland' };
const MANAGER = 'registry-proxy-agent';
const LEADER_LEASE_PATH = `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases/registry-proxy-agent-leader`;


interface RoleDoc {
  kind: string;
  metadata: { name: string; namespace?: string };
  rules: PolicyRule[];
}

/** The agent's ServiceAccount permissions exactly as manifests/base/rbac.yaml grants them: the double enforces them. */
async function agentRbac(): Promise<{ authorization: Authorization; clusterRole: RoleDoc; role: RoleDoc }> {
  const docs = parseAllDocuments(await readFile(new URL('../manifests/base/rbac.yaml', import.meta.url), 'utf8')).map((d) => d.toJS() as RoleDoc);
  const clusterRole = docs.find((d) => d.kind === 'ClusterRole');
  const role = docs.find((d) => d.kind === 'Role');
  if (clusterRole === undefined || role?.metadata.namespace !== NS) throw new Error('rbac.yaml: expected a ClusterRole and a Role in the agent namespace');
  return {
    authorization: { user: `system:serviceaccount:${NS}:registry-proxy-agent`, clusterRules: clusterRole.rules, namespaceRules: { [NS]: role.rules } },
    clusterRole,
    role,
  };
}

/** `<Role|ClusterRole> <group>/<resource> <verb>`: which granted permission a request used. */
function permissionUsed(rbac: Awaited<ReturnType<typeof agentRbac>>, r: KubeApiRequest): string | undefined {
  const a = r.attributes;
  if (a === undefined) return undefined;
  const local = a.namespace === NS ? grantingRule(rbac.role.rules, a) : undefined;
  const kind = local !== undefined ? 'Role' : grantingRule(rbac.clusterRole.rules, a) !== undefined ? 'ClusterRole' : 'none';
  return `${kind} ${a.apiGroup}/${a.resource} ${a.verb}`;
}

function permissionsGranted(role: RoleDoc): string[] {
  return role.rules.flatMap((r) => (r.apiGroups ?? []).flatMap((g) => (r.resources ?? []).flatMap((res) => r.verbs.map((v) => `${role.kind} ${g}/${res} ${v}`))));
}

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
async function pull(agent: { url: string }, registry: string, repo: string, tag: string): Promise<number> {
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
  let rbac: Awaited<ReturnType<typeof agentRbac>>;
  /** Permissions used by the agents in this test, and requests the RBAC rules refused. */
  let used: Set<string>;
  let forbidden: KubeApiRequest[];
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
    rbac = await agentRbac();
    api = await startKubeApi({ authorization: rbac.authorization });
    used = new Set();
    forbidden = [];
  });

  /** Notes what the requests so far used, then empties the log. */
  function clearRequests(): void {
    for (const r of api.requests) {
      const permission = permissionUsed(rbac, r);
      if (permission !== undefined) used.add(permission);
      if (r.status === 403) forbidden.push(r);
    }
    api.clearRequests();
  }

  afterEach(async () => {
    await Promise.all(agents.map((a) => a.stop()));
    agents = [];
    clearRequests();
    // Every call the agent makes is one manifests/base/rbac.yaml allows.
    expect(forbidden).toEqual([]);
    await api.stop();
    await Promise.all(dirs.map((d) => removeTempDir(d)));
    dirs = [];
  });

  /** One node: its own dir (cache, hosts dir, state file), a containerd config that uses the hosts dir. */
  async function startNode(nodeName: string, opts: { mirrors?: TestMirror[]; dir?: string; extraToml?: string; peersListen?: string } = {}): Promise<InProcessAgent> {
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
      // Peer sharing as the manifests configure it: key material from the CA Secret, members from EndpointSlices.
      tablesToml: `[peers]\nenabled = true\nlisten = "${opts.peersListen ?? '127.0.0.1:0'}"\n`,
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

  /** Waits for `n` leader Lease writes since the log was cleared: time in which every agent evaluates and aggregates many times. */
  const leaderRenewals = (n: number): Promise<void> =>
    until(`${n} leader lease renewals`, () => api.writes().filter((w) => w.path === LEADER_LEASE_PATH).length >= n);

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

  it('the bundled agent as the image runs it (dist/agent/main.js, a child process): serves a RegistryMirror, writes its node report, leads and applies the status', async () => {
    const dir = await makeTempDir('rpa-kube-bundle');
    dirs.push(dir);
    const kubeconfig = join(dir, 'kubeconfig');
    await writeFile(kubeconfig, api.kubeconfigYaml());
    await writeFile(join(dir, 'containerd-config.toml'), containerdConfig(join(dir, 'certs.d')));
    putMirror('corp', { registry: REG, upstream: registry.url });
    const child = await startPortedAgentProcess({ dir, mirrors: [], manageHosts: true, kubernetes: { kubeconfig, nodeName: 'node-bundle', namespace: NS } });
    try {
      await until('corp served', async () => (await pull(child, REG, 'team/app', 'v1')) === 200, 20_000);
      await until('node report written', () => api.store.get(LEASES, NS, 'rpa-node-node-bundle') !== undefined, 20_000);
      await until('leading', () => (api.store.get(LEASES, NS, 'registry-proxy-agent-leader')?.['spec'] as { holderIdentity?: string } | undefined)?.holderIdentity?.startsWith('node-bundle') === true, 20_000);
      await until('status applied', () => ready(statusOf('corp'))?.status === 'True', 30_000);
      await until('Ready event', () => events().some((e) => e['reason'] === 'Ready'), 5_000);
      const watches = api.requests.filter((r) => r.watch);
      expect(watches.length).toBeGreaterThan(0);
      expect(watches.every((r) => r.query.allowWatchBookmarks === 'true')).toBe(true);
    } finally {
      await child.process.stop();
    }
    expect(await child.logs()).not.toMatch(/"level":50/);
  }, 60_000);

  it('relists after 410 Gone by itself and applies RegistryMirrors created after the watches expired', async () => {
    const agent = await startNode('node-a');
    putMirror('corp', { registry: REG, upstream: registry.url });
    await until('corp served', async () => (await pull(agent, REG, 'team/app', 'v1')) === 200);

    // etcd compaction: every watch ends with an ERROR 410 Expired, and its resourceVersion is gone.
    clearRequests();
    api.expireWatches();
    putMirror('late', { registry: LATE, upstream: registry.url });
    await until('late served', async () => (await pull(agent, LATE, 'team/app', 'v1')) === 200);
    const mirrorRequests = (): KubeApiRequest[] => api.requests.filter((r) => r.path === REGISTRY_MIRRORS_PATH);
    const relist = mirrorRequests().findIndex((r) => !r.watch);
    expect(relist).toBeGreaterThanOrEqual(0);
    // A 410 is a relist, not a failure: no informer failure logged, no backoff restart.
    expect(agent.logs.filter((l) => String(l.msg).startsWith('Kubernetes watch'))).toEqual([]);

    // Watching again from the new list: the next RegistryMirror arrives through the watch, without another list.
    await until('watching again', () => mirrorRequests().slice(relist).some((r) => r.watch && r.status === 200));
    // Every watch asks for bookmarks, so a quiet watch's resourceVersion keeps up with the API server.
    expect(api.requests.filter((r) => r.watch).every((r) => r.query.allowWatchBookmarks === 'true')).toBe(true);
    clearRequests();
    putMirror('later', { registry: LATER, upstream: registry.url });
    await until('later served', async () => (await pull(agent, LATER, 'team/app', 'v1')) === 200);
    expect(mirrorRequests()).toEqual([]);
    expect(await pull(agent, REG, 'team/app', 'v1')).toBe(200);
  });

  it('peer sharing as the manifests set it up: one CA Secret made by the first agent, members from EndpointSlices, a blob fetched once for both nodes', async () => {
    const tunnel = await startCountingProxy(registry.url);
    try {
      const port = await freePort();
      const mirrors = [{ registry: REG, upstream: tunnel.url }];
      const a = await startNode('node-a', { mirrors, peersListen: `127.0.0.71:${port}` });
      const b = await startNode('node-b', { mirrors, peersListen: `127.0.0.72:${port}` });
      const cas = api.store.list(SECRETS, NS).filter((secret) => (secret['metadata'] as JsonObject)['name'] === 'registry-proxy-agent-peer-ca');
      expect(cas).toHaveLength(1);
      // What the EndpointSlice controller writes for the headless Service once both agents are ready.
      api.store.put(ENDPOINT_SLICES, {
        metadata: { name: 'registry-proxy-agent-peers-x1', namespace: NS, labels: { 'kubernetes.io/service-name': 'registry-proxy-agent-peers' } },
        addressType: 'IPv4',
        endpoints: [
          { addresses: ['127.0.0.71'], nodeName: 'node-a', conditions: { ready: true } },
          { addresses: ['127.0.0.72'], nodeName: 'node-b', conditions: { ready: true } },
        ],
        ports: [{ name: 'peer', port, protocol: 'TCP' }],
      });
      await until('both agents see both members', () => a.runtime.peers!.network.size === 2 && b.runtime.peers!.network.size === 2);
      await Promise.all([a, b].map((agent) => agent.runtime.peers!.listening()));
      const blob = makeRandomBlob(3 * 1024 * 1024);
      await pushBlob(registry.url, 'team/app', blob);
      const answers = await Promise.all([a, b].map((agent) => request(`${agent.url}/v2/team/app/blobs/${blob.digest}?ns=${REG}`)));
      for (const answer of answers) {
        expect(answer.statusCode).toBe(200);
        expect(sha256(Buffer.from(await answer.body.arrayBuffer()))).toBe(blob.digest);
      }
      expect(tunnel.count({ method: 'GET', pathIncludes: blob.digest })).toBe(1);
    } finally {
      await tunnel.stop();
    }
  });

  it("folds two nodes' reports into the status; the leader alone announces each Ready change once; quiet at steady state; RBAC all used", async () => {
    const a = await startNode('node-a');
    const b = await startNode('node-b');
    putMirror('corp', { registry: REG, upstream: registry.url });
    await until('both ready', () => statusOf('corp').nodes?.ready === 2);
    expect(statusOf('corp')).toMatchObject({ observedGeneration: 1, nodes: { ready: 2, failing: 0, failingNodes: [] } });
    expect(ready(statusOf('corp'))).toMatchObject({ status: 'True', reason: 'AllNodesReady' });
    const leaders = [a, b].filter((n) => n.kubernetes?.leading);
    expect(leaders).toHaveLength(1);
    const leaderName = leaders[0] === a ? 'node-a' : 'node-b';
    const report = api.store.get(LEASES, NS, 'rpa-node-node-b');
    expect(report?.spec).toMatchObject({ holderIdentity: 'node-b' });
    expect(JSON.parse(String(((report?.metadata as JsonObject).annotations as JsonObject)['registry-proxy.dev/report']))).toEqual({
      corp: { ok: true, reason: 'Ready', message: '', generation: 1 },
    });
    await until('Ready event', () => events().length === 1);
    expect(events()[0]).toMatchObject({
      reason: 'Ready',
      type: 'Normal',
      involvedObject: { kind: 'RegistryMirror', name: 'corp' },
      reportingInstance: leaderName,
      message: expect.stringMatching(/^Ready (Unknown|False) → True, AllNodesReady: /),
    });

    // node-b's containerd stops reading the hosts dir.
    const bDir = dirOf.get(b) ?? '';
    await writeFile(join(bDir, 'containerd-config.toml'), containerdConfig(undefined));
    await b.runtime.rewire();
    await until('node-b failing', () => statusOf('corp').nodes?.failing === 1);
    expect(statusOf('corp').nodes).toEqual({ ready: 1, failing: 1, failingNodes: [{ node: 'node-b', reason: 'ConfigPathUnset', message: expect.any(String) }] });
    expect(ready(statusOf('corp'))).toMatchObject({ status: 'False', reason: 'ConfigPathUnset' });
    expect(ready(statusOf('corp'))?.message).toMatch(/^1 of 2 nodes failing; node-b: ConfigPathUnset: /);
    await until('NotReady event', () => events().length === 2);
    expect(events()[1]).toMatchObject({
      reason: 'NotReady',
      type: 'Warning',
      involvedObject: { kind: 'RegistryMirror', name: 'corp' },
      reportingInstance: leaderName,
      message: expect.stringMatching(/^Ready True → False, ConfigPathUnset: 1 of 2 nodes failing; node-b: ConfigPathUnset: /),
    });

    // A report nobody renewed for over 30 minutes is from a node that is gone: ignored.
    const hourAgo = new Date(Date.now() - 3_600_000).toISOString().replace('Z', '000Z');
    api.store.put(LEASES, {
      metadata: { name: 'rpa-node-gone', namespace: NS, labels: { 'registry-proxy.dev/node-report': 'true' }, annotations: { 'registry-proxy.dev/report': '{"corp":{"ok":false,"reason":"Gone","message":"x","generation":1}}' } },
      spec: { holderIdentity: 'gone', renewTime: hourAgo },
    });

    // Steady state: over four leader renewals (some 20 report evaluations per node and 10 aggregations),
    // nothing but the leader's lease renewals is written.
    clearRequests();
    await leaderRenewals(4);
    const writes = api.writes();
    expect(writes.filter((w) => w.path !== LEADER_LEASE_PATH)).toEqual([]);
    expect(writes.every((w) => w.fieldManager === MANAGER)).toBe(true);
    expect(statusOf('corp').nodes?.failing).toBe(1);

    // node-b recovers: one status write, one Ready event from the leader.
    await writeFile(join(bDir, 'containerd-config.toml'), containerdConfig(join(bDir, 'certs.d')));
    await b.runtime.rewire();
    await until('recovered', () => statusOf('corp').nodes?.ready === 2);
    await until('Ready event again', () => events().length === 3);
    expect(events().map((e) => [e.reason, e.reportingInstance])).toEqual([
      ['Ready', leaderName],
      ['NotReady', leaderName],
      ['Ready', leaderName],
    ]);
    const statusWrites = api.writes(MANAGER).filter((w) => w.path.endsWith('/registrymirrors/corp/status'));
    expect(statusWrites).toHaveLength(1);

    // The leader stops: the other agent takes over and finds nothing to write or announce. Restarted
    // with its state unchanged, the old leader writes no report.
    const leader = leaders[0] === a ? a : b;
    const other = leader === a ? b : a;
    await stopNode(leader);
    await until('failover', () => other.kubernetes?.leading === true, 10_000);
    clearRequests();
    const restarted = await startNode(leaderName, { dir: dirOf.get(leader) ?? '' });
    expect(restarted.kubernetes?.source.synced).toBe(true);
    await leaderRenewals(3);
    expect(api.writes().filter((w) => w.path !== LEADER_LEASE_PATH)).toEqual([]);
    expect(events()).toHaveLength(3);
    expect(statusOf('corp').nodes).toMatchObject({ ready: 2, failing: 0 });

    // Every verb manifests/base/rbac.yaml grants was needed on the way (and afterEach: none was missing).
    clearRequests();
    expect([...used].sort()).toEqual([...permissionsGranted(rbac.clusterRole), ...permissionsGranted(rbac.role)].sort());
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
