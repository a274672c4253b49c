import { CoordinationV1Api, CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { CORE_EVENTS, type KubeApi, LEASES, REGISTRY_MIRRORS, startKubeApi } from '../../test/fixtures/kube-api.ts';
import { pollUntil } from '../../test/fixtures/poll.ts';
import { StatusAggregator, aggregate, sameStatus } from './aggregator.ts';
import { type MirrorReport, REPORT_ANNOTATION, REPORT_LABEL, encodeReport, reportLeaseName } from './report.ts';
import type { RegistryMirror, RegistryMirrorStatus } from './resources.ts';
import { transitionEvent } from './status-event.ts';

const ok = (generation = 1): MirrorReport => ({ ok: true, reason: 'Ready', message: 'serving', generation });
const bad = (reason: string, generation = 1): MirrorReport => ({ ok: false, reason, message: `${reason} message`, generation });

describe('aggregate', () => {
  it('counts nodes, lists at most 10 failing ones sorted by name, and names the most common reason', () => {
    const reports = [
      { node: 'a', report: ok() },
      ...Array.from({ length: 12 }, (_, i) => ({ node: `n-${String(12 - i).padStart(2, '0')}`, report: bad(i < 8 ? 'ConfigPathUnset' : 'UpstreamUnreachable') })),
    ];
    const status = aggregate(1, reports);
    expect(status.nodes.ready).toBe(1);
    expect(status.nodes.failing).toBe(12);
    expect(status.nodes.failingNodes.map((n) => n.node)).toEqual(['n-01', 'n-02', 'n-03', 'n-04', 'n-05', 'n-06', 'n-07', 'n-08', 'n-09', 'n-10']);
    expect(status.ready).toEqual({ status: 'False', reason: 'ConfigPathUnset', message: '12 of 13 nodes failing; n-01: UpstreamUnreachable: UpstreamUnreachable message' });
  });

  it('is Ready only with reports and no failures; observedGeneration is the oldest generation evaluated', () => {
    expect(aggregate(4, []).ready).toMatchObject({ status: 'False', reason: 'NoReports' });
    expect(aggregate(4, []).observedGeneration).toBe(4);
    const mixed = aggregate(4, [{ node: 'a', report: ok(4) }, { node: 'b', report: ok(3) }]);
    expect(mixed).toMatchObject({ observedGeneration: 3, ready: { status: 'True', reason: 'AllNodesReady' }, nodes: { ready: 2, failing: 0, failingNodes: [] } });
  });

  it('keeps reasons within the CRD pattern', () => {
    expect(aggregate(1, [{ node: 'a', report: bad('not a reason!') }]).nodes.failingNodes[0]?.reason).toBe('notareason');
    expect(aggregate(1, [{ node: 'a', report: bad('---') }]).nodes.failingNodes[0]?.reason).toBe('Unknown');
  });
});

describe('sameStatus', () => {
  const desired = aggregate(2, [{ node: 'b', report: bad('ConfigPathUnset', 2) }]);
  const live = {
    observedGeneration: 2,
    conditions: [{ type: 'Ready', status: 'False' as const, reason: 'ConfigPathUnset', message: desired.ready.message, observedGeneration: 2, lastTransitionTime: '2025-01-01T00:00:00Z' }],
    // The API server's key order, not ours.
    nodes: { failing: 1, failingNodes: [{ message: 'ConfigPathUnset message', node: 'b', reason: 'ConfigPathUnset' }], ready: 0 },
  };

  it('ignores lastTransitionTime and key order', () => {
    expect(sameStatus(live, desired)).toBe(true);
  });

  it('sees any other difference', () => {
    expect(sameStatus(undefined, desired)).toBe(false);
    expect(sameStatus({ ...live, observedGeneration: 1 }, desired)).toBe(false);
    expect(sameStatus({ ...live, nodes: { ...live.nodes, ready: 1 } }, desired)).toBe(false);
  });
});

describe('transitionEvent', () => {
  const rm = { apiVersion: 'registry-proxy.dev/v1alpha1', kind: 'RegistryMirror', metadata: { name: 'corp', uid: 'u-1' } };
  const condition = (status: 'True' | 'False', reason: string) => ({ type: 'Ready', status, reason, message: 'm', lastTransitionTime: '2025-01-01T00:00:00Z' });
  const failing = (n: number, reason = 'UpstreamUnreachable') => aggregate(1, [{ node: 'a', report: ok() }, ...Array.from({ length: n }, (_, i) => ({ node: `n${i}`, report: bad(reason) }))]);
  const at = new Date('2025-01-01T00:00:00Z');

  it('announces a change of the Ready status or reason once, as the leader, and nothing else', () => {
    const event = transitionEvent(rm, condition('True', 'AllNodesReady'), failing(3), 'node-l', at);
    expect(event).toMatchObject({
      metadata: { generateName: 'corp.', namespace: 'default' },
      involvedObject: { apiVersion: 'registry-proxy.dev/v1alpha1', kind: 'RegistryMirror', name: 'corp', uid: 'u-1' },
      reason: 'NotReady',
      type: 'Warning',
      message: 'Ready True → False, UpstreamUnreachable: 3 of 4 nodes failing; n0: UpstreamUnreachable: UpstreamUnreachable message',
      reportingComponent: 'registry-proxy-agent',
      reportingInstance: 'node-l',
      count: 1,
    });
    expect(transitionEvent(rm, condition('False', 'UpstreamUnreachable'), failing(3, 'ConfigPathUnset'), 'node-l', at)?.reason).toBe('NotReady');
    expect(transitionEvent(rm, condition('False', 'UpstreamUnreachable'), aggregate(1, [{ node: 'a', report: ok() }]), 'node-l', at)).toMatchObject({ reason: 'Ready', type: 'Normal' });
    expect(transitionEvent(rm, undefined, failing(1), 'node-l', at)?.message).toMatch(/^Ready Unknown → False, /);
  });

  it('says nothing when only counts or listed nodes change, or when no node has reported yet', () => {
    expect(transitionEvent(rm, condition('False', 'UpstreamUnreachable'), failing(4_980), 'node-l', at)).toBeUndefined();
    expect(transitionEvent(rm, undefined, aggregate(1, []), 'node-l', at)).toBeUndefined();
  });
});

describe('status size', () => {
  it('stays a few KiB at worst: 10 listed nodes with 253-character names and 256-character messages', () => {
    const reports = Array.from({ length: 5_000 }, (_, i) => ({ node: `${String(i).padStart(4, '0')}${'n'.repeat(249)}`, report: { ok: false, reason: 'A'.repeat(64), message: 'm'.repeat(400), generation: 1 } }));
    const desired = aggregate(1, reports);
    expect(desired.nodes.failingNodes).toHaveLength(10);
    expect(Buffer.byteLength(JSON.stringify(desired))).toBeLessThan(8 * 1024);
  });
});

describe('StatusAggregator with 5,000 report Leases', () => {
  const NS = 'registry-proxy-agent';
  let api: KubeApi;
  const aggregators: StatusAggregator[] = [];

  afterEach(async () => {
    await Promise.all(aggregators.splice(0).map((a) => a.stop()));
    await api.stop();
  });

  /** node-0000 … node-4999: every fifth fails; of those, 6 in 10 UpstreamUnreachable, 3 ConfigPathUnset, 1 HostsFileError. */
  function reportOf(i: number, reason?: string): MirrorReport {
    if (i % 5 !== 0) return { ok: true, reason: 'Ready', message: '', generation: 1 };
    const j = (i / 5) % 10;
    const why = reason ?? (j < 6 ? 'UpstreamUnreachable' : j < 9 ? 'ConfigPathUnset' : 'HostsFileError');
    return { ok: false, reason: why, message: `${why}: the periodic GET /v2/ to registry.corp.example:5000's upstream fails`, generation: 1 };
  }

  function putLease(i: number, reason?: string): void {
    const node = `node-${String(i).padStart(4, '0')}`;
    api.store.put(LEASES, {
      metadata: { name: reportLeaseName(node), namespace: NS, labels: { [REPORT_LABEL]: 'true' }, annotations: { [REPORT_ANNOTATION]: encodeReport({ corp: reportOf(i, reason) }) } },
      spec: { holderIdentity: node, leaseDurationSeconds: 1800, renewTime: new Date().toISOString().replace('Z', '000Z') },
    });
  }

  async function startAggregator(): Promise<StatusAggregator> {
    const kc = api.kubeConfig();
    const aggregator = new StatusAggregator({
      clients: { kc, custom: kc.makeApiClient(CustomObjectsApi), core: kc.makeApiClient(CoreV1Api), coordination: kc.makeApiClient(CoordinationV1Api) },
      namespace: NS,
      nodeName: 'node-0001',
      log: pino({ level: 'silent' }),
      // The RegistryMirror as the API server has it now: no informer lag in this test.
      registryMirrors: () => [api.store.get(REGISTRY_MIRRORS, undefined, 'corp') as RegistryMirror],
      // No timer: the test runs each pass itself.
      options: { intervalMs: 3_600_000 },
    });
    aggregators.push(aggregator);
    aggregator.start();
    expect(await aggregator.whenSynced(20_000)).toBe(true);
    return aggregator;
  }

  const statusWrites = (): number => api.writes().filter((w) => w.path === '/apis/registry-proxy.dev/v1alpha1/registrymirrors/corp/status').length;
  const eventWrites = (): number => api.writes().filter((w) => w.path === '/api/v1/namespaces/default/events').length;

  async function seed(nodes: number): Promise<void> {
    api = await startKubeApi({ bookmarkIntervalMs: 60_000, historyLimit: 100 });
    api.store.put(REGISTRY_MIRRORS, { apiVersion: 'registry-proxy.dev/v1alpha1', kind: 'RegistryMirror', metadata: { name: 'corp' }, spec: { registry: 'registry.corp.example:5000', upstream: 'http://registry.virtual:5000' } });
    for (let i = 0; i < nodes; i++) putLease(i);
  }

  it('writes a bounded status exactly once, nothing when nothing changed, and once for a changed listed node', async () => {
    await seed(5_000);
    const aggregator = await startAggregator();

    api.clearRequests();
    await aggregator.reconcileAll();
    expect(statusWrites()).toBe(1);
    expect(eventWrites()).toBe(1);
    const status = api.store.get(REGISTRY_MIRRORS, undefined, 'corp')?.status as RegistryMirrorStatus;
    expect(Buffer.byteLength(JSON.stringify(status))).toBeLessThan(4 * 1024);
    expect(status.nodes).toMatchObject({ ready: 4_000, failing: 1_000 });
    expect(status.nodes?.failingNodes?.map((n) => n.node)).toEqual(['node-0000', 'node-0005', 'node-0010', 'node-0015', 'node-0020', 'node-0025', 'node-0030', 'node-0035', 'node-0040', 'node-0045']);
    expect(status.conditions?.[0]).toMatchObject({ type: 'Ready', status: 'False', reason: 'UpstreamUnreachable', message: expect.stringMatching(/^1000 of 5000 nodes failing; node-0000: /) });
    const [event] = api.store.list(CORE_EVENTS, 'default');
    expect(event).toMatchObject({ reason: 'NotReady', type: 'Warning', reportingInstance: 'node-0001', message: expect.stringMatching(/^Ready Unknown → False, UpstreamUnreachable: 1000 of 5000 nodes failing/) });

    api.clearRequests();
    await aggregator.reconcileAll();
    expect(api.writes()).toEqual([]);

    // node-0015 (listed, UpstreamUnreachable) now fails for another reason: one status write, no Event.
    putLease(15, 'HostsFileError');
    await pollUntil(async () => (await aggregator.reconcileAll(), statusWrites() > 0), { what: 'changed reason applied', timeoutMs: 10_000, intervalMs: 20 });
    await aggregator.reconcileAll();
    expect(statusWrites()).toBe(1);
    expect(eventWrites()).toBe(0);
    const listed = (api.store.get(REGISTRY_MIRRORS, undefined, 'corp')?.status as RegistryMirrorStatus).nodes?.failingNodes?.find((n) => n.node === 'node-0015');
    expect(listed?.reason).toBe('HostsFileError');
  });

  it('a new leader folds the same Leases into the same status: no write and no Event again', async () => {
    await seed(50);
    const first = await startAggregator();
    await first.reconcileAll();
    expect([statusWrites(), eventWrites()]).toEqual([1, 1]);
    await first.stop();
    api.clearRequests();
    await (await startAggregator()).reconcileAll();
    expect(api.writes()).toEqual([]);
  });
});
