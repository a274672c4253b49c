import { describe, expect, it } from 'vitest';
import type { PreloadImageState } from '../preload/state.ts';
import { type MirrorReport, REPORT_BUDGET_BYTES, encodeReport, parseReport, preloadKey, preloadReport, reportLeaseName, reportState } from './report.ts';

const digestOf = (i: number): string => `sha256:${i.toString(16).padStart(4, '0')}${'e'.repeat(60)}`;
/** A node's preload entry `team/app-<i>:1.<i>` as the runtime states it. */
function image(i: number, phase: PreloadImageState['phase'], error?: string): PreloadImageState {
  return { image: `team/app-${i}:1.${i}`, phase, digest: digestOf(i), bytes: 1_000, pinned: true, since: 0, ...(error === undefined ? {} : { error }) };
}
const mirror = (preload: readonly PreloadImageState[], extra: Partial<MirrorReport> = {}): MirrorReport => ({
  ok: true,
  reason: 'Ready',
  message: '',
  generation: 1,
  preload: preloadReport(preload),
  ...extra,
});
const size = (text: string): number => Buffer.byteLength(text);

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

  it('carries preload entries compactly: a key per image, phase, a short digest, errors once; parsed back to the same text', () => {
    const report = new Map([['corp', mirror([image(0, 'ready'), image(1, 'pending'), image(2, 'failed', 'manifest unknown'), image(3, 'failed', 'manifest unknown')])]]);
    const text = encodeReport(report);
    const doc = JSON.parse(text) as { corp: { preload: unknown } };
    expect(doc.corp.preload).toEqual({
      n: 4,
      r: 1,
      f: 2,
      i: [
        [preloadKey('team/app-0:1.0'), 'r', '0000eeeeeeee'],
        [preloadKey('team/app-1:1.1'), 'p', '0001eeeeeeee'],
        [preloadKey('team/app-2:1.2'), 'f', '0002eeeeeeee', 0],
        [preloadKey('team/app-3:1.3'), 'f', '0003eeeeeeee', 0],
      ],
      e: ['manifest unknown'],
    });
    const parsed = parseReport(text).corp?.preload;
    expect(parsed).toMatchObject({ total: 4, ready: 1, failed: 2, listing: 'all' });
    expect(parsed?.entries[2]).toEqual({ key: preloadKey('team/app-2:1.2'), phase: 'failed', digest: '0002eeeeeeee', error: 'manifest unknown' });
    expect(encodeReport(parseReport(text))).toBe(text);
    // Keys are 8 hex digits of the image as written, trimmed (the leader computes them from the spec).
    expect(preloadKey(' team/app:1 ')).toBe(preloadKey('team/app:1'));
    expect(preloadKey('team/app:1')).toMatch(/^[0-9a-f]{8}$/);
    // A mirror without preload entries has no preload part (the reporter leaves it out); older leaders ignore the key.
    expect(encodeReport(new Map([['corp', { ok: true, reason: 'Ready', message: '', generation: 1 }]]))).not.toContain('preload');
    expect(parseReport(text).corp).toMatchObject({ ok: true, reason: 'Ready', message: '', generation: 1 });
  });

  it('drops malformed preload parts and entries, keeping the rest of the report', () => {
    const base = '"ok":true,"reason":"Ready","message":"","generation":1';
    expect(parseReport(`{"a":{${base},"preload":{"n":1,"r":2,"f":0}}}`).a).toEqual({ ok: true, reason: 'Ready', message: '', generation: 1 });
    expect(parseReport(`{"a":{${base},"preload":"x"}}`).a?.preload).toBeUndefined();
    const entries = parseReport(`{"a":{${base},"preload":{"n":3,"r":0,"f":1,"i":[["nothex!!","r",""],["0123abcd","x",""],["0123abcd","f","zz",7]]}}}`).a?.preload?.entries;
    expect(entries).toEqual([{ key: '0123abcd', phase: 'failed' }]);
  });

  it('stays within 16 KiB with 100 failing preload images, keeping every entry and as much of the errors as fits', () => {
    // Every image fails differently: 100 distinct 300-character errors do not fit, 64 characters do.
    const failing = Array.from({ length: 100 }, (_, i) => image(i, 'failed', `manifest unknown: team/app-${i}:1.${i} ${'x'.repeat(300)}`));
    const one = encodeReport(new Map([['corp', mirror(failing, { ok: false, reason: 'UpstreamUnreachable', message: 'm'.repeat(300) })]]));
    expect(size(one)).toBeLessThanOrEqual(REPORT_BUDGET_BYTES);
    const parsed = parseReport(one).corp;
    expect(parsed?.preload).toMatchObject({ total: 100, ready: 0, failed: 100 });
    expect(parsed?.preload?.entries).toHaveLength(100);
    expect(parsed?.preload?.entries.every((e) => e.phase === 'failed' && e.error?.length === 64)).toBe(true);
    expect(encodeReport(parseReport(one))).toBe(one);

    // Three such mirrors: the ready entries and digests go first, then all but each mirror's most frequent errors.
    const three = new Map(['a', 'b', 'c'].map((name) => [name, mirror(failing, { ok: false, reason: 'UpstreamUnreachable', message: 'm'.repeat(300) })]));
    const text = encodeReport(three);
    expect(size(text)).toBeLessThanOrEqual(REPORT_BUDGET_BYTES);
    for (const r of Object.values(parseReport(text))) {
      expect(r.preload?.entries).toHaveLength(100);
      expect(r.preload?.entries.some((e) => e.error !== undefined)).toBe(true);
      expect(r.message.length).toBe(64);
    }
    expect(encodeReport(parseReport(text))).toBe(text);

    // The same error on every image is listed once: full length, digests kept.
    const same = encodeReport(new Map([['corp', mirror(Array.from({ length: 100 }, (_, i) => image(i, 'failed', `upstream unreachable: ${'y'.repeat(250)}`)))]]));
    expect(parseReport(same).corp?.preload?.entries.every((e) => e.error?.length === 256 && e.digest !== undefined)).toBe(true);
  });

  it('with many mirrors lists only the images not ready, then counts, then leaves preload out from the last name backwards', () => {
    const list = (ready: number, failed: number): PreloadImageState[] => [
      ...Array.from({ length: ready }, (_, i) => image(i, 'ready')),
      ...Array.from({ length: failed }, (_, i) => image(ready + i, 'failed', 'manifest unknown')),
    ];
    const build = (mirrors: number, ready: number, failed: number): Map<string, MirrorReport> =>
      new Map(Array.from({ length: mirrors }, (_, j) => [`mirror-${String(j).padStart(3, '0')}`, mirror(list(ready, failed))]));

    // 20 mirrors × 100 images, 2 failing each: only those two are listed, with their error.
    const unready = parseReport(encodeReport(build(20, 98, 2)));
    expect(Object.values(unready).every((r) => r.preload?.listing === 'unready' && r.preload.entries.length === 2 && r.preload.entries[0]?.error === 'manifest unknown')).toBe(true);

    // 100 images × 200 mirrors cannot fit: every mirror keeps its entry, the first ones their counts.
    const huge = build(200, 50, 50);
    const text = encodeReport(huge);
    expect(size(text)).toBeLessThanOrEqual(REPORT_BUDGET_BYTES);
    const parsed = parseReport(text);
    expect(Object.keys(parsed)).toHaveLength(200);
    const withPreload = Object.keys(parsed).filter((name) => parsed[name]?.preload !== undefined);
    expect(withPreload.length).toBeGreaterThan(20);
    expect(withPreload).toEqual(Object.keys(parsed).slice(0, withPreload.length));
    expect(parsed['mirror-000']?.preload).toEqual({ total: 100, ready: 50, failed: 50, listing: 'none', entries: [] });
    expect(encodeReport(parsed)).toBe(text);
  });

  it('a changed preload phase or digest is a state change; a reworded error is not', () => {
    const state = (images: PreloadImageState[]): string => reportState(new Map([['corp', mirror(images)]]));
    const failed = state([image(0, 'failed', 'one')]);
    expect(state([image(0, 'failed', 'two')])).toBe(failed);
    expect(state([image(0, 'pending')])).not.toBe(failed);
    expect(state([image(0, 'ready')])).not.toBe(state([{ ...image(0, 'ready'), digest: digestOf(9) }]));
    expect(state([])).not.toBe(state([image(0, 'ready')]));
  });
});
