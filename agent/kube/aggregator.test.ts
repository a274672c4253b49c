import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { CORE_EVENTS, type KubeApi, LEASES, REGISTRY_MIRRORS, startKubeApi } from '../../test/fixtures/kube-api.ts';
import { pollUntil } from '../../test/fixtures/poll.ts';
import type { PreloadImageState } from '../preload/state.ts';
import { KubeClient } from './client.ts';
import { StatusAggregator, aggregate, aggregatePreload, sameStatus, specPreloadImages } from './aggregator.ts';
import { type MirrorReport, REPORT_ANNOTATION, REPORT_LABEL, encodeReport, preloadKey, preloadReport, reportLeaseName } from './report.ts';
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

const IMAGES = ['team/app:1', 'team/db:2', 'team/web:3'];
const DIGEST = (n: number): string => `sha256:${String(n).repeat(64).slice(0, 64)}`;
/** A node's report with preload entries for IMAGES: phases in order, `f:<error>` for failed. */
function withPreload(phases: readonly string[], opts: { generation?: number; digest?: number; images?: readonly string[] } = {}): MirrorReport {
  const images = opts.images ?? IMAGES;
  const states = phases.map((p, i): PreloadImageState => {
    const phase = p === 'r' ? 'ready' : p === 'p' ? 'pending' : 'failed';
    return {
      image: images[i] ?? '',
      phase,
      ...(phase === 'pending' ? {} : { digest: DIGEST(opts.digest ?? i + 1) }),
      bytes: 1,
      pinned: true,
      since: 0,
      ...(phase === 'failed' ? { error: p.slice(2) } : {}),
    };
  });
  return { ...ok(opts.generation ?? 1), preload: preloadReport(states) };
}

