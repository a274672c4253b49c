// RegistryMirror spec.preload and .status.preload (issue 16) against the Kubernetes API double, with
// the real @kubernetes/client-node and the agent's RBAC from manifests/base/rbac.yaml: node reports
// carry each node's preload entries, the leader folds them into one status entry per spec image.
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { StatusAggregator } from '../agent/kube/aggregator.ts';
import { KubeClient } from '../agent/kube/client.ts';
import { FAST } from './fixtures/kube-timings.ts';
import type { MirrorState } from '../agent/kube/mirror-source.ts';
import { NodeReporter } from '../agent/kube/node-report.ts';
import { REPORT_ANNOTATION, REPORT_BUDGET_BYTES, parseReport, reportLeaseName } from '../agent/kube/report.ts';
import type { PreloadStatus, RegistryMirror, RegistryMirrorStatus } from '../agent/kube/resources.ts';
import type { PreloadImageState } from '../agent/preload/state.ts';
import { type InProcessAgent, startAgent } from './fixtures/agent.ts';
import { makeImage, pushImage } from './fixtures/image.ts';
import { type Authorization, type JsonObject, type KubeApi, type KubeApiRequest, LEASES, type ListMapOption, type PolicyRule, REGISTRY_MIRRORS, startKubeApi } from './fixtures/kube-api.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const NS = 'registry-proxy-agent';
const REG = 'registry.corp.example:5000';
const MANAGER = 'registry-proxy-agent';
const STATUS_PATH = (name: string): string => `/apis/registry-proxy.dev/v1alpha1/registrymirrors/${name}/status`;

