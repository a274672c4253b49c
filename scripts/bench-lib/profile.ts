/** Self-time summary of a V8 .cpuprofile (as written by node --cpu-prof). */
import { readFile } from 'node:fs/promises';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  parent?: number;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface ProfileEntry {
  name: string;
  where: string;
  selfMs: number;
  /** Share of the non-idle samples in the window. */
  share: number;
}

export interface ProfileSummary {
  /** Window length, ms. */
  windowMs: number;
  /** Sampled time that was not (idle), ms. */
  busyMs: number;
  top: ProfileEntry[];
  /** Self time by where the code lives (agent/, node:internal/…, undici, (native)…). */
  byArea: ProfileEntry[];
  /** Inclusive time of selected agent frames (share of busy). */
  inclusive: ProfileEntry[];
}

function shortUrl(url: string): string {
  if (!url) return '';
  const agent = url.indexOf('/agent/');
  if (agent >= 0) return url.slice(agent + 1);
  const nm = url.lastIndexOf('/node_modules/');
  if (nm >= 0) return url.slice(nm + '/node_modules/'.length);
  return url.replace(/^file:\/\//, '');
}

function area(frame: CallFrame): string {
  const url = frame.url;
  if (!url) return frame.functionName.startsWith('(') ? frame.functionName : '(native / V8 builtins)';
  if (url.includes('/agent/')) return `agent/${url.split('/agent/')[1]?.split('/')[0] ?? ''}`;
  const nm = /\/node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm) return `npm:${nm[1] ?? ''}`;
  if (url.startsWith('node:')) {
    const parts = url.replace(/^node:(internal\/)?/, '').split('/');
    return `node:${parts.slice(0, Math.min(2, parts.length - 1) || 1).join('/')}`;
  }
  return url;
}

/**
 * Summarises samples between `fromUs` and `toUs` (microseconds, measured back from the profile's
 * end: the caller knows how long before the process exit the window started and ended).
 */
export async function summariseProfile(path: string, window: { startBeforeEndMs: number; endBeforeEndMs: number }, topN = 15): Promise<ProfileSummary> {
  const profile = JSON.parse(await readFile(path, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  for (const node of profile.nodes) byId.set(node.id, node);
  for (const node of profile.nodes) for (const child of node.children ?? []) {
    const c = byId.get(child);
    if (c) c.parent = node.id;
  }
  const from = profile.endTime - window.startBeforeEndMs * 1000;
  const to = profile.endTime - window.endBeforeEndMs * 1000;

  const self = new Map<string, { name: string; where: string; us: number }>();
  const areas = new Map<string, number>();
  const inclusive = new Map<string, number>();
  let busy = 0;
  let t = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i] ?? 0;
    if (t < from || t > to) continue;
    const dt = profile.timeDeltas[i + 1] ?? 0;
    const node = byId.get(profile.samples[i] ?? -1);
    if (!node) continue;
    const frame = node.callFrame;
    if (frame.functionName === '(idle)') continue;
    busy += dt;
    const name = frame.functionName || '(anonymous)';
    const where = frame.url ? `${shortUrl(frame.url)}:${frame.lineNumber + 1}` : '';
    const key = `${name}@${where}`;
    const entry = self.get(key) ?? { name, where, us: 0 };
    entry.us += dt;
    self.set(key, entry);
    const a = area(frame);
    areas.set(a, (areas.get(a) ?? 0) + dt);
    // Inclusive time of agent frames on this stack (each counted once per sample).
    const seen = new Set<string>();
    for (let n: ProfileNode | undefined = node; n; n = n.parent === undefined ? undefined : byId.get(n.parent)) {
      if (!n.callFrame.url.includes('/agent/')) continue;
      const k = `${n.callFrame.functionName || '(anonymous)'}@${shortUrl(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
      if (seen.has(k)) continue;
      seen.add(k);
      inclusive.set(k, (inclusive.get(k) ?? 0) + dt);
    }
  }
  const share = (us: number): number => (busy > 0 ? us / busy : 0);
  const top = [...self.values()]
    .sort((a, b) => b.us - a.us)
    .slice(0, topN)
    .map((e) => ({ name: e.name, where: e.where, selfMs: e.us / 1000, share: share(e.us) }));
  const byArea = [...areas.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 10)
    .map(([name, us]) => ({ name, where: '', selfMs: us / 1000, share: share(us) }));
  const incl = [...inclusive.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 8)
    .map(([key, us]) => {
      const [name = '', where = ''] = key.split('@');
      return { name, where, selfMs: us / 1000, share: share(us) };
    });
  return { windowMs: (to - from) / 1000, busyMs: busy / 1000, top, byArea, inclusive: incl };
}
