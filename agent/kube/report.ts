import { createHash } from 'node:crypto';
import type { PreloadImageState, PreloadPhase } from '../preload/state.ts';
import { truncate } from './resources.ts';

/** Annotation on a node's report Lease: compact JSON `{ "<RegistryMirror name>": MirrorReport }`. */
export const REPORT_ANNOTATION = 'registry-proxy.dev/report';
/** Label of report Leases, so the leader watches them and not the leader Lease. */
export const REPORT_LABEL = 'registry-proxy.dev/node-report';

/** One node's state for one RegistryMirror. */
export interface MirrorReport {
  readonly ok: boolean;
  /** CamelCase, as a condition reason. */
  readonly reason: string;
  /** Why the node fails, at most 256 characters; empty when it is ready (the status never shows it). */
  readonly message: string;
  /** The RegistryMirror generation this state is for. */
  readonly generation: number;
  /**
   * The mirror's `preload` entries on this node; absent when it has none, or when the node does not
   * serve this RegistryMirror's spec (a problem: InvalidSpec, Conflict, …), whose entries would be
   * another spec's.
   */
  readonly preload?: PreloadReport;
}

/**
 * How much of a node's preload list its report carries: `all` entries; only those `unready` (every
 * entry not listed is ready, the report had to shrink); or `none`, counts only.
 */
export type PreloadListing = 'all' | 'unready' | 'none';

/** One preload entry as reported. */
export interface PreloadEntryReport {
  /** preloadKey(image): the entry without its text, which may be long. */
  readonly key: string;
  readonly phase: PreloadPhase;
  /** The manifest digest it resolved to (`sha256:…`, or its first 12 hex digits once reported). */
  readonly digest?: string;
  /** Why it failed (failed entries only, as far as the report has room). */
  readonly error?: string;
}

/** A node's preload entries of one mirror. */
export interface PreloadReport {
  readonly total: number;
  readonly ready: number;
  readonly failed: number;
  readonly listing: PreloadListing;
  /** In configuration order; with listing `unready` only the entries not ready, with `none` empty. */
  readonly entries: readonly PreloadEntryReport[];
}

export type NodeReport = Readonly<Record<string, MirrorReport>>;

/**
 * Upper bound for the annotation, so a node's report stays small however many RegistryMirrors there
 * are: every Lease write travels to the leader's watch, and 5,000 of them sit in etcd. Entries are
 * never dropped (a node missing from a RegistryMirror's report would vanish from its counts). When
 * the report does not fit, it gives up, in this order and only as far as needed (see LEVELS):
 * failure messages and preload errors are shortened to 64 characters; preload digests are left out;
 * ready preload entries are left out (only those not ready are listed); each mirror's preload part
 * keeps its 3, then its 1 most frequent error; messages and errors are left out; preload entries
 * give way to counts (total, ready, failed); finally the preload part is left out of as many
 * RegistryMirrors as needed, from the last name backwards (the leader then counts that node as not
 * ready for those images). Without messages and preload an entry is about 60 bytes plus the
 * RegistryMirror's name, so the bound holds for a couple of hundred RegistryMirrors; a preload part
 * is about 35 bytes as counts, and 20 bytes per image not ready when listed.
 */
export const REPORT_BUDGET_BYTES = 16 * 1024;

/** One way of shrinking the report, tried in turn until it fits. */
interface Level {
  /** Length of failure messages. */
  readonly message: number;
  /** Length of preload errors, and how many different ones each mirror's preload part keeps (the most frequent). */
  readonly error: number;
  readonly errors: number;
  readonly digests: boolean;
  readonly listing: PreloadListing;
}

const ALL = Number.POSITIVE_INFINITY;
const LEVELS: readonly Level[] = [
  { message: 256, error: 256, errors: ALL, digests: true, listing: 'all' },
  { message: 64, error: 64, errors: ALL, digests: true, listing: 'all' },
  { message: 64, error: 64, errors: ALL, digests: false, listing: 'all' },
  { message: 64, error: 64, errors: ALL, digests: false, listing: 'unready' },
  { message: 64, error: 64, errors: 3, digests: false, listing: 'unready' },
  { message: 64, error: 64, errors: 1, digests: false, listing: 'unready' },
  { message: 0, error: 0, errors: 0, digests: false, listing: 'unready' },
  { message: 0, error: 0, errors: 0, digests: false, listing: 'none' },
];

