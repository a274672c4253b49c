import { createHash, X509Certificate } from 'node:crypto';
import type { V1Secret } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { PeerIdentity, PeerIdentitySource } from '../peers/identity.ts';
import { createCa, type IssuedPem, ipBytes, issueCertificate } from '../peers/x509.ts';
import { type KubeClient, messageOf, paths, statusOf, withTimeout } from './client.ts';

/** The Secret's data keys: the CA certificate (PEM; a bundle may follow the issuing CA) and its private key (PEM). */
export const CA_CERT_KEY = 'ca.crt';
export const CA_KEY_KEY = 'ca.key';

const DAY_MS = 86_400_000;
const REQUEST_TIMEOUT_MS = 10_000;
const MAX_RETRY_MS = 60_000;
/** Renewal is never scheduled sooner than this, so a CA about to expire cannot make it spin. */
const MIN_DELAY_MS = 1_000;

export interface KubePeerIdentityDeps {
  readonly client: KubeClient;
  readonly namespace: string;
  /** The CA Secret's name, e.g. `registry-proxy-agent-peer-ca`. */
  readonly secret: string;
  /** The leaf's common name. */
  readonly nodeName: string;
  /** Put into the leaf's subjectAltName. */
  readonly nodeIp?: string;
  readonly log: Logger;
  readonly now?: () => number;
  /** Default 7 days; renewed when two thirds have passed. */
  readonly leafValidityMs?: number;
  /** For a CA this agent creates; default 10 years. */
  readonly caValidityMs?: number;
  /** First delay after a failed API call, doubling up to a minute; default 1 s. */
  readonly retryMs?: number;
  /** How often the Secret is read again to notice a rotated CA; default 5 min (±10 %). */
  readonly pollMs?: number;
}

interface KnownCa {
  readonly pem: IssuedPem;
  /** Of ca.crt and ca.key together: a change of either is a new CA. */
  readonly digest: string;
  /** uid/resourceVersion, to log one problem once. */
  readonly version: string;
}

/** The CA in the Secret, or why it cannot be used (never including the data itself). */
function caFromSecret(secret: V1Secret): IssuedPem | { problem: string } {
  const data = secret.data ?? {};
  const missing = [CA_CERT_KEY, CA_KEY_KEY].filter((k) => typeof data[k] !== 'string' || data[k] === '');
  if (missing.length > 0) return { problem: `missing data key(s) ${missing.join(', ')}` };
  const decode = (key: string): string => Buffer.from(data[key] ?? '', 'base64').toString('utf8');
  return { certPem: decode(CA_CERT_KEY), keyPem: decode(CA_KEY_KEY) };
}

/**
 * This agent's peer identity from a CA kept in a Kubernetes Secret. The first agent to find no Secret
 * creates it (a create, never an update: exactly one create wins, the others get 409 and read the
 * winner's); every agent then issues its own leaf in memory (never on disk) and renews it after two
 * thirds of its validity. The Secret is read again every `pollMs`, so a rotated CA (Secret replaced,
 * data changed, or deleted: the next agent to look creates a new one) yields a new leaf. A Secret the
 * agent cannot use is logged and left alone: no new certificate is issued until it is fixed (current()
 * is undefined); a listener already running keeps the certificate it has until that expires.
 *
 * Polling rather than a watch: one GET per agent every few minutes is cheap, needs only `get` on
 * this one Secret, and has no watch to keep alive.
 */
export class KubePeerIdentity implements PeerIdentitySource {
  readonly #d: KubePeerIdentityDeps;
  readonly #now: () => number;
  readonly #listeners = new Set<(identity: PeerIdentity) => void>();
  #ca: KnownCa | undefined;
  #identity: PeerIdentity | undefined;
  #renewAt = Number.POSITIVE_INFINITY;
  /** The last unusable Secret and reason logged: each is logged once, not on every poll. */
  #logged: string | undefined;
  #failing = false;
  #delayMs = 0;
  #stopped = true;
  #timer: NodeJS.Timeout | undefined;
  #tick: Promise<void> = Promise.resolve();

  constructor(deps: KubePeerIdentityDeps) {
    if (deps.nodeName.trim() === '') throw new Error('peer identity: the node name is empty');
    if (deps.nodeIp !== undefined) ipBytes(deps.nodeIp);
    this.#d = deps;
    this.#now = deps.now ?? Date.now;
  }

  current(): PeerIdentity | undefined {
    return this.#identity;
  }

