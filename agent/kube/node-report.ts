import { createHash } from 'node:crypto';
import { V1MicroTime, type V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { WiringState } from '../containerd/wiring.ts';
import type { AgentRuntime } from '../runtime.ts';
import { type KubeClients, messageOf, statusOf, withTimeout } from './client.ts';
import type { MirrorState } from './mirror-source.ts';
import { API_VERSION, FIELD_MANAGER, KIND, type Problem, type RegistryMirror, pascalCase, truncate } from './resources.ts';

/** Annotation on a node's report Lease: compact JSON `{ "<RegistryMirror name>": MirrorReport }`. */
export const REPORT_ANNOTATION = 'registry-proxy.dev/report';
/** Label of report Leases, so the leader watches them and not the leader Lease. */
export const REPORT_LABEL = 'registry-proxy.dev/node-report';

/** One node's state for one RegistryMirror. */
export interface MirrorReport {
  readonly ok: boolean;
  /** CamelCase, as a condition reason. */
  readonly reason: string;
  /** At most 256 characters. */
  readonly message: string;
  /** The RegistryMirror generation this state is for. */
  readonly generation: number;
}

export type NodeReport = Readonly<Record<string, MirrorReport>>;

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

/** Sorted by name, so equal reports are equal text. */
function reportText(report: ReadonlyMap<string, MirrorReport>): string {
  return JSON.stringify(Object.fromEntries([...report].sort(([a], [b]) => a.localeCompare(b))));
}

export interface ReportSource {
  readonly synced: boolean;
  states(): readonly MirrorState[];
  registryMirror(name: string): RegistryMirror | undefined;
}

export type NodeView = Pick<AgentRuntime, 'wiring' | 'metrics' | 'config'>;

export interface NodeReporterOptions {
  /** Local re-evaluation period (hosts.toml, containerd verdict, upstream probe); reads no API (default 10 s). */
  readonly intervalMs?: number;
  /** Rewrite an unchanged report this often, so a live node's report is told from a gone node's (default 10 min). */
  readonly renewMs?: number;
  /** Written as the report Lease's duration: after this a report counts as gone (default 30 min). */
  readonly staleMs?: number;
}

interface Deps {
  readonly clients: KubeClients;
  readonly namespace: string;
  readonly nodeName: string;
  readonly source: ReportSource;
  readonly runtime: NodeView;
  readonly log: Logger;
  readonly options: NodeReporterOptions;
}

const API_TIMEOUT_MS = 10_000;

/**
 * This node's report: one Lease `rpa-node-<node>` that only this agent writes, rewritten only when the
 * report changes (plus a renewal every `renewMs`), and an Event on the RegistryMirror when this node's
 * own state for it changes (ready ↔ failing, or another failure reason). See kubernetes.ts for why this
 * holds at 5,000 nodes.
 */
export class NodeReporter {
  readonly #d: Deps;
  readonly #leaseName: string;
  readonly #renewMs: number;
  readonly #staleMs: number;
  readonly #intervalMs: number;
  #lease: V1Lease | undefined;
  /** The report text in the API server, as far as we know. */
  #written: string | undefined;
  #writtenAt = 0;
  /** Per RegistryMirror, the state last announced by an Event (or found in our report at start). */
  #announced = new Map<string, MirrorReport>();
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #again = false;
  #failing = false;
  #stopped = false;

  constructor(deps: Deps) {
    this.#d = deps;
    this.#leaseName = reportLeaseName(deps.nodeName);
    this.#intervalMs = deps.options.intervalMs ?? 10_000;
    this.#renewMs = deps.options.renewMs ?? 600_000;
    this.#staleMs = deps.options.staleMs ?? 1_800_000;
  }

  get leaseName(): string {
    return this.#leaseName;
  }

  /** Reads our previous report (a restart changes nothing and announces nothing), then evaluates periodically. */
  async start(): Promise<void> {
    try {
      const lease = await withTimeout(this.#d.clients.coordination.readNamespacedLease({ name: this.#leaseName, namespace: this.#d.namespace }), API_TIMEOUT_MS, 'read report lease');
      this.#adopt(lease);
      this.#announced = new Map(Object.entries(parseReport(this.#written)));
    } catch (error) {
      if (statusOf(error) !== 404) this.#d.log.debug({ err: messageOf(error) }, 'cannot read the previous node report: it is rewritten when the API answers');
    }
    this.#timer = setInterval(() => void this.evaluate(), this.#intervalMs);
    this.#timer.unref();
    await this.evaluate();
  }

  /** Recomputes the report; writes and announces only what changed. Concurrent calls coalesce. */
  evaluate(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    this.#running = (async () => {
      do {
        this.#again = false;
        await this.#evaluateOnce();
      } while (this.#again && !this.#stopped);
    })().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    await this.#running;
  }

  async #evaluateOnce(): Promise<void> {
    // Before the first list the states are unknown; an empty report would erase the real one.
    if (!this.#d.source.synced) return;
    const report = await this.#compute();
    await this.#announce(report);
    const text = reportText(report);
    if (text !== this.#written || Date.now() - this.#writtenAt >= this.#renewMs) await this.#write(text);
  }

  async #compute(): Promise<Map<string, MirrorReport>> {
    const { runtime } = this.#d;
    const up = await upstreamUp(runtime);
    const out = new Map<string, MirrorReport>();
    for (const state of this.#d.source.states()) {
      const verdict = state.problem ?? nodeProblem(state.registry ?? '', runtime.wiring, runtime.config.manageHosts, up);
      out.set(state.name, {
        ok: verdict === undefined,
        reason: verdict?.reason ?? 'Ready',
        message: truncate(verdict?.message ?? `node ${this.#d.nodeName} serves ${state.registry ?? ''} and containerd uses it`),
        generation: state.generation,
      });
    }
    return out;
  }

  /** An Event per RegistryMirror whose state on this node changed; a first state that is fine is no news. */
  async #announce(report: ReadonlyMap<string, MirrorReport>): Promise<void> {
    const previous = this.#announced;
    this.#announced = new Map(report);
    for (const [name, now] of report) {
      const before = previous.get(name);
      const changed = before === undefined ? !now.ok : before.ok !== now.ok || before.reason !== now.reason;
      if (changed) await this.#event(name, now);
    }
  }

  async #event(name: string, report: MirrorReport): Promise<void> {
    const node = this.#d.nodeName;
    const rm = this.#d.source.registryMirror(name);
    const now = new Date();
    const message = report.ok ? `node ${node}: ready: ${report.message}` : `node ${node}: ${report.reason}: ${report.message}`;
    try {
      await withTimeout(
        this.#d.clients.core.createNamespacedEvent({
          // Events about cluster-scoped objects live in "default".
          namespace: 'default',
          fieldManager: FIELD_MANAGER,
          body: {
            metadata: { generateName: `${name.slice(0, 200)}.` },
            involvedObject: { apiVersion: API_VERSION, kind: KIND, name, ...(rm?.metadata?.uid === undefined ? {} : { uid: rm.metadata.uid }) },
            reason: report.ok ? 'NodeReady' : 'NodeFailing',
            message,
            type: report.ok ? 'Normal' : 'Warning',
            source: { component: FIELD_MANAGER, host: node },
            reportingComponent: FIELD_MANAGER,
            reportingInstance: node,
            firstTimestamp: now,
            lastTimestamp: now,
            count: 1,
          },
        }),
        API_TIMEOUT_MS,
        'create event',
      );
    } catch (error) {
      this.#d.log.warn({ registryMirror: name, err: messageOf(error) }, 'cannot create the Event for this node\'s state change');
    }
  }

  async #write(text: string): Promise<void> {
    const { coordination } = this.#d.clients;
    const namespace = this.#d.namespace;
    const body = (resourceVersion: string | undefined): V1Lease => ({
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: {
        name: this.#leaseName,
        namespace,
        labels: { [REPORT_LABEL]: 'true' },
        annotations: { [REPORT_ANNOTATION]: text },
        ...(resourceVersion === undefined ? {} : { resourceVersion }),
      },
      spec: { holderIdentity: this.#d.nodeName, leaseDurationSeconds: Math.ceil(this.#staleMs / 1000), renewTime: new V1MicroTime() },
    });
    const replace = (lease: V1Lease): Promise<V1Lease> =>
      coordination.replaceNamespacedLease({ name: this.#leaseName, namespace, fieldManager: FIELD_MANAGER, body: body(lease.metadata?.resourceVersion) });
    try {
      let written: V1Lease;
      try {
        written = await withTimeout(
          this.#lease === undefined ? coordination.createNamespacedLease({ namespace, fieldManager: FIELD_MANAGER, body: body(undefined) }) : replace(this.#lease),
          API_TIMEOUT_MS,
          'write report lease',
        );
      } catch (error) {
        // Only this agent writes this Lease; a conflict means our copy is old (a restart, a lost answer).
        if (statusOf(error) !== 409) throw error;
        const current = await coordination.readNamespacedLease({ name: this.#leaseName, namespace });
        written = await withTimeout(replace(current), API_TIMEOUT_MS, 'write report lease');
      }
      this.#adopt(written);
      this.#written = text;
      if (this.#failing) this.#d.log.info('node report written again');
      this.#failing = false;
    } catch (error) {
      if (!this.#failing) this.#d.log.warn({ lease: this.#leaseName, err: messageOf(error) }, 'cannot write the node report: retrying');
      this.#failing = true;
    }
  }

  #adopt(lease: V1Lease): void {
    this.#lease = lease;
    this.#written = reportText(new Map(Object.entries(parseReport(lease.metadata?.annotations?.[REPORT_ANNOTATION]))));
    const renewed = Date.parse(String(lease.spec?.renewTime ?? ''));
    this.#writtenAt = Number.isNaN(renewed) ? 0 : renewed;
  }
}

/** Why this node does not serve `registry` through containerd, or undefined when it does. */
function nodeProblem(registry: string, wiring: WiringState | undefined, manageHosts: boolean, up: ReadonlyMap<string, number>): Problem | undefined {
  if (wiring === undefined) return { reason: 'Pending', message: 'containerd wiring not checked yet' };
  const hosts = wiring.hosts.find((h) => h.registry === registry);
  if (manageHosts && hosts === undefined) return { reason: 'Pending', message: `hosts.toml for ${registry} not written yet` };
  if (hosts?.state === 'admin_file_invalid') return { reason: 'HostsFileInvalid', message: hosts.message ?? `the admin's hosts.toml for ${registry} does not parse` };
  if (hosts?.state === 'error') return { reason: 'HostsFileError', message: hosts.message ?? `cannot write hosts.toml for ${registry}` };
  if (!wiring.containerd.ok) return { reason: pascalCase(wiring.containerd.state), message: wiring.containerd.message };
  if (up.get(registry) === 0) return { reason: 'UpstreamUnreachable', message: `the periodic GET /v2/ to ${registry}'s upstream fails` };
  return undefined;
}

/** registry → registry_proxy_upstream_up (1 or 0); registries not probed yet are absent. */
async function upstreamUp(runtime: NodeView): Promise<Map<string, number>> {
  const { values } = await runtime.metrics.upstreamUp.get();
  return new Map(values.map((v) => [String(v.labels.registry), v.value]));
}