describe('aggregatePreload', () => {
  it('counts per spec image the nodes that have it, agree on its digest, and names the most common failure', () => {
    const reports = [
      { node: 'a', report: withPreload(['r', 'r', 'f:manifest unknown']) },
      { node: 'b', report: withPreload(['r', 'p', 'f:upstream unreachable']) },
      { node: 'c', report: withPreload(['r', 'r', 'f:manifest unknown'], { digest: 7 }) },
      // A node with a problem (e.g. InvalidSpec) reports no preload part: counted, never ready.
      { node: 'd', report: bad('HostsFileError') },
    ];
    const { preload, preloadSummary } = aggregatePreload(IMAGES, 1, reports);
    expect(preload).toEqual([
      { image: 'team/app:1', nodesReady: 3, nodesFailed: 0, nodesTotal: 4, digest: 'mixed' },
      { image: 'team/db:2', nodesReady: 2, nodesFailed: 0, nodesTotal: 4, digest: 'mixed' },
      { image: 'team/web:3', nodesReady: 0, nodesFailed: 3, nodesTotal: 4, digest: 'mixed', lastError: 'a: manifest unknown' },
    ]);
    expect(preloadSummary).toBe('0/3 images on all 4 nodes, 1 failing');

    const agreeing = aggregatePreload(IMAGES, 1, [{ node: 'a', report: withPreload(['r', 'r', 'r']) }, { node: 'b', report: withPreload(['r', 'r', 'p']) }]);
    expect(agreeing.preload?.map((p) => [p.nodesReady, p.digest])).toEqual([
      [2, `sha256:${'1'.repeat(12)}`],
      [2, `sha256:${'2'.repeat(12)}`],
      [1, `sha256:${'3'.repeat(12)}`],
    ]);
    expect(agreeing.preloadSummary).toBe('2/3 images on all 2 nodes');
    expect(aggregatePreload(['team/app:1'], 1, [{ node: 'a', report: withPreload(['r']) }]).preloadSummary).toBe('1/1 image on all 1 node');
    expect(aggregatePreload(IMAGES, 1, []).preloadSummary).toBe('0/3 images: no node has reported');
    expect(aggregatePreload([], 1, [{ node: 'a', report: ok() }])).toEqual({});
  });

  it('matches entries by image, whatever the order; a shrunk report counts its unlisted images ready only for the current generation', () => {
    // Node a lists the spec in another order (an older generation with the same images).
    const reordered = withPreload(['r', 'f:x', 'r'], { images: ['team/web:3', 'team/app:1', 'team/db:2'], generation: 1 });
    expect(aggregatePreload(IMAGES, 2, [{ node: 'a', report: reordered }]).preload?.map((p) => [p.image, p.nodesReady, p.nodesFailed])).toEqual([
      ['team/app:1', 0, 1],
      ['team/db:2', 1, 0],
      ['team/web:3', 1, 0],
    ]);
    // As the leader reads them after the report had to shrink: only what is not ready is listed.
    const shrunk = (generation: number): MirrorReport => {
      const full = withPreload(['r', 'f:x', 'r'], { generation });
      return { ...full, preload: { ...full.preload!, listing: 'unready', entries: full.preload!.entries.filter((e) => e.phase !== 'ready') } };
    };
    expect(aggregatePreload(IMAGES, 2, [{ node: 'a', report: shrunk(2) }]).preload?.map((p) => p.nodesReady)).toEqual([1, 0, 1]);
    expect(aggregatePreload(IMAGES, 2, [{ node: 'a', report: shrunk(1) }]).preload?.map((p) => p.nodesReady)).toEqual([0, 0, 0]);
    // Counts only: all ready means every image; anything else says nothing per image.
    const counts = (ready: number): MirrorReport => ({ ...ok(2), preload: { total: 3, ready, failed: 3 - ready, listing: 'none', entries: [] } });
    expect(aggregatePreload(IMAGES, 2, [{ node: 'a', report: counts(3) }]).preload?.map((p) => p.nodesReady)).toEqual([1, 1, 1]);
    expect(aggregatePreload(IMAGES, 2, [{ node: 'a', report: counts(2) }]).preload?.map((p) => [p.nodesReady, p.nodesFailed])).toEqual([
      [0, 0],
      [0, 0],
      [0, 0],
    ]);
  });

  it('names a failing node even when its report had no room for the message; errors are cut to 256 characters', () => {
    const silent: MirrorReport = { ...ok(), preload: { total: 1, ready: 0, failed: 1, listing: 'all', entries: [{ key: preloadKey('team/app:1'), phase: 'failed' }] } };
    expect(aggregatePreload(['team/app:1'], 1, [{ node: 'n2', report: silent }, { node: 'n1', report: silent }]).preload?.[0]?.lastError).toBe('n1: failed (its report had no room for the message)');
    const long = aggregatePreload(['team/app:1'], 1, [{ node: 'n', report: withPreload([`f:${'e'.repeat(400)}`]) }]).preload?.[0]?.lastError ?? '';
    expect(long.length).toBe(256);
    expect(long.startsWith('n: eee')).toBe(true);
  });

  it('reads the images from spec.preload: trimmed, each once, at most 100', () => {
    const rm = (preload: unknown): RegistryMirror => ({ metadata: { name: 'corp' }, spec: { registry: 'r', preload } });
    expect(specPreloadImages(rm([{ image: 'team/app:1' }, { image: ' team/db:2 ', platforms: ['linux/amd64'] }, { image: 'team/app:1' }, { platforms: [] }, 'team/x:1']))).toEqual(['team/app:1', 'team/db:2', 'team/x:1']);
    expect(specPreloadImages(rm(undefined))).toEqual([]);
    expect(specPreloadImages(rm(Array.from({ length: 150 }, (_, i) => ({ image: `a/b-${i}:1` }))))).toHaveLength(100);
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

  it('compares the preload entries field by field, whatever the key order', () => {
    const preloaded = { ...desired, ...aggregatePreload(IMAGES, 2, [{ node: 'b', report: withPreload(['r', 'p', 'f:gone'], { generation: 2 }) }]) };
    const entries = preloaded.preload?.map((p) => Object.fromEntries(Object.entries(p).reverse())) as unknown as typeof preloaded.preload;
    const applied = { ...live, preloadSummary: preloaded.preloadSummary, preload: entries };
    expect(sameStatus(applied, preloaded)).toBe(true);
    expect(sameStatus(live, preloaded)).toBe(false);
    expect(sameStatus(applied, desired)).toBe(false);
    expect(sameStatus({ ...applied, preload: entries?.map((p, i) => (i === 1 ? { ...p, nodesReady: 1 } : p)) }, preloaded)).toBe(false);
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
      client: new KubeClient(kc),
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