  subscribe(listener: (identity: PeerIdentity) => void): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }

  /** Resolves after the first attempt, whatever its outcome: an unreachable API server must not hold up the agent. */
  async start(): Promise<void> {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#tick = this.#run();
    await this.#tick;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    await this.#tick;
  }

  async #run(): Promise<void> {
    let nextMs: number;
    try {
      this.#adopt(await this.#readOrCreate());
      if (this.#failing) this.#d.log.info({ secret: this.#d.secret }, 'peer CA Secret readable again');
      this.#failing = false;
      this.#delayMs = 0;
      nextMs = (this.#d.pollMs ?? 5 * 60_000) * (0.9 + Math.random() * 0.2);
    } catch (error) {
      nextMs = this.#failed(error);
    }
    // Renewal needs only the CA already known, so it goes on while the API server is away.
    if (this.#ca !== undefined && this.#now() >= this.#renewAt) this.#issue(this.#ca, 'renewed');
    if (this.#stopped) return;
    const delayMs = Math.min(nextMs, Math.max(MIN_DELAY_MS, this.#renewAt - this.#now()));
    this.#timer = setTimeout(() => {
      this.#tick = this.#run();
    }, delayMs);
    this.#timer.unref();
  }

  #failed(error: unknown): number {
    const initialMs = this.#d.retryMs ?? 1_000;
    this.#delayMs = this.#delayMs === 0 ? initialMs : Math.min(this.#delayMs * 2, Math.max(initialMs, MAX_RETRY_MS));
    const delayMs = Math.round(this.#delayMs * (0.8 + Math.random() * 0.4));
    const line = { secret: this.#d.secret, namespace: this.#d.namespace, err: messageOf(error), retryInMs: delayMs };
    if (this.#failing) this.#d.log.debug(line, 'peer CA Secret: still failing');
    else this.#d.log.warn(line, 'peer CA Secret: API call failed; keeping the known CA and retrying');
    this.#failing = true;
    return delayMs;
  }

  async #readOrCreate(): Promise<V1Secret> {
    // A 409 whose winner is deleted before we read it again: try again, a few times.
    for (let attempt = 0; attempt < 3; attempt++) {
      const found = await this.#read();
      if (found !== undefined) return found;
      const created = await this.#create();
      if (created !== undefined) return created;
    }
    throw new Error('the Secret exists on create, but is gone on every read');
  }

  async #read(): Promise<V1Secret | undefined> {
    try {
      return await withTimeout(this.#d.client.get<V1Secret>(paths.secrets(this.#d.namespace, this.#d.secret)), REQUEST_TIMEOUT_MS, 'read peer CA Secret');
    } catch (error) {
      if (statusOf(error) === 404) return undefined;
      throw error;
    }
  }

  /** undefined: another agent created it first. */
  async #create(): Promise<V1Secret | undefined> {
    const { namespace, secret: name } = this.#d;
    const ca = createCa({ commonName: 'registry-proxy-agent peer CA', validityMs: this.#d.caValidityMs ?? 3650 * DAY_MS, now: this.#now() });
    const body: V1Secret = {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name, namespace, labels: { 'app.kubernetes.io/name': 'registry-proxy-agent', 'app.kubernetes.io/component': 'peer-ca' } },
      type: 'Opaque',
      data: { [CA_CERT_KEY]: Buffer.from(ca.certPem).toString('base64'), [CA_KEY_KEY]: Buffer.from(ca.keyPem).toString('base64') },
    };
    try {
      const created = await withTimeout(this.#d.client.create(paths.secrets(namespace), body), REQUEST_TIMEOUT_MS, 'create peer CA Secret');
      this.#d.log.info({ secret: name, namespace }, 'created the peer CA Secret with a new CA');
      return created;
    } catch (error) {
      if (statusOf(error) === 409) return undefined;
      throw error;
    }
  }

  #adopt(secret: V1Secret): void {
    const version = `${secret.metadata?.uid ?? ''}/${secret.metadata?.resourceVersion ?? ''}`;
    const ca = caFromSecret(secret);
    if ('problem' in ca) {
      this.#unusable(version, ca.problem);
      return;
    }
    const digest = createHash('sha256').update(ca.certPem).update('\0').update(ca.keyPem).digest('hex');
    if (this.#ca?.digest === digest && this.#identity !== undefined) return;
    this.#issue({ pem: ca, digest, version }, this.#ca === undefined ? 'issued' : 'issued from a new CA');
  }

  #issue(ca: KnownCa, why: string): void {
    const { nodeName, nodeIp } = this.#d;
    let leaf: IssuedPem;
    const now = this.#now();
    try {
      leaf = issueCertificate(ca.pem, {
        commonName: nodeName.slice(0, 64),
        ...(nodeIp === undefined ? {} : { ipAddresses: [nodeIp] }),
        validityMs: this.#d.leafValidityMs ?? 7 * DAY_MS,
        now,
      });
    } catch (error) {
      // The CA's own messages name what is wrong (not a CA, key mismatch, expired), never the data.
      this.#unusable(ca.version, error instanceof Error ? error.message : String(error));
      return;
    }
    const cert = new X509Certificate(leaf.certPem);
    this.#ca = ca;
    this.#logged = undefined;
    this.#renewAt = now + ((cert.validToDate.getTime() - now) * 2) / 3;
    const identity: PeerIdentity = { ca: ca.pem.certPem, cert: leaf.certPem, key: leaf.keyPem };
    this.#identity = identity;
    const caFingerprint = new X509Certificate(ca.pem.certPem).fingerprint256;
    this.#d.log.info({ secret: this.#d.secret, caFingerprint, notAfter: cert.validToDate.toISOString() }, `peer certificate ${why}`);
    for (const listener of this.#listeners) {
      try {
        listener(identity);
      } catch (error) {
        this.#d.log.error({ err: messageOf(error) }, 'peer identity listener failed');
      }
    }
  }

  /** Fail closed: no identity while the CA is unusable, and the Secret is someone else's to fix. */
  #unusable(version: string, reason: string): void {
    const wasUsable = this.#identity !== undefined;
    this.#ca = undefined;
    this.#identity = undefined;
    this.#renewAt = Number.POSITIVE_INFINITY;
    const key = `${version} ${reason}`;
    if (this.#logged === key) return;
    this.#logged = key;
    this.#d.log.warn(
      { secret: this.#d.secret, namespace: this.#d.namespace, reason, withdrawn: wasUsable },
      'peer CA Secret unusable: no peer certificate is issued until it is fixed (one in use is kept until it expires; the agent does not overwrite the Secret)',
    );
  }
}