/** Reported digests: the first 12 hex digits, enough to tell whether nodes agree. */
const SHORT_DIGEST = 12;
const SHORT_DIGEST_PATTERN = /^[a-f0-9]{12}$/;
const KEY_PATTERN = /^[a-f0-9]{8}$/;
const PHASE_CODES: Readonly<Record<PreloadPhase, string>> = { ready: 'r', pending: 'p', failed: 'f' };
const PHASES: Readonly<Record<string, PreloadPhase>> = { r: 'ready', p: 'pending', f: 'failed' };
const LISTING_RANK: Readonly<Record<PreloadListing, number>> = { all: 0, unready: 1, none: 2 };

/**
 * A preload entry's key in reports: the first 8 hex digits of SHA-256 of the image as written in the
 * spec (trimmed). The leader computes the same from `spec.preload`, so entries match whatever their
 * order, and a report does not repeat image references of up to 512 characters.
 */
export function preloadKey(image: string): string {
  return createHash('sha256').update(image.trim()).digest('hex').slice(0, 8);
}

/** `sha256:3f2a…` → `3f2a9c1e0b7d` (a short one stays as it is). */
export function shortDigest(digest: string): string {
  return digest.replace(/^sha256:/, '').slice(0, SHORT_DIGEST);
}

/** A node's preload entries of one mirror, as its report carries them (before any shrinking). */
export function preloadReport(states: readonly PreloadImageState[]): PreloadReport {
  return {
    total: states.length,
    ready: states.filter((s) => s.phase === 'ready').length,
    failed: states.filter((s) => s.phase === 'failed').length,
    listing: 'all',
    entries: states.map((s) => ({
      key: preloadKey(s.image),
      phase: s.phase,
      ...(s.digest === undefined ? {} : { digest: s.digest }),
      ...(s.phase === 'failed' && s.error !== undefined && s.error !== '' ? { error: s.error } : {}),
    })),
  };
}

/** `rpa-node-<node>`, shortened with a hash when that would exceed an object name's 253 characters. */
export function reportLeaseName(node: string): string {
  const name = `rpa-node-${node}`;
  if (name.length <= 253) return name;
  const hash = createHash('sha256').update(node).digest('hex').slice(0, 10);
  return `rpa-node-${node.slice(0, 253 - 'rpa-node-'.length - 11).replace(/[.-]+$/, '')}-${hash}`;
}

/** A report annotation as written by any agent version; malformed entries are dropped. */
export function parseReport(text: string | undefined): NodeReport {
  if (text === undefined) return {};
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return {};
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return {};
  const out: Record<string, MirrorReport> = {};
  for (const [name, value] of Object.entries(doc as Record<string, unknown>)) {
    const r = value as Partial<Record<keyof MirrorReport, unknown>> | null;
    if (typeof r?.ok !== 'boolean' || typeof r.reason !== 'string' || typeof r.message !== 'string') continue;
    const preload = parsePreload((value as { preload?: unknown }).preload);
    out[name] = {
      ok: r.ok,
      reason: r.reason,
      message: truncate(r.message),
      generation: typeof r.generation === 'number' ? r.generation : 0,
      ...(preload === undefined ? {} : { preload }),
    };
  }
  return out;
}

/**
 * The wire form of PreloadReport: `{ "n": total, "r": ready, "f": failed, "i" | "u": [[key, phase,
 * digest, error index], …], "e": [error, …] }` — `i` lists every entry, `u` only those not ready,
 * neither: counts only. Phases are `r`, `p`, `f`; the digest is 12 hex digits or ''; errors are
 * listed once in `e` (many images often fail for the same reason) and referred to by index.
 */
function parsePreload(value: unknown): PreloadReport | undefined {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const doc = value as Record<string, unknown>;
  const count = (v: unknown): number | undefined => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : undefined);
  const total = count(doc['n']);
  const ready = count(doc['r']);
  const failed = count(doc['f']);
  if (total === undefined || ready === undefined || failed === undefined || ready + failed > total) return undefined;
  const listing: PreloadListing = Array.isArray(doc['i']) ? 'all' : Array.isArray(doc['u']) ? 'unready' : 'none';
  const errors = Array.isArray(doc['e']) ? doc['e'] : [];
  const entries: PreloadEntryReport[] = [];
  for (const item of (listing === 'all' ? doc['i'] : listing === 'unready' ? doc['u'] : []) as unknown[]) {
    if (!Array.isArray(item)) continue;
    const [key, code, digest, errorIndex] = item as unknown[];
    const phase = typeof code === 'string' ? PHASES[code] : undefined;
    if (typeof key !== 'string' || !KEY_PATTERN.test(key) || phase === undefined) continue;
    const error = typeof errorIndex === 'number' ? errors[errorIndex] : undefined;
    entries.push({
      key,
      phase,
      ...(typeof digest === 'string' && SHORT_DIGEST_PATTERN.test(digest) ? { digest } : {}),
      ...(phase === 'failed' && typeof error === 'string' && error !== '' ? { error: truncate(error) } : {}),
    });
  }
  return { total, ready, failed, listing, entries };
}

