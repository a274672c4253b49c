import { describe, expect, it } from 'vitest';
import { aggregate, sameStatus } from './aggregator.ts';
import type { MirrorReport } from './node-report.ts';
import { parseReport, reportLeaseName } from './node-report.ts';

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

describe('node reports', () => {
  it('names the Lease after the node, within 253 characters', () => {
    expect(reportLeaseName('worker-1')).toBe('rpa-node-worker-1');
    const long = reportLeaseName(`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`);
    expect(long.length).toBeLessThanOrEqual(253);
    expect(long).toMatch(/^rpa-node-a+\..*-[0-9a-f]{10}$/);
  });

  it('parses what any agent wrote and drops what it cannot use', () => {
    expect(parseReport('{"a":{"ok":true,"reason":"Ready","message":"m","generation":2},"b":{"ok":"yes"},"c":null}')).toEqual({
      a: { ok: true, reason: 'Ready', message: 'm', generation: 2 },
    });
    expect(parseReport('not json')).toEqual({});
    expect(parseReport(undefined)).toEqual({});
  });
});
