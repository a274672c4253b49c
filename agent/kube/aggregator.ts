import type { V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { type KubeClient, messageOf, paths, statusOf, withTimeout } from './client.ts';
import { type Backoff, ResilientInformer } from './informer.ts';
import { type MirrorReport, type NodeReport, type PreloadEntryReport, REPORT_ANNOTATION, REPORT_LABEL, parseReport, preloadKey } from './report.ts';
import {
  API_VERSION,
  type Condition,
  type FailingNode,
  KIND,
  type PreloadStatus,
  REGISTRY_MIRRORS_PATH,
  type RegistryMirror,
  type RegistryMirrorStatus,
  nameOf,
  nowTime,
  truncate,
} from './resources.ts';
import { transitionEvent } from './status-event.ts';

export interface AggregatorOptions {
  /** Status is computed, and applied where it changed, at most this often (default 10 s). */
  readonly intervalMs?: number;
  /** Reports not renewed for this long are from nodes that are gone (default 30 min). */
  readonly staleMs?: number;
  readonly backoff?: Backoff;
}

interface Deps {
  readonly client: KubeClient;
  readonly namespace: string;
  /** This agent's node: named in the Events it creates. */
  readonly nodeName: string;
  readonly log: Logger;
  /** The RegistryMirrors as the agent's informer knows them. */
  readonly registryMirrors: () => readonly RegistryMirror[];
  readonly options: AggregatorOptions;
}

interface ParsedLease {
  readonly rv: string;
  readonly node: string;
  readonly renewedAt: number;
  readonly report: NodeReport;
}

const MAX_FAILING_NODES = 10;
/** The CRD's spec.preload maxItems: status.preload has one entry per spec image, no more. */
const MAX_PRELOAD_IMAGES = 100;
const EVENT_TIMEOUT_MS = 10_000;
const REASON = /^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$/;

/** The status the leader wants, without lastTransitionTime (which only follows a change of `ready`). */
export interface DesiredStatus {
  readonly observedGeneration: number;
  readonly ready: { readonly status: 'True' | 'False'; readonly reason: string; readonly message: string };
  readonly nodes: { readonly ready: number; readonly failing: number; readonly failingNodes: readonly FailingNode[] };
  /** Present when the spec has preload images. */
  readonly preload?: readonly PreloadStatus[];
  readonly preloadSummary?: string;
}

/**
 * The leader's job: fold the per-node report Leases into each RegistryMirror's status. It is the only
 * writer of that status (server-side apply, field manager `registry-proxy-agent`, forced), it writes a
 * RegistryMirror only when the folded result differs from what the object already says, and it does
 * so at most once per interval, whatever the number of nodes. When a write changes the Ready
 * condition's status or reason it creates one Event (see transitionEvent); the previous condition is
 * read from the object, so a new leader announces nothing that was already announced.
 */
export class StatusAggregator {
  readonly #d: Deps;
  readonly #intervalMs: number;
  readonly #staleMs: number;
  readonly #leases: ResilientInformer<V1Lease>;
  readonly #parsed = new Map<string, ParsedLease>();
  /** Per RegistryMirror: what we applied last, and its resourceVersion before, to tell a lagging informer from a changed object. */
  readonly #applied = new Map<string, { rvBefore: string | undefined; status: RegistryMirrorStatus }>();
  #timer: NodeJS.Timeout | undefined;
  #running = false;

  constructor(deps: Deps) {
    this.#d = deps;
    this.#intervalMs = deps.options.intervalMs ?? 10_000;
    this.#staleMs = deps.options.staleMs ?? 1_800_000;
    this.#leases = new ResilientInformer<V1Lease>({
      client: deps.client,
      path: paths.leases(deps.namespace),
      labelSelector: `${REPORT_LABEL}=true`,
      what: 'node report leases',
      log: deps.log,
      onChange: () => undefined,
      ...(deps.options.backoff === undefined ? {} : { backoff: deps.options.backoff }),
    });
  }

  start(): void {
    this.#leases.start();
    clearInterval(this.#timer);
    this.#timer = setInterval(() => void this.reconcileAll(), this.#intervalMs);
    this.#timer.unref();
  }

  /** Resolves true once the report Leases have been listed, false when `timeoutMs` passes first. */
  whenSynced(timeoutMs: number): Promise<boolean> {
    return this.#leases.whenSynced(timeoutMs);
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#applied.clear();
    await this.#leases.stop();
  }

  /** One aggregation pass over every RegistryMirror (the interval timer runs it; a pass already running is not doubled). */
  async reconcileAll(): Promise<void> {
    if (this.#running || !this.#leases.synced) return;
    this.#running = true;
    try {
      const reports = this.#reports();
      for (const rm of this.#d.registryMirrors()) await this.#reconcile(rm, reports);
    } finally {
      this.#running = false;
    }
  }

  /** Fresh reports per RegistryMirror name: node → report. */
  #reports(): Map<string, Array<{ node: string; report: MirrorReport }>> {
    const now = Date.now();
    const byMirror = new Map<string, Array<{ node: string; report: MirrorReport }>>();
    const seen = new Set<string>();
    for (const lease of this.#leases.list()) {
      const parsed = this.#parse(lease);
      seen.add(nameOf(lease));
      if (parsed === undefined || now - parsed.renewedAt > this.#staleMs) continue;
      for (const [name, report] of Object.entries(parsed.report)) {
        const list = byMirror.get(name) ?? [];
        list.push({ node: parsed.node, report });
        byMirror.set(name, list);
      }
    }
    for (const name of this.#parsed.keys()) if (!seen.has(name)) this.#parsed.delete(name);
    return byMirror;
  }

  /** Parsed once per resourceVersion: 5,000 Leases are re-read every interval, not re-parsed. */
  #parse(lease: V1Lease): ParsedLease | undefined {
    const name = nameOf(lease);
    const rv = lease.metadata?.resourceVersion ?? '';
    const cached = this.#parsed.get(name);
    if (cached?.rv === rv) return cached;
    const node = lease.spec?.holderIdentity;
    const renewedAt = Date.parse(String(lease.spec?.renewTime ?? ''));
    if (node === undefined || node === '' || Number.isNaN(renewedAt)) return undefined;
    const parsed = { rv, node, renewedAt, report: parseReport(lease.metadata?.annotations?.[REPORT_ANNOTATION]) };
    this.#parsed.set(name, parsed);
    return parsed;
  }

  async #reconcile(rm: RegistryMirror, reports: ReadonlyMap<string, Array<{ node: string; report: MirrorReport }>>): Promise<void> {
    const name = nameOf(rm);
    const generation = rm.metadata?.generation ?? 0;
    const mine = reports.get(name) ?? [];
    const desired = { ...aggregate(generation, mine), ...aggregatePreload(specPreloadImages(rm), generation, mine) };
    const rv = rm.metadata?.resourceVersion;
    const last = this.#applied.get(name);
    // Until the informer shows our last write, that write is what the object says.
    const live = last !== undefined && last.rvBefore === rv ? last.status : rm.status;
    if (sameStatus(live, desired)) return;
    const status = render(desired, live);
    try {
      await this.#d.client.apply(`${REGISTRY_MIRRORS_PATH}/${encodeURIComponent(name)}/status`, { apiVersion: API_VERSION, kind: KIND, metadata: { name }, status });
      this.#applied.set(name, { rvBefore: rv, status });
      this.#d.log.debug({ registryMirror: name, ready: desired.nodes.ready, failing: desired.nodes.failing }, 'RegistryMirror status applied');
    } catch (error) {
      if (statusOf(error) === 404) return; // deleted meanwhile
      this.#d.log.warn({ registryMirror: name, err: messageOf(error) }, 'cannot apply RegistryMirror status: retrying next interval');
      return;
    }
    await this.#announce(rm, readyOf(live), desired);
  }

  /** At most one Event per applied status; a lost Event is not retried (the status says it all). */
  async #announce(rm: RegistryMirror, before: Condition | undefined, desired: DesiredStatus): Promise<void> {
    const event = transitionEvent(rm, before, desired, this.#d.nodeName, new Date());
    if (event === undefined) return;
    try {
      await withTimeout(this.#d.client.create(paths.events('default'), event), EVENT_TIMEOUT_MS, 'create event');
    } catch (error) {
      this.#d.log.warn({ registryMirror: nameOf(rm), err: messageOf(error) }, 'cannot create the Event for a RegistryMirror Ready change');
    }
  }
}

/** Folds the nodes' reports on one RegistryMirror. */
export function aggregate(generation: number, reports: ReadonlyArray<{ node: string; report: MirrorReport }>): DesiredStatus {
  const failing = reports.filter((r) => !r.report.ok).sort((a, b) => a.node.localeCompare(b.node));
  const ready = reports.length - failing.length;
  const failingNodes = failing.slice(0, MAX_FAILING_NODES).map(({ node, report }) => ({ node, reason: reason(report.reason), message: truncate(report.message) }));
  // The oldest generation any node has evaluated: what the whole status stands for.
  const observedGeneration = reports.length === 0 ? generation : Math.min(...reports.map((r) => r.report.generation));
  const first = failingNodes[0];
  let condition: DesiredStatus['ready'];
  if (reports.length === 0) condition = { status: 'False', reason: 'NoReports', message: 'no node has reported on this RegistryMirror yet' };
  else if (first === undefined) condition = { status: 'True', reason: 'AllNodesReady', message: `${ready} of ${ready} nodes serve this mirror` };
  else {
    condition = {
      status: 'False',
      reason: mostCommon(failing.map((f) => reason(f.report.reason))),
      message: truncate(`${failing.length} of ${reports.length} nodes failing; ${first.node}: ${first.reason}: ${first.message}`, 1024),
    };
  }
  return { observedGeneration, ready: condition, nodes: { ready, failing: failing.length, failingNodes } };
}

/** Whether the object's status already says what `desired` says (lastTransitionTime aside). */
export function sameStatus(status: RegistryMirrorStatus | undefined, desired: DesiredStatus): boolean {
  if (status === undefined || status.observedGeneration !== desired.observedGeneration) return false;
  const c = readyOf(status);
  if (c === undefined || c.status !== desired.ready.status || c.reason !== desired.ready.reason || c.message !== desired.ready.message) return false;
  if (c.observedGeneration !== desired.observedGeneration) return false;
  const nodes = status.nodes;
  return (
    nodes !== undefined &&
    nodes.ready === desired.nodes.ready &&
    nodes.failing === desired.nodes.failing &&
    sameFailingNodes(nodes.failingNodes ?? [], desired.nodes.failingNodes) &&
    status.preloadSummary === desired.preloadSummary &&
    samePreload(status.preload, desired.preload)
  );
}

/** Field by field, absent and empty alike. */
function samePreload(a: readonly PreloadStatus[] | undefined, b: readonly PreloadStatus[] | undefined): boolean {
  const text = (list: readonly PreloadStatus[] | undefined): string[] =>
    (list ?? []).map((p) => JSON.stringify([p.image, p.nodesReady, p.nodesFailed ?? 0, p.nodesTotal, p.digest ?? '', p.lastError ?? '']));
  return JSON.stringify(text(a)) === JSON.stringify(text(b));
}

/** Field by field: the API server returns object keys in its own order. */
function sameFailingNodes(a: readonly FailingNode[], b: readonly FailingNode[]): boolean {
  const text = (list: readonly FailingNode[]): string[] => list.map((n) => JSON.stringify([n.node, n.reason, n.message ?? '']));
  return JSON.stringify(text(a)) === JSON.stringify(text(b));
}

function readyOf(status: RegistryMirrorStatus | undefined): Condition | undefined {
  return status?.conditions?.find((c) => c.type === 'Ready');
}

function render(desired: DesiredStatus, live: RegistryMirrorStatus | undefined): RegistryMirrorStatus {
  const previous = readyOf(live);
  const condition: Condition = {
    type: 'Ready',
    ...desired.ready,
    observedGeneration: desired.observedGeneration,
    lastTransitionTime: previous?.status === desired.ready.status ? previous.lastTransitionTime : nowTime(),
  };
  return {
    observedGeneration: desired.observedGeneration,
    conditions: [condition],
    nodes: { ...desired.nodes },
    ...(desired.preload === undefined ? {} : { preload: desired.preload }),
    ...(desired.preloadSummary === undefined ? {} : { preloadSummary: desired.preloadSummary }),
  };
}

/** A report's reason as the CRD admits it (condition and failingNodes reason pattern, 64 characters). */
function reason(text: string): string {
  const cleaned = text.replace(/[^A-Za-z0-9_,:]/g, '').slice(0, 64);
  return REASON.test(cleaned) ? cleaned : 'Unknown';
}

function mostCommon(values: readonly string[]): string {
  const counts = new Map<string, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts].sort(([a, x], [b, y]) => y - x || a.localeCompare(b))[0]?.[0] ?? 'Unknown';
}

/** The images of `spec.preload` as written (trimmed), at most 100, each once; [] without preload. */
export function specPreloadImages(rm: RegistryMirror): string[] {
  const list = rm.spec?.['preload'];
  if (!Array.isArray(list)) return [];
  const images = list.flatMap((item: unknown): string[] => {
    const image = typeof item === 'string' ? item : typeof item === 'object' && item !== null ? (item as { image?: unknown }).image : undefined;
    return typeof image === 'string' && image.trim() !== '' ? [image.trim()] : [];
  });
  return [...new Set(images)].slice(0, MAX_PRELOAD_IMAGES);
}

/**
 * Folds the nodes' preload entries into one status entry per spec image. Entries match by
 * preloadKey, so a node still on an older generation counts for the images both lists share. A node
 * whose report lists only its entries that are not ready (or only counts: it had to shrink) counts
 * as ready for the others only when it reports on this generation with as many entries as the spec
 * has; otherwise, and when its report has no preload part (it does not serve this spec), it counts
 * in nodesTotal only.
 */
export function aggregatePreload(
  images: readonly string[],
  generation: number,
  reports: ReadonlyArray<{ node: string; report: MirrorReport }>,
): Pick<DesiredStatus, 'preload' | 'preloadSummary'> {
  if (images.length === 0) return {};
  const keys = images.map(preloadKey);
  const acc = images.map(() => ({ ready: 0, failed: 0, digests: new Set<string>(), failures: [] as Array<{ node: string; error: string }> }));
  for (const { node, report } of reports) {
    const p = report.preload;
    if (p === undefined) continue;
    const byKey = new Map<string, PreloadEntryReport>(p.entries.map((e) => [e.key, e]));
    const current = report.generation === generation && p.total === images.length;
    const othersReady = current && (p.listing === 'unready' || (p.listing === 'none' && p.ready === p.total));
    keys.forEach((key, i) => {
      const a = acc[i];
      if (a === undefined) return;
      const entry = byKey.get(key);
      if (entry?.digest !== undefined) a.digests.add(entry.digest.replace(/^sha256:/, '').slice(0, 12));
      const phase = entry?.phase ?? (othersReady ? 'ready' : undefined);
      if (phase === 'ready') a.ready++;
      if (phase === 'failed') {
        a.failed++;
        a.failures.push({ node, error: entry?.error ?? '' });
      }
    });
  }
  const total = reports.length;
  const preload = images.map((image, i): PreloadStatus => {
    const a = acc[i] ?? { ready: 0, failed: 0, digests: new Set<string>(), failures: [] };
    const [digest] = a.digests;
    const lastError = preloadError(a.failures);
    return {
      image,
      nodesReady: a.ready,
      nodesFailed: a.failed,
      nodesTotal: total,
      ...(digest === undefined ? {} : { digest: a.digests.size === 1 ? `sha256:${digest}` : 'mixed' }),
      ...(lastError === undefined ? {} : { lastError }),
    };
  });
  return { preload, preloadSummary: preloadSummary(preload, total) };
}

/** `<node>: <error>` for the most common error (ties: the first in text order), named by its first node. */
function preloadError(failures: ReadonlyArray<{ node: string; error: string }>): string | undefined {
  if (failures.length === 0) return undefined;
  const described = failures.filter((f) => f.error !== '');
  if (described.length === 0) {
    const node = failures.map((f) => f.node).sort()[0] ?? '';
    return truncate(`${node}: failed (its report had no room for the message)`);
  }
  const error = mostCommon(described.map((f) => f.error));
  const node = described.filter((f) => f.error === error).map((f) => f.node).sort()[0] ?? '';
  return truncate(`${node}: ${error}`);
}

/** `3/5 images on all 4 nodes, 1 failing`: for the Preloaded printer column. */
function preloadSummary(preload: readonly PreloadStatus[], nodes: number): string {
  const images = preload.length;
  const unit = images === 1 ? 'image' : 'images';
  if (nodes === 0) return `0/${images} ${unit}: no node has reported`;
  const everywhere = preload.filter((p) => p.nodesReady === nodes).length;
  const failing = preload.filter((p) => p.nodesFailed > 0).length;
  return `${everywhere}/${images} ${unit} on all ${nodes} node${nodes === 1 ? '' : 's'}${failing === 0 ? '' : `, ${failing} failing`}`;
}
