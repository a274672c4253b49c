import { V1MicroTime, type V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { AgentConfig } from '../config/types.ts';
import type { WiringState } from '../containerd/wiring.ts';
import type { PreloadImageState } from '../preload/state.ts';
import { type KubeClient, messageOf, paths, statusOf, withTimeout } from './client.ts';
import { type Clock, type DamperOptions, ReportDamper, SYSTEM_CLOCK } from './damper.ts';
import type { MirrorState } from './mirror-source.ts';
import { type MirrorReport, REPORT_ANNOTATION, REPORT_LABEL, encodeReport, parseReport, preloadReport, reportLeaseName, reportState } from './report.ts';
import { type Problem, pascalCase, truncate } from './resources.ts';

export interface ReportSource {
  readonly synced: boolean;
  states(): readonly MirrorState[];
}

/** What the report is made of: the runtime's containerd wiring, upstream probes and configuration. */
export interface NodeView {
  readonly wiring: WiringState | undefined;
  readonly config: Pick<AgentConfig, 'manageHosts'>;
  /**
   * Why the last upstream probe found `registry`'s upstream unreachable (an upstream error cause and
   * words with the fix); undefined while it is reachable or not probed yet.
   */
  upstreamProblem(registry: string): { cause: string; detail: string } | undefined;
  /**
   * This node's `preload` entries of the mirror for `registry`, in configuration order (the
   * runtime's preloadStates). Optional: without it reports carry no preload part.
   */
  preloadStates?(registry: string): readonly PreloadImageState[];
}

/**
 * Status reasons for probe failures whose fix is not "look at the upstream": the route's own
 * causes, so `kubectl get registrymirrors` already says whether the Cloud Connector, the
 * Connectivity Proxy or a forward proxy is what fails on those nodes.
 */
const UPSTREAM_REASONS: Readonly<Record<string, string>> = {
  cp_https_refused: 'ConnectivityProxyHttpsRefused',
  cp_auth_failed: 'ConnectivityProxyAuthFailed',
  cp_no_cloud_connector: 'CloudConnectorUnavailable',
  cp_denied: 'CloudConnectorAccessDenied',
  cp_unreachable: 'ConnectivityProxyUnreachable',
  proxy_unreachable: 'HttpProxyUnreachable',
  proxy_refused: 'HttpProxyRefused',
  tls: 'UpstreamTlsFailed',
};

export interface NodeReporterOptions extends DamperOptions {
  /** Local re-evaluation period (hosts.toml, containerd verdict, upstream probe); reads no API (default 10 s). */
  readonly intervalMs?: number;
  /** Rewrite an unchanged report this often, so a live node's report is told from a gone node's (default 10 min). */
  readonly renewMs?: number;
  /** Written as the report Lease's duration: after this a report counts as gone (default 30 min). */
  readonly staleMs?: number;
  readonly clock?: Clock;
}

interface Deps {
  readonly client: KubeClient;
  readonly namespace: string;
  readonly nodeName: string;
  readonly source: ReportSource;
  readonly runtime: NodeView;
  readonly log: Logger;
  readonly options: NodeReporterOptions;
}

const API_TIMEOUT_MS = 10_000;

/**
 * This node's report: one Lease `rpa-node-<node>` that only this agent writes. A changed report is
 * written once it has settled (see ReportDamper), an unchanged one is renewed every `renewMs`. Nodes
 * create no Events: the leader announces changes of the folded status, once for all nodes. See
 * kubernetes.ts for why this holds at 5,000 nodes.
 */
export class NodeReporter {
  readonly #d: Deps;
  readonly #leaseName: string;
  readonly #renewMs: number;
  readonly #staleMs: number;
  readonly #intervalMs: number;
  readonly #clock: Clock;
  readonly #damper: ReportDamper;
  #lease: V1Lease | undefined;
  /** The report text in the API server, as far as we know. */
  #written: string | undefined;
  #writtenAt = 0;
  #timer: NodeJS.Timeout | undefined;
  /** Cancels the wake-up at the end of a settle time. */
  #cancelWake: (() => void) | undefined;
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
    this.#clock = deps.options.clock ?? SYSTEM_CLOCK;
    this.#damper = new ReportDamper(deps.options);
  }

  get leaseName(): string {
    return this.#leaseName;
  }

  /** Reads our previous report (a restart with the same state writes nothing), then evaluates periodically. */
  async start(): Promise<void> {
    try {
      const lease = await withTimeout(this.#d.client.get<V1Lease>(paths.leases(this.#d.namespace, this.#leaseName)), API_TIMEOUT_MS, 'read report lease');
      this.#adopt(lease);
    } catch (error) {
      if (statusOf(error) !== 404) this.#d.log.debug({ err: messageOf(error) }, 'cannot read the previous node report: it is rewritten when the API answers');
    }
    this.#timer = setInterval(() => void this.evaluate(), this.#intervalMs);
    this.#timer.unref();
    await this.evaluate();
  }

  /** Recomputes the report; writes it when it has settled or is due for renewal. Concurrent calls coalesce. */
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
    this.#cancelWake?.();
    await this.#running;
  }

  async #evaluateOnce(): Promise<void> {
    // Before the first list the states are unknown; an empty report would erase the real one.
    if (!this.#d.source.synced) return;
    const report = await this.#compute();
    const text = encodeReport(report);
    const now = this.#clock.now();
    const decision = this.#damper.decide(this.#written, text, reportState(report), now);
    this.#cancelWake?.();
    this.#cancelWake = undefined;
    if (decision.kind === 'write') await this.#write(text);
    else if (this.#written !== undefined && now - this.#writtenAt >= this.#renewMs) await this.#write(this.#written);
    // Settling is checked again at its end, not only at the next periodic evaluation.
    if (decision.kind === 'wait' && !this.#stopped) this.#cancelWake = this.#clock.after(decision.until - now, () => void this.evaluate());
  }

  async #compute(): Promise<Map<string, MirrorReport>> {
    const { runtime } = this.#d;
    const out = new Map<string, MirrorReport>();
    for (const state of this.#d.source.states()) {
      const verdict = state.problem ?? nodeProblem(state.registry ?? '', runtime);
      // Only for a RegistryMirror this node serves as specified: with a problem, the registry's
      // entries are those of a previous version or of the file's mirror.
      const preload = state.problem === undefined && state.registry !== undefined ? (runtime.preloadStates?.(state.registry) ?? []) : [];
      out.set(state.name, {
        ok: verdict === undefined,
        reason: verdict?.reason ?? 'Ready',
        message: verdict === undefined ? '' : truncate(verdict.message),
        generation: state.generation,
        ...(preload.length === 0 ? {} : { preload: preloadReport(preload) }),
      });
    }
    return out;
  }

  async #write(text: string): Promise<void> {
    const { client, namespace } = this.#d;
    const path = paths.leases(namespace, this.#leaseName);
    const now = this.#clock.now();
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
      spec: { holderIdentity: this.#d.nodeName, leaseDurationSeconds: Math.ceil(this.#staleMs / 1000), renewTime: new V1MicroTime(now) },
    });
    const replace = (lease: V1Lease): Promise<V1Lease> => client.replace(path, body(lease.metadata?.resourceVersion));
    try {
      let written: V1Lease;
      try {
        written = await withTimeout(
          this.#lease === undefined ? client.create(paths.leases(namespace), body(undefined)) : replace(this.#lease),
          API_TIMEOUT_MS,
          'write report lease',
        );
      } catch (error) {
        // Only this agent writes this Lease; a conflict means our copy is old (a restart, a lost answer).
        if (statusOf(error) !== 409) throw error;
        const current = await client.get<V1Lease>(path);
        written = await withTimeout(replace(current), API_TIMEOUT_MS, 'write report lease');
      }
      this.#lease = written;
      this.#written = text;
      this.#writtenAt = now;
      this.#damper.written();
      if (this.#failing) this.#d.log.info('node report written again');
      this.#failing = false;
    } catch (error) {
      if (!this.#failing) this.#d.log.warn({ lease: this.#leaseName, err: messageOf(error) }, 'cannot write the node report: retrying');
      this.#failing = true;
    }
  }

  /** Our Lease as read at start: its report, re-encoded as this version writes it, is what the API server has. */
  #adopt(lease: V1Lease): void {
    this.#lease = lease;
    this.#written = encodeReport(parseReport(lease.metadata?.annotations?.[REPORT_ANNOTATION]));
    const renewed = Date.parse(String(lease.spec?.renewTime ?? ''));
    this.#writtenAt = Number.isNaN(renewed) ? 0 : renewed;
  }
}

/** Why this node does not serve `registry` through containerd, or undefined when it does. */
function nodeProblem(registry: string, runtime: NodeView): Problem | undefined {
  const { wiring } = runtime;
  const { manageHosts } = runtime.config;
  if (wiring === undefined) return { reason: 'Pending', message: 'containerd wiring not checked yet' };
  const hosts = wiring.hosts.find((h) => h.registry === registry);
  if (manageHosts && hosts === undefined) return { reason: 'Pending', message: `hosts.toml for ${registry} not written yet` };
  if (hosts?.state === 'admin_file_invalid') return { reason: 'HostsFileInvalid', message: hosts.message ?? `the admin's hosts.toml for ${registry} does not parse` };
  if (hosts?.state === 'error') return { reason: 'HostsFileError', message: hosts.message ?? `cannot write hosts.toml for ${registry}` };
  if (!wiring.containerd.ok) return { reason: pascalCase(wiring.containerd.state), message: wiring.containerd.message };
  const problem = runtime.upstreamProblem(registry);
  if (problem) return { reason: UPSTREAM_REASONS[problem.cause] ?? 'UpstreamUnreachable', message: `${problem.cause}: ${problem.detail}` };
  return undefined;
}