/**
 * The annotation text: sorted by name, so equal reports are equal text, and within
 * REPORT_BUDGET_BYTES where shrinking can achieve it (see REPORT_BUDGET_BYTES for the order). Every
 * key of the object form stays (a ready entry has an empty message), so leaders of older versions
 * still read it during a rollout; they ignore `preload`. A report parsed from an annotation encodes
 * to the same text again, so a restarted agent does not rewrite an unchanged report.
 */
export function encodeReport(report: ReadonlyMap<string, MirrorReport> | NodeReport): string {
  const entries = (report instanceof Map ? [...report] : Object.entries(report)).sort(([a], [b]) => a.localeCompare(b));
  const render = (level: Level, keepPreload: number): string => {
    let withPreload = 0;
    const doc = entries.map(([name, r]) => {
      const message = r.ok || level.message === 0 ? '' : truncate(r.message, level.message);
      const base = { ok: r.ok, reason: r.reason, message, generation: r.generation };
      if (r.preload === undefined || withPreload++ >= keepPreload) return [name, base] as const;
      return [name, { ...base, preload: encodePreload(r.preload, level) }] as const;
    });
    return JSON.stringify(Object.fromEntries(doc));
  };
  const fits = (text: string): boolean => Buffer.byteLength(text) <= REPORT_BUDGET_BYTES;
  const all = entries.length;
  for (const level of LEVELS) {
    const text = render(level, all);
    if (fits(text)) return text;
  }
  // Counts only, and still too large: the preload part of as many RegistryMirrors (in name order) as fit.
  const last = LEVELS[LEVELS.length - 1] as Level;
  let low = 0;
  let high = all;
  while (low < high) {
    const mid = Math.ceil((low + high) / 2);
    if (fits(render(last, mid))) low = mid;
    else high = mid - 1;
  }
  return render(last, low);
}

function encodePreload(p: PreloadReport, level: Level): Record<string, unknown> {
  const listing = LISTING_RANK[p.listing] > LISTING_RANK[level.listing] ? p.listing : level.listing;
  const out: Record<string, unknown> = { n: p.total, r: p.ready, f: p.failed };
  if (listing === 'none') return out;
  const listed = listing === 'all' ? p.entries : p.entries.filter((e) => e.phase !== 'ready');
  const errorOf = (e: PreloadEntryReport): string => (e.phase === 'failed' && e.error !== undefined && level.error > 0 ? truncate(e.error, level.error) : '');
  const kept = keptErrors(listed.map(errorOf), level.errors);
  const errors: string[] = [];
  out[listing === 'all' ? 'i' : 'u'] = listed.map((e) => {
    const tuple: Array<string | number> = [e.key, PHASE_CODES[e.phase], level.digests && e.digest !== undefined ? shortDigest(e.digest) : ''];
    const error = errorOf(e);
    if (kept.has(error)) {
      let index = errors.indexOf(error);
      if (index < 0) index = errors.push(error) - 1;
      tuple.push(index);
    }
    return tuple;
  });
  if (errors.length > 0) out['e'] = errors;
  return out;
}

/** The `max` most frequent errors (ties: the first listed); '' is no error. */
function keptErrors(errors: readonly string[], max: number): Set<string> {
  const counts = new Map<string, number>();
  for (const error of errors) if (error !== '') counts.set(error, (counts.get(error) ?? 0) + 1);
  if (counts.size <= max) return new Set(counts.keys());
  // Map order is first appearance; a stable sort keeps it among equals.
  return new Set([...counts].sort(([, a], [, b]) => b - a).slice(0, max).map(([error]) => error));
}

/**
 * What the damping looks at: per RegistryMirror ready or not, why, and for which generation, and each
 * preload entry's phase and digest; not the wording.
 */
export function reportState(report: ReadonlyMap<string, MirrorReport>): string {
  const preload = (p: PreloadReport | undefined): string =>
    p === undefined ? '' : p.entries.map((e) => `${e.key}${PHASE_CODES[e.phase]}${e.digest === undefined ? '' : shortDigest(e.digest)}`).join(',');
  return JSON.stringify([...report].map(([name, r]) => [name, r.ok, r.reason, r.generation, preload(r.preload)]).sort(([a], [b]) => String(a).localeCompare(String(b))));
}
