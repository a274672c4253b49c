import { describe, expect, it } from 'vitest';
import { type MirrorReport, REPORT_BUDGET_BYTES, encodeReport, parseReport, reportLeaseName, reportState } from './report.ts';

describe('node report Leases', () => {
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

  it('encodes sorted by name, ready entries without a message, readable by older leaders', () => {
    const report = new Map<string, MirrorReport>([
      ['zeta', { ok: false, reason: 'UpstreamUnreachable', message: 'the periodic GET /v2/ fails', generation: 3 }],
      ['alpha', { ok: true, reason: 'Ready', message: 'node a serves it', generation: 2 }],
    ]);
    const text = encodeReport(report);
    expect(text).toBe('{"alpha":{"ok":true,"reason":"Ready","message":"","generation":2},"zeta":{"ok":false,"reason":"UpstreamUnreachable","message":"the periodic GET /v2/ fails","generation":3}}');
    expect(encodeReport(parseReport(text))).toBe(text);
  });

  it('stays within its budget however many RegistryMirrors fail with long messages, keeping every entry', () => {
    const entry = (i: number): [string, MirrorReport] => [`mirror-${String(i).padStart(3, '0')}`, { ok: false, reason: 'HostsFileError', message: `x${i} `.repeat(100), generation: i }];
    for (const count of [1, 60, 150]) {
      const report = new Map(Array.from({ length: count }, (_, i) => entry(i)));
      const text = encodeReport(report);
      expect(Buffer.byteLength(text)).toBeLessThanOrEqual(REPORT_BUDGET_BYTES);
      const parsed = parseReport(text);
      expect(Object.keys(parsed)).toHaveLength(count);
      expect(Object.values(parsed).every((r) => !r.ok && r.reason === 'HostsFileError')).toBe(true);
      // The same report encodes to the same text after a round trip, so a restart does not rewrite it.
      expect(encodeReport(parsed)).toBe(text);
    }
    // Full messages (≤ 256) while they fit, shortened to 64, then left out.
    const lengths = [1, 60, 150].map((n) => Object.values(parseReport(encodeReport(new Map(Array.from({ length: n }, (_, i) => entry(i))))))[0]?.message.length);
    expect(lengths).toEqual([256, 64, 0]);
  });

  it('tells states apart by readiness, reason and generation, not by wording', () => {
    const r = (message: string, generation = 1): Map<string, MirrorReport> => new Map([['m', { ok: false, reason: 'Pending', message, generation }]]);
    expect(reportState(r('one'))).toBe(reportState(r('two')));
    expect(reportState(r('one'))).not.toBe(reportState(r('one', 2)));
  });
});
