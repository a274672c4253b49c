import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type KubeApi, LEASES, startKubeApi } from '../../test/fixtures/kube-api.ts';
import { KubeClient } from './client.ts';
import type { Clock } from './damper.ts';
import type { MirrorState } from './mirror-source.ts';
import { NodeReporter } from './node-report.ts';
import type { PreloadImageState } from '../preload/state.ts';
import { REPORT_ANNOTATION, parseReport, preloadKey } from './report.ts';

const NS = 'registry-proxy-agent';
const REG = 'registry.corp.example:5000';
const LEASE_PATH = `/apis/coordination.k8s.io/v1/namespaces/${NS}/leases`;

/** Time that moves only when the test says so; due callbacks run in order. */
class ManualClock implements Clock {
  #now = Date.now();
  #timers: Array<{ at: number; fn: () => void }> = [];

  now(): number {
    return this.#now;
  }

  after(ms: number, fn: () => void): () => void {
    const timer = { at: this.#now + ms, fn };
    this.#timers.push(timer);
    return () => {
      this.#timers = this.#timers.filter((t) => t !== timer);
    };
  }

  advance(ms: number): void {
    this.#now += ms;
    const due = this.#timers.filter((t) => t.at <= this.#now).sort((a, b) => a.at - b.at);
    this.#timers = this.#timers.filter((t) => !due.includes(t));
    for (const t of due) t.fn();
  }

  get timers(): number {
    return this.#timers.length;
  }
}

describe('NodeReporter: damped report writes', () => {
  let api: KubeApi;
  let clock: ManualClock;
  let reporter: NodeReporter;
  const states: MirrorState[] = [{ name: 'corp', generation: 1, registry: REG }];
  /** This node's preload entries of REG, as the runtime's preloadStates gives them. */
  let preloaded: PreloadImageState[] = [];

  /** Why the last probe failed, as the runtime tells it; undefined: upstream reachable. */
  let problem: { cause: string; detail: string } | undefined;

  /** A reporter as the agent builds it, against the API double. */
  function makeReporter(): NodeReporter {
    const kc = api.kubeConfig();
    return new NodeReporter({
      client: new KubeClient(kc),
      namespace: NS,
      nodeName: 'node-a',
      source: { synced: true, states: () => states },
      runtime: {
        wiring: { hosts: [], containerd: { state: 'ok', ok: true, message: 'ok', configFiles: [], warnings: [] } },
        config: { manageHosts: false },
        upstreamProblem: () => problem,
        preloadStates: (registry) => (registry === REG ? preloaded : []),
      },
      log: pino({ level: 'silent' }),
      // No periodic evaluation: the test calls evaluate() as the timer would. The jitter is 5 s of the 10 s.
      options: { intervalMs: 3_600_000, settleMs: 20_000, jitterMs: 10_000, random: () => 0.5, clock },
    });
  }

  beforeEach(async () => {
    api = await startKubeApi({ bookmarkIntervalMs: 60_000 });
    clock = new ManualClock();
    problem = undefined;
    preloaded = [];
    states.splice(0, states.length, { name: 'corp', generation: 1, registry: REG });
    reporter = makeReporter();
  });

  afterEach(async () => {
    await reporter.stop();
    await api.stop();
  });

  const leaseWrites = (): number => api.writes().filter((w) => w.path.startsWith(LEASE_PATH)).length;
  const written = (): string | undefined => parseReport(String((api.store.get(LEASES, NS, 'rpa-node-node-a')?.metadata as { annotations?: Record<string, string> }).annotations?.[REPORT_ANNOTATION])).corp?.reason;
  const setUp = (up: boolean): void => {
    problem = up ? undefined : { cause: 'unreachable', detail: 'upstream unreachable (ECONNRESET)' };
  };

  it('writes the first report at once and a changed one only after it has held for the settle time plus its jitter', async () => {
    await reporter.start();
    expect(leaseWrites()).toBe(1);
    expect(written()).toBe('Ready');

    setUp(false);
    await reporter.evaluate();
    expect(leaseWrites()).toBe(1);
    expect(clock.timers).toBe(1); // a wake-up at the end of the settle time

    clock.advance(24_999);
    await reporter.evaluate();
    expect(leaseWrites()).toBe(1);

    clock.advance(1); // 20 s + 5 s jitter: the wake-up evaluates and writes
    await reporter.evaluate();
    expect(leaseWrites()).toBe(2);
    expect(written()).toBe('UpstreamUnreachable');

    // Nothing more while nothing changes.
    clock.advance(60_000);
    await reporter.evaluate();
    expect(leaseWrites()).toBe(2);
  });

  it("names the route's own cause of an unreachable upstream as the reason (the Cloud Connector, not the registry)", async () => {
    setUp(false);
    problem = { cause: 'cp_no_cloud_connector', detail: 'no Cloud Connector is connected for location onprem-1; fix: connect it' };
    await reporter.start();
    const report = parseReport(String((api.store.get(LEASES, NS, 'rpa-node-node-a')?.metadata as { annotations?: Record<string, string> }).annotations?.[REPORT_ANNOTATION]));
    expect(report.corp?.reason).toBe('CloudConnectorUnavailable');
    expect(report.corp?.message).toMatch(/^cp_no_cloud_connector: no Cloud Connector/);
  });

  it('keeps the generic reason for causes that point at the upstream itself', async () => {
    setUp(false);
    problem = { cause: 'refused', detail: 'connection refused' };
    await reporter.start();
    expect(written()).toBe('UpstreamUnreachable');
  });

  it('writes nothing for a state that flaps faster than the settle time, then once when it holds', async () => {
    await reporter.start();
    api.clearRequests();
    // A tunnel flapping every 15 s for 5 minutes: each new state restarts the wait, going back cancels it.
    for (let i = 0; i < 20; i++) {
      setUp(i % 2 === 1);
      await reporter.evaluate();
      clock.advance(15_000);
      await reporter.evaluate();
    }
    expect(leaseWrites()).toBe(0);
    expect(written()).toBe('Ready');

    setUp(false);
    for (let i = 0; i < 6; i++) {
      clock.advance(10_000);
      await reporter.evaluate();
    }
    expect(leaseWrites()).toBe(1);
    expect(written()).toBe('UpstreamUnreachable');
  });

  it('renews an unchanged report after renewMs; a restart resumes from its Lease: same state, no write; a new state waits', async () => {
    await reporter.start();
    clock.advance(599_999);
    await reporter.evaluate();
    expect(leaseWrites()).toBe(1);
    clock.advance(1);
    await reporter.evaluate();
    expect(leaseWrites()).toBe(2);
    expect(written()).toBe('Ready');

    await reporter.stop();
    reporter = makeReporter();
    await reporter.start();
    expect(leaseWrites()).toBe(2);

    await reporter.stop();
    setUp(false);
    reporter = makeReporter();
    await reporter.start();
    expect(leaseWrites()).toBe(2);
    clock.advance(25_000);
    await reporter.evaluate();
    expect(leaseWrites()).toBe(3);
    expect(written()).toBe('UpstreamUnreachable');
  });

  it('carries the preload entries of a mirror it serves as specified; a changed phase is a change, damped like any other', async () => {
    const entry = (image: string, phase: PreloadImageState['phase'], extra: Partial<PreloadImageState> = {}): PreloadImageState => ({ image, phase, bytes: 0, pinned: true, since: 0, ...extra });
    const report = () => parseReport(String((api.store.get(LEASES, NS, 'rpa-node-node-a')?.metadata as { annotations?: Record<string, string> }).annotations?.[REPORT_ANNOTATION])).corp;
    preloaded = [entry('team/app:1', 'pending'), entry('team/db:2', 'failed', { error: 'manifest unknown' })];
    await reporter.start();
    expect(report()?.preload).toEqual({
      total: 2,
      ready: 0,
      failed: 1,
      listing: 'all',
      entries: [
        { key: preloadKey('team/app:1'), phase: 'pending' },
        { key: preloadKey('team/db:2'), phase: 'failed', error: 'manifest unknown' },
      ],
    });

    preloaded = [entry('team/app:1', 'ready', { digest: `sha256:${'a'.repeat(64)}` }), preloaded[1]!];
    await reporter.evaluate();
    expect(leaseWrites()).toBe(1);
    clock.advance(25_000);
    await reporter.evaluate();
    expect(leaseWrites()).toBe(2);
    expect(report()?.preload?.entries[0]).toEqual({ key: preloadKey('team/app:1'), phase: 'ready', digest: 'aaaaaaaaaaaa' });

    // Not served as specified (here: a spec the agent refuses): the registry's entries are another
    // version's, so the report has none.
    states.splice(0, 1, { name: 'corp', generation: 2, registry: REG, problem: { reason: 'InvalidSpec', message: 'spec.preload[0]: …' } });
    clock.advance(1_000);
    await reporter.evaluate();
    clock.advance(25_000);
    await reporter.evaluate();
    expect(report()).toMatchObject({ ok: false, reason: 'InvalidSpec', generation: 2 });
    expect(report()?.preload).toBeUndefined();
  });
});
