import { randomBytes } from 'node:crypto';
import { V1MicroTime, type V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { type KubeClient, messageOf, paths, statusOf, withTimeout } from './client.ts';

export const LEADER_LEASE = 'registry-proxy-agent-leader';

interface Deps {
  readonly client: KubeClient;
  readonly namespace: string;
  readonly nodeName: string;
  readonly log: Logger;
  /** Default 30 s; the leader renews every third of it. */
  readonly leaseDurationMs?: number;
  readonly onStartedLeading: () => void;
  readonly onStoppedLeading: () => void;
}

/**
 * Leader election on the Lease `registry-proxy-agent-leader`, like client-go's: the holder renews every
 * third of the lease duration with an optimistic-concurrency PUT (resourceVersion); the others look at
 * it once per lease duration (jittered, read from the API server's watch cache) and take it over with
 * the same kind of PUT when its resourceVersion has not moved for a whole lease duration, measured on
 * their own clock so clock skew does not matter. At most one PUT per candidate wins.
 */
export class LeaderElector {
  readonly #d: Deps;
  readonly #identity: string;
  readonly #durationMs: number;
  #lease: V1Lease | undefined;
  #observedRv: string | undefined;
  #observedAt = 0;
  #leading = false;
  #renewedAt = 0;
  #timer: NodeJS.Timeout | undefined;
  #stopped = true;
  #tick: Promise<void> = Promise.resolve();

  constructor(deps: Deps) {
    this.#d = deps;
    this.#durationMs = deps.leaseDurationMs ?? 30_000;
    // A restarted agent on the same node is a new candidate: it must not renew what its predecessor held.
    this.#identity = `${deps.nodeName}_${randomBytes(4).toString('hex')}`;
  }

  get leading(): boolean {
    return this.#leading;
  }

  get identity(): string {
    return this.#identity;
  }

  start(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#schedule(0);
  }

  /** Stops, and hands the lease back when holding it so another agent takes over at once. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#tick;
    if (!this.#leading) return;
    const lease = this.#lease;
    this.#stepDown('stopping');
    if (lease === undefined) return;
    try {
      await withTimeout(this.#replace(lease, { holderIdentity: '', leaseDurationSeconds: 1, renewTime: new V1MicroTime() }), 2_000, 'release leader lease');
    } catch (error) {
      this.#d.log.debug({ err: messageOf(error) }, 'cannot release the leader lease: it expires by itself');
    }
  }

  #schedule(ms: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#tick = this.#run();
    }, ms);
    this.#timer.unref();
  }

  async #run(): Promise<void> {
    try {
      if (this.#leading) await this.#renew();
      else await this.#tryAcquire();
    } catch (error) {
      this.#d.log.debug({ err: messageOf(error), leading: this.#leading }, 'leader election: API call failed');
    }
    // Stop aggregating before another agent may take over.
    if (this.#leading && Date.now() - this.#renewedAt > (this.#durationMs * 2) / 3) this.#stepDown('cannot renew the leader lease');
    const jitter = 1 + Math.random() * 0.2;
    this.#schedule(this.#leading ? this.#durationMs / 3 : this.#durationMs * jitter);
  }

  async #tryAcquire(): Promise<void> {
    const { client, namespace } = this.#d;
    const leases = paths.leases(namespace);
    const list = await withTimeout(
      client.list<V1Lease>(leases, { fieldSelector: `metadata.name=${LEADER_LEASE}`, resourceVersion: '0' }),
      this.#durationMs,
      'read leader lease',
    );
    const lease = list.items[0];
    const now = Date.now();
    if (lease === undefined) {
      try {
        this.#became(
          await withTimeout(
            client.create<V1Lease>(leases, { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: LEADER_LEASE, namespace }, spec: this.#spec(0) }),
            this.#durationMs,
            'create leader lease',
          ),
        );
      } catch (error) {
        if (statusOf(error) !== 409) throw error;
      }
      return;
    }
    const rv = lease.metadata?.resourceVersion;
    if (rv !== this.#observedRv) {
      this.#observedRv = rv;
      this.#observedAt = now;
    }
    const holder = lease.spec?.holderIdentity ?? '';
    const durationMs = (lease.spec?.leaseDurationSeconds ?? 0) * 1000;
    if (holder !== '' && now - this.#observedAt < Math.max(durationMs, this.#durationMs)) return;
    const transitions = (lease.spec?.leaseTransitions ?? 0) + 1;
    try {
      this.#became(await withTimeout(this.#replace(lease, this.#spec(transitions)), this.#durationMs, 'take over leader lease'));
    } catch (error) {
      if (statusOf(error) !== 409) throw error;
    }
  }

  async #renew(): Promise<void> {
    const lease = this.#lease;
    if (lease === undefined) return;
    try {
      const renewed = await withTimeout(
        this.#replace(lease, { ...lease.spec, holderIdentity: this.#identity, renewTime: new V1MicroTime() }),
        this.#durationMs / 3,
        'renew leader lease',
      );
      this.#lease = renewed;
      this.#renewedAt = Date.now();
    } catch (error) {
      if (statusOf(error) === 409) this.#stepDown('another agent took the leader lease');
      else throw error;
    }
  }

  #replace(lease: V1Lease, spec: V1Lease['spec']): Promise<V1Lease> {
    const { namespace } = this.#d;
    return this.#d.client.replace<V1Lease>(paths.leases(namespace, LEADER_LEASE), {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name: LEADER_LEASE, namespace, resourceVersion: lease.metadata?.resourceVersion ?? '' },
      spec,
    });
  }

  #spec(transitions: number): V1Lease['spec'] {
    const now = new V1MicroTime();
    return {
      holderIdentity: this.#identity,
      leaseDurationSeconds: Math.max(1, Math.ceil(this.#durationMs / 1000)),
      acquireTime: now,
      renewTime: now,
      leaseTransitions: transitions,
    };
  }

  #became(lease: V1Lease): void {
    this.#lease = lease;
    this.#renewedAt = Date.now();
    this.#leading = true;
    this.#d.log.info({ identity: this.#identity }, 'leading: aggregating RegistryMirror status');
    this.#d.onStartedLeading();
  }

  #stepDown(why: string): void {
    if (!this.#leading) return;
    this.#leading = false;
    this.#lease = undefined;
    this.#observedRv = undefined;
    this.#d.log.info({ identity: this.#identity, why }, 'no longer leading');
    this.#d.onStoppedLeading();
  }
}
