import { createHash } from 'node:crypto';
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
}

export type NodeReport = Readonly<Record<string, MirrorReport>>;

/**
 * Upper bound for the annotation, so a node's report stays small however many RegistryMirrors there
 * are: every Lease write travels to the leader's watch, and 5,000 of them sit in etcd. Entries are
 * never dropped (a node missing from a RegistryMirror's report would vanish from its counts); failure
 * messages are shortened, then left out, until the report fits. Without messages an entry is about
 * 60 bytes plus the RegistryMirror's name, so the bound holds for a couple of hundred RegistryMirrors.
 */
export const REPORT_BUDGET_BYTES = 16 * 1024;
/** Message lengths tried in turn when the report exceeds its budget. */
const MESSAGE_STEPS = [256, 64, 0] as const;

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
    out[name] = { ok: r.ok, reason: r.reason, message: truncate(r.message), generation: typeof r.generation === 'number' ? r.generation : 0 };
  }
  return out;
}

/**
 * The annotation text: sorted by name, so equal reports are equal text, and within
 * REPORT_BUDGET_BYTES where shortening messages can achieve it. Every key of the object form stays
 * (a ready entry has an empty message), so leaders of older versions still read it during a rollout.
 */
export function encodeReport(report: ReadonlyMap<string, MirrorReport> | NodeReport): string {
  const entries = (report instanceof Map ? [...report] : Object.entries(report)).sort(([a], [b]) => a.localeCompare(b));
  let text = '';
  for (const max of MESSAGE_STEPS) {
    const doc = entries.map(([name, r]) => [name, { ok: r.ok, reason: r.reason, message: r.ok || max === 0 ? '' : truncate(r.message, max), generation: r.generation }] as const);
    text = JSON.stringify(Object.fromEntries(doc));
    if (Buffer.byteLength(text) <= REPORT_BUDGET_BYTES) break;
  }
  return text;
}

/** What the damping looks at: per RegistryMirror ready or not, why, and for which generation; not the wording. */
export function reportState(report: ReadonlyMap<string, MirrorReport>): string {
  return JSON.stringify([...report].map(([name, r]) => [name, r.ok, r.reason, r.generation]).sort(([a], [b]) => String(a).localeCompare(String(b))));
}