const until = (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> => pollUntil(check, { what, timeoutMs, intervalMs: 25 });

interface RoleDoc {
  kind: string;
  metadata: { name: string; namespace?: string };
  rules: PolicyRule[];
}

/** The agent's ServiceAccount permissions exactly as manifests/base/rbac.yaml grants them. */
async function agentAuthorization(): Promise<Authorization> {
  const docs = parseAllDocuments(await readFile(new URL('../manifests/base/rbac.yaml', import.meta.url), 'utf8')).map((d) => d.toJS() as RoleDoc);
  const clusterRole = docs.find((d) => d.kind === 'ClusterRole');
  const role = docs.find((d) => d.kind === 'Role');
  if (clusterRole === undefined || role === undefined) throw new Error('rbac.yaml: expected a ClusterRole and a Role');
  return { user: `system:serviceaccount:${NS}:registry-proxy-agent`, clusterRules: clusterRole.rules, namespaceRules: { [NS]: role.rules } };
}

/** Every `x-kubernetes-list-type: map` of the CRD's schema, so the double's server-side apply merges as the API server would. */
async function crdListMaps(): Promise<ListMapOption[]> {
  const crd = parseAllDocuments(await readFile(new URL('../manifests/base/crd-registrymirrors.yaml', import.meta.url), 'utf8'))[0]?.toJS() as {
    spec: { versions: Array<{ schema: { openAPIV3Schema: JsonObject } }> };
  };
  const out: ListMapOption[] = [];
  const walk = (schema: JsonObject, path: string[]): void => {
    if (schema['x-kubernetes-list-type'] === 'map') out.push({ gvr: REGISTRY_MIRRORS, path: path.join('.'), keys: schema['x-kubernetes-list-map-keys'] as string[] });
    const properties = (schema['properties'] ?? {}) as Record<string, JsonObject>;
    for (const [name, child] of Object.entries(properties)) walk(child, [...path, name]);
    if (schema['items'] !== undefined) walk(schema['items'] as JsonObject, path);
  };
  walk(crd.spec.versions[0]?.schema.openAPIV3Schema ?? {}, []);
  return out;
}

describe('RegistryMirror preload: spec to every node, node reports to the status', () => {
  let api: KubeApi;
  let registry: RegistryHandle;
  let forbidden: KubeApiRequest[];
  const cleanups: Array<() => Promise<void>> = [];

  beforeAll(async () => {
    registry = await startRegistry();
    await pushImage(registry.url, 'team/app', 'v1', await makeImage({ layers: 2, layerBytes: 4_096 }));
  });

  afterAll(async () => {
    await registry?.stop();
  });

  beforeEach(async () => {
    const listMaps = await crdListMaps();
    expect(listMaps.map((m) => m.path).sort()).toEqual(['spec.preload', 'status.conditions', 'status.nodes.failingNodes', 'status.preload']);
    api = await startKubeApi({ authorization: await agentAuthorization(), listMaps });
    forbidden = [];
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    forbidden.push(...api.requests.filter((r) => r.status === 403));
    // Every call is one manifests/base/rbac.yaml allows.
    expect(forbidden).toEqual([]);
    await api.stop();
  });

  function putMirror(name: string, spec: Record<string, unknown>): void {
    // A spec update (kubectl apply) leaves the status as it is.
    const status = api.store.get(REGISTRY_MIRRORS, undefined, name)?.['status'];
    api.store.put(REGISTRY_MIRRORS, { apiVersion: 'registry-proxy.dev/v1alpha1', kind: 'RegistryMirror', metadata: { name }, spec, ...(status === undefined ? {} : { status }) });
  }

  function statusOf(name: string): RegistryMirrorStatus {
    return (api.store.get(REGISTRY_MIRRORS, undefined, name)?.status ?? {}) as RegistryMirrorStatus;
  }

  const preloadOf = (name: string, image: string): PreloadStatus | undefined => statusOf(name).preload?.find((p) => p.image === image);
  const counts = (name: string, image: string): string => {
    const p = preloadOf(name, image);
    return p === undefined ? '-' : `${p.nodesReady}/${p.nodesTotal}`;
  };

  function client(): KubeClient {
    return new KubeClient(api.kubeConfig());
  }

  /**
   * A node as the leader sees it: a NodeReporter (the agent's own) whose view of the runtime is
   * scripted: it serves `registry` for RegistryMirror `name` and has the preload entries `set` gives it.
   */
  async function simulatedNode(node: string, name: string, registry: string): Promise<{ set(states: PreloadImageState[]): Promise<void>; reporter: NodeReporter }> {
    let states: PreloadImageState[] = [];
    const mirrorStates = (): MirrorState[] => {
      const rm = api.store.get(REGISTRY_MIRRORS, undefined, name);
      return rm === undefined ? [] : [{ name, generation: Number((rm['metadata'] as JsonObject)['generation'] ?? 1), registry }];
    };
    const reporter = new NodeReporter({
      client: client(),
      namespace: NS,
      nodeName: node,
      source: { synced: true, states: mirrorStates },
      runtime: {
        wiring: { hosts: [], containerd: { state: 'ok', ok: true, message: 'ok', configFiles: [], warnings: [] } },
        config: { manageHosts: false },
        upstreamProblem: () => undefined,
        preloadStates: (r) => (r === registry ? states : []),
      },
      log: pino({ level: 'silent' }),
      options: { intervalMs: 50, settleMs: 100, jitterMs: 100 },
    });
    cleanups.push(() => reporter.stop());
    await reporter.start();
    return {
      reporter,
      async set(next) {
        states = next;
        await reporter.evaluate();
      },
    };
  }

  /** The leader's aggregation alone (no election needed with one), reading the RegistryMirrors from the API. */
  async function leader(): Promise<StatusAggregator> {
    const aggregator = new StatusAggregator({
      client: client(),
      namespace: NS,
      nodeName: 'node-leader',
      log: pino({ level: 'silent' }),
      registryMirrors: () => api.store.list(REGISTRY_MIRRORS) as RegistryMirror[],
      options: { intervalMs: 100 },
    });
    cleanups.push(() => aggregator.stop());
    aggregator.start();
    expect(await aggregator.whenSynced(10_000)).toBe(true);
    return aggregator;
  }

  const entry = (image: string, phase: PreloadImageState['phase'], extra: Partial<PreloadImageState> = {}): PreloadImageState => ({
    image,
    phase,
    bytes: phase === 'ready' ? 8_192 : 0,
    pinned: phase === 'ready',
    since: Date.now(),
    ...extra,
  });
  const DIGEST = `sha256:${'3f2a9c1e0b7d'.padEnd(64, '0')}`;

  it('status counts follow the node reports: 0/3 → 1/3 → 3/3, lastError names a failing node; written only on change', async () => {
    const images = ['team/app:v1', 'team/db:v2'];
    putMirror('apps', { registry: REG, upstream: 'http://registry.virtual:5000', preload: images.map((image) => ({ image })) });
    const nodes = await Promise.all(['node-a', 'node-b', 'node-c'].map((n) => simulatedNode(n, 'apps', REG)));
    const pending = images.map((i) => entry(i, 'pending'));
    await Promise.all(nodes.map((n) => n.set(pending)));
    await leader();

    await until('0/3', () => counts('apps', 'team/app:v1') === '0/3' && counts('apps', 'team/db:v2') === '0/3');
    expect(statusOf('apps').preloadSummary).toBe('0/2 images on all 3 nodes');
    expect(statusOf('apps').nodes).toMatchObject({ ready: 3, failing: 0 });

    const [a, b, c] = nodes as [(typeof nodes)[0], (typeof nodes)[0], (typeof nodes)[0]];
    await a.set([entry('team/app:v1', 'ready', { digest: DIGEST }), entry('team/db:v2', 'pending')]);
    await until('1/3', () => counts('apps', 'team/app:v1') === '1/3');
    expect(preloadOf('apps', 'team/app:v1')).toEqual({ image: 'team/app:v1', nodesReady: 1, nodesFailed: 0, nodesTotal: 3, digest: 'sha256:3f2a9c1e0b7d' });

    // node-b has it too; node-c cannot get it: the status names node-c and why.
    await b.set([entry('team/app:v1', 'ready', { digest: DIGEST }), entry('team/db:v2', 'ready', { digest: DIGEST })]);
    await c.set([entry('team/app:v1', 'failed', { error: 'upstream unreachable: ECONNREFUSED 10.0.0.7:5000' }), entry('team/db:v2', 'pending')]);
    await until('2/3 with node-c failing', () => preloadOf('apps', 'team/app:v1')?.lastError !== undefined && counts('apps', 'team/app:v1') === '2/3');
    expect(preloadOf('apps', 'team/app:v1')).toMatchObject({ nodesReady: 2, nodesFailed: 1, nodesTotal: 3, lastError: 'node-c: upstream unreachable: ECONNREFUSED 10.0.0.7:5000' });
    expect(statusOf('apps').preloadSummary).toBe('0/2 images on all 3 nodes, 1 failing');

    // Quiet: nothing changes, nothing is written.
    await until('settled', () => counts('apps', 'team/db:v2') === '1/3');
    api.clearRequests();
    await new Promise((resolve) => setTimeout(resolve, 800));
    expect(api.writes().filter((w) => w.path === STATUS_PATH('apps'))).toEqual([]);

    await c.set([entry('team/app:v1', 'ready', { digest: DIGEST }), entry('team/db:v2', 'ready', { digest: DIGEST })]);
    await a.set([entry('team/app:v1', 'ready', { digest: DIGEST }), entry('team/db:v2', 'ready', { digest: DIGEST })]);
    await until('3/3', () => counts('apps', 'team/app:v1') === '3/3' && counts('apps', 'team/db:v2') === '3/3');
    expect(preloadOf('apps', 'team/app:v1')).toEqual({ image: 'team/app:v1', nodesReady: 3, nodesFailed: 0, nodesTotal: 3, digest: 'sha256:3f2a9c1e0b7d' });
    expect(statusOf('apps').preloadSummary).toBe('2/2 images on all 3 nodes');
    expect(api.writes().every((w) => w.fieldManager === MANAGER)).toBe(true);

    // spec.preload removed: the leader's apply leaves the preload status out, and server-side apply
    // removes what it owned (the double, like the API server, may keep the emptied list).
    putMirror('apps', { registry: REG, upstream: 'http://registry.virtual:5000' });
    await until('preload status gone', () => (statusOf('apps').preload ?? []).length === 0 && statusOf('apps').preloadSummary === undefined && statusOf('apps').observedGeneration === 2);
    api.clearRequests();
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(api.writes().filter((w) => w.path === STATUS_PATH('apps'))).toEqual([]);
  });

  it('a report with 100 failing images stays within 16 KiB; the leader still lists all 100 with their error', async () => {
    const images = Array.from({ length: 100 }, (_, i) => `team/service-${String(i).padStart(3, '0')}:2025.${i}`);
    putMirror('many', { registry: REG, upstream: 'http://registry.virtual:5000', preload: images.map((image) => ({ image })) });
    const node = await simulatedNode('node-a', 'many', REG);
    await node.set(images.map((image) => entry(image, 'failed', { error: `manifest unknown: ${image} is not in repository team (upstream said: ${'x'.repeat(200)})` })));
    await leader();
    await until('100 failing', () => statusOf('many').preload?.length === 100 && statusOf('many').preload!.every((p) => p.nodesFailed === 1));

    const lease = api.store.get(LEASES, NS, reportLeaseName('node-a'));
    const text = String(((lease?.metadata as JsonObject).annotations as JsonObject)[REPORT_ANNOTATION]);
    expect(Buffer.byteLength(text)).toBeLessThanOrEqual(REPORT_BUDGET_BYTES);
    expect(parseReport(text)['many']?.preload?.entries).toHaveLength(100);
    const status = statusOf('many');
    expect(status.preload?.map((p) => p.image)).toEqual(images);
    for (const p of status.preload ?? []) {
      expect(p).toMatchObject({ nodesReady: 0, nodesFailed: 1, nodesTotal: 1 });
      expect(p.lastError).toMatch(/^node-a: manifest unknown: team\/service-\d{3}/);
      expect(p.lastError!.length).toBeLessThanOrEqual(256);
    }
    expect(status.preloadSummary).toBe('0/100 images on all 1 node, 100 failing');
  });

  describe('with a real agent', () => {
    let dir: string;
    let agent: InProcessAgent;

    beforeEach(async () => {
      dir = await makeTempDir('rpa-kube-preload');
      await writeFile(join(dir, 'containerd-config.toml'), `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "${join(dir, 'certs.d')}"\n`);
      await writeFile(join(dir, 'kubeconfig'), api.kubeconfigYaml());
      agent = await startAgent({ dir, mirrors: [], manageHosts: true, kubernetes: { kubeconfig: join(dir, 'kubeconfig'), nodeName: 'node-a', namespace: NS }, kubernetesOptions: FAST });
      cleanups.push(async () => {
        await agent.stop();
        await removeTempDir(dir);
      });
    });

    const preloadList = (): string[] => agent.runtime.mirrors.list().find((m) => m.registry === REG)?.config.preload.map((p) => p.image) ?? [];

    it('a change of spec.preload reaches the running agent, and its preloading reaches the status', async () => {
      const runtime = agent.runtime;
      putMirror('apps', { registry: REG, upstream: registry.url, preload: [{ image: 'team/app:v1' }], preloadInterval: '1m', maxFetches: 2 });
      await until('preload list applied', () => preloadList().join() === 'team/app:v1');
      const mirror = agent.runtime.mirrors.list().find((m) => m.registry === REG);
      expect(mirror?.config).toMatchObject({ preloadIntervalMs: 60_000, budget: { maxFetches: 2 }, mode: 'online' });
      // The real runtime's preloadStates feed the report: the image is fetched, and the status says so.
      await until('team/app:v1 ready on node-a', () => preloadOf('apps', 'team/app:v1')?.nodesReady === 1, 30_000);
      expect(preloadOf('apps', 'team/app:v1')).toMatchObject({ nodesTotal: 1, digest: expect.stringMatching(/^sha256:[0-9a-f]{12}$/) });

      // Changed live: a second image (missing upstream) and platforms; no restart.
      putMirror('apps', { registry: REG, upstream: registry.url, preload: [{ image: 'team/app:v1' }, { image: 'team/missing:v9', platforms: ['linux/arm64'] }], preloadInterval: '1m', maxFetches: 2 });
      await until('new preload list applied', () => preloadList().join() === 'team/app:v1,team/missing:v9');
      expect(agent.runtime).toBe(runtime);
      expect(agent.runtime.mirrors.list().find((m) => m.registry === REG)?.config.preload[1]).toMatchObject({ repository: 'team/missing', tag: 'v9', platforms: [{ os: 'linux', architecture: 'arm64' }] });
      await until('team/missing:v9 failing with its error', () => preloadOf('apps', 'team/missing:v9')?.lastError?.startsWith('node-a: ') === true, 30_000);
      expect(preloadOf('apps', 'team/missing:v9')).toMatchObject({ nodesReady: 0, nodesFailed: 1, nodesTotal: 1 });
      expect(preloadOf('apps', 'team/app:v1')?.nodesReady).toBe(1);
      expect(statusOf('apps').preloadSummary).toBe('1/2 images on all 1 node, 1 failing');
    });

    it('an invalid preload entry is InvalidSpec naming the entry; the previous good version keeps being served', async () => {
      putMirror('apps', { registry: REG, upstream: registry.url, preload: [{ image: 'team/app:v1' }] });
      await until('applied', () => preloadList().join() === 'team/app:v1');
      await until('Ready', () => statusOf('apps').conditions?.[0]?.status === 'True');

      // Admitted by the CRD (its pattern cannot know this mirror's registry), refused by the agent.
      putMirror('apps', { registry: REG, upstream: registry.url, preload: [{ image: 'team/app:v1' }, { image: 'other.corp.example/team/app:v1' }] });
      await until('InvalidSpec', () => statusOf('apps').conditions?.[0]?.reason === 'InvalidSpec');
      const ready = statusOf('apps').conditions?.[0];
      expect(ready).toMatchObject({ status: 'False', observedGeneration: 2 });
      expect(ready?.message).toContain(`spec.preload[1]: other.corp.example/team/app:v1 names registry other.corp.example, not this mirror's ${REG}`);
      expect(statusOf('apps').nodes?.failingNodes?.[0]).toMatchObject({ node: 'node-a', reason: 'InvalidSpec', message: expect.stringContaining('spec.preload[1]') });
      // The node serves the previous version, so it does not count for the new list.
      expect(preloadOf('apps', 'other.corp.example/team/app:v1')).toMatchObject({ nodesReady: 0, nodesTotal: 1 });
      expect(preloadList()).toEqual(['team/app:v1']);

      // A platform the loader refuses is named with its index too.
      putMirror('apps', { registry: REG, upstream: registry.url, preload: [{ image: 'team/app:v1', platforms: ['linux/amd64', 'linux'] }] });
      await until('platform named', () => statusOf('apps').conditions?.[0]?.message.includes('spec.preload[0].platforms[1]: invalid platform "linux"') === true);
    });
  });
});
