import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { createServer, request } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { type Authorization, type KubeApi, type PolicyRule, SECRETS, startKubeApi } from '../../test/fixtures/kube-api.ts';
import { pollUntil } from '../../test/fixtures/poll.ts';
import type { PeerIdentity } from '../peers/identity.ts';
import { checkPeerServerIdentity, createCa, issueCertificate } from '../peers/x509.ts';
import { KubeClient } from './client.ts';
import { CA_CERT_KEY, CA_KEY_KEY, KubePeerIdentity, type KubePeerIdentityDeps } from './peer-ca.ts';

const NS = 'registry-proxy-agent';
const SECRET = 'registry-proxy-agent-peer-ca';
const SECRET_PATH = `/api/v1/namespaces/${NS}/secrets`;
const DAY = 86_400_000;

/** The Role rules this component needs, as manifests/base/rbac.yaml would grant them. */
const PEER_CA_RULES: readonly PolicyRule[] = [
  { apiGroups: [''], resources: ['secrets'], resourceNames: [SECRET], verbs: ['get'] },
  // A create names no object when it is authorized, so it cannot be narrowed by resourceNames.
  { apiGroups: [''], resources: ['secrets'], verbs: ['create'] },
];

const rbac = (rules: readonly PolicyRule[]): Authorization => ({
  user: `system:serviceaccount:${NS}:registry-proxy-agent`,
  clusterRules: [],
  namespaceRules: { [NS]: rules },
});

interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

let api: KubeApi;
const sources: KubePeerIdentity[] = [];
let lines: LogLine[] = [];

afterEach(async () => {
  for (const s of sources.splice(0)) await s.stop();
  await api.stop();
  lines = [];
});

function clientFor(kube: KubeApi): KubeClient {
  return new KubeClient(kube.kubeConfig());
}

/** An identity source as the agent builds it, logging into `lines`. */
function source(nodeName: string, extra: Partial<KubePeerIdentityDeps> = {}): KubePeerIdentity {
  const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
  const s = new KubePeerIdentity({ client: clientFor(api), namespace: NS, secret: SECRET, nodeName, nodeIp: '127.0.0.1', log, retryMs: 50, ...extra });
  sources.push(s);
  return s;
}

function secretData(): { ca: string; key: string } | undefined {
  const data = api.store.get(SECRETS, NS, SECRET)?.data as Record<string, string> | undefined;
  if (data === undefined) return undefined;
  return { ca: Buffer.from(data[CA_CERT_KEY] ?? '', 'base64').toString(), key: Buffer.from(data[CA_KEY_KEY] ?? '', 'base64').toString() };
}

function putSecret(data: Record<string, string>): void {
  const encoded = Object.fromEntries(Object.entries(data).map(([k, v]) => [k, Buffer.from(v).toString('base64')]));
  api.store.put(SECRETS, { metadata: { name: SECRET, namespace: NS }, type: 'Opaque', data: encoded });
}

/** The next identity `s` publishes that satisfies `accept` (rejects after 10 s, so a missing one fails fast). */
function nextIdentity(s: KubePeerIdentity, accept: (identity: PeerIdentity) => boolean = () => true): Promise<PeerIdentity> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error('no such identity published within 10 s'));
    }, 10_000);
    const off = s.subscribe((identity) => {
      if (!accept(identity)) return;
      clearTimeout(timer);
      off();
      resolve(identity);
    });
  });
}

/** Waits until the source has read the Secret `n` more times (each poll is one GET): "nothing happened" needs a witness. */
async function polls(n: number): Promise<void> {
  const count = (): number => api.requests.filter((r) => r.method === 'GET' && r.path === `${SECRET_PATH}/${SECRET}` && r.status !== 0).length;
  const target = count() + n;
  await pollUntil(() => count() >= target, { timeoutMs: 10_000, what: `${n} more reads of the Secret` });
}

function issuedBy(identity: PeerIdentity, caPem: string): boolean {
  const ca = new X509Certificate(caPem);
  const leaf = new X509Certificate(identity.cert);
  return leaf.checkIssued(ca) && leaf.verify(ca.publicKey);
}

/** A real mutual-TLS request from `client` to a listener with `server`'s identity; resolves with the body. */
async function mtls(server: PeerIdentity, client: PeerIdentity): Promise<string> {
  const listener = createServer({ key: server.key, cert: server.cert, ca: server.ca, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    res.end(`hello ${(req.socket as TLSSocket).getPeerCertificate().subject.CN}`);
  });
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  try {
    return await new Promise<string>((resolve, reject) => {
      const port = (listener.address() as AddressInfo).port;
      const req = request({ host: '127.0.0.1', port, agent: false, ca: client.ca, key: client.key, cert: client.cert, checkServerIdentity: checkPeerServerIdentity }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve(body));
      });
      req.on('error', reject);
      req.end();
    });
  } finally {
    listener.closeAllConnections();
    await new Promise((resolve) => listener.close(resolve));
  }
}

const secretWrites = (): number => api.writes().filter((w) => w.path.startsWith(SECRET_PATH)).length;
const warnings = (): LogLine[] => lines.filter((l) => l.level === 40);

describe('KubePeerIdentity: the CA Secret', () => {
  it('the first start creates the Secret (Opaque, ca.crt + ca.key) and issues this node’s leaf from it', async () => {
    api = await startKubeApi();
    const a = source('node-a');
    const published: PeerIdentity[] = [];
    a.subscribe((identity) => published.push(identity));
    expect(a.current()).toBeUndefined();
    await a.start();

    const stored = api.store.get(SECRETS, NS, SECRET);
    expect(stored?.type).toBe('Opaque');
    const data = secretData();
    expect(new X509Certificate(data?.ca ?? '').ca).toBe(true);
    expect(data?.key).toMatch(/^-----BEGIN PRIVATE KEY-----/);
    expect(api.writes().map((w) => `${w.method} ${w.path} ${w.status}`)).toEqual([`POST ${SECRET_PATH} 201`]);

    const identity = a.current();
    expect(identity).toBeDefined();
    expect(published).toEqual([identity]);
    expect(identity?.ca).toBe(data?.ca);
    expect(issuedBy(identity ?? published[0]!, data?.ca ?? '')).toBe(true);
    const leaf = new X509Certificate(identity?.cert ?? '');
    expect(leaf.subject).toBe('CN=node-a');
    expect(leaf.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(leaf.validToDate.getTime() - Date.now()).toBeGreaterThan(7 * DAY - 60_000);
    expect(leaf.validToDate.getTime() - Date.now()).toBeLessThanOrEqual(7 * DAY);
    expect(identity?.key).not.toBe(data?.key);
    // The CA key lives in the Secret only; nothing is logged of it or of the leaf key.
    const logged = JSON.stringify(lines);
    expect(logged).not.toContain('PRIVATE KEY');
    expect(logged).not.toContain((data?.key ?? '').split('\n')[1]);
    expect(logged).not.toContain((identity?.key ?? '').split('\n')[1]);
  });

  it('two agents starting at once against an empty API create exactly one Secret; both leaves come from its CA and talk mutual TLS', async () => {
    api = await startKubeApi();
    const a = source('node-a');
    const b = source('node-b');
    await Promise.all([a.start(), b.start()]);

    const posts = api.writes().filter((w) => w.method === 'POST' && w.path === SECRET_PATH);
    expect(posts.map((p) => p.status).sort()).toEqual([201, 409]);
    expect(api.store.list(SECRETS, NS)).toHaveLength(1);
    const ca = secretData()?.ca ?? '';
    const [ia, ib] = [a.current(), b.current()];
    if (ia === undefined || ib === undefined) throw new Error('both agents need an identity');
    expect(ia.ca).toBe(ca);
    expect(ib.ca).toBe(ca);
    expect(issuedBy(ia, ca) && issuedBy(ib, ca)).toBe(true);
    expect(await mtls(ia, ib)).toBe('hello node-b');
    expect(await mtls(ib, ia)).toBe('hello node-a');
  });

  it('a later start reuses the existing CA: no write, a new leaf from the same CA', async () => {
    api = await startKubeApi();
    const a = source('node-a');
    await a.start();
    await a.stop();
    api.clearRequests();

    const again = source('node-a');
    await again.start();
    expect(secretWrites()).toBe(0);
    expect(again.current()?.ca).toBe(a.current()?.ca);
    expect(again.current()?.cert).not.toBe(a.current()?.cert);
    expect(await mtls(a.current()!, again.current()!)).toBe('hello node-a');
  });

  it('a Secret replaced with another CA, or whose data changes, yields a new leaf from that CA', async () => {
    api = await startKubeApi();
    const a = source('node-a', { pollMs: 50 });
    await a.start();
    const first = a.current()!;

    const replacement = createCa({ commonName: 'rotated CA', validityMs: 30 * DAY });
    const rotated = nextIdentity(a, (i) => i.ca === replacement.certPem);
    expect(api.store.delete(SECRETS, NS, SECRET)).toBe(true);
    putSecret({ [CA_CERT_KEY]: replacement.certPem, [CA_KEY_KEY]: replacement.keyPem });
    const second = await rotated;
    expect(issuedBy(second, replacement.certPem)).toBe(true);
    expect(issuedBy(second, first.ca)).toBe(false);
    expect(a.current()).toBe(second);

    // An administrator rotating in place, in two steps: first trust the next CA too (still issuing from
    // the current one, which comes first), then issue from the next CA while still trusting the old one.
    // Agents that have seen either step accept each other.
    const next = createCa({ commonName: 'next CA', validityMs: 30 * DAY });
    const trustBoth = `${replacement.certPem}${next.certPem}`;
    const stepOne = nextIdentity(a, (i) => i.ca === trustBoth);
    putSecret({ [CA_CERT_KEY]: trustBoth, [CA_KEY_KEY]: replacement.keyPem });
    const third = await stepOne;
    expect(issuedBy(third, replacement.certPem)).toBe(true);
    const issueFromNext = `${next.certPem}${replacement.certPem}`;
    const stepTwo = nextIdentity(a, (i) => i.ca === issueFromNext);
    putSecret({ [CA_CERT_KEY]: issueFromNext, [CA_KEY_KEY]: next.keyPem });
    const fourth = await stepTwo;
    expect(issuedBy(fourth, next.certPem)).toBe(true);
    expect(await mtls(third, fourth)).toBe('hello node-a');
    expect(await mtls(fourth, third)).toBe('hello node-a');
    expect(secretWrites()).toBe(1); // only the first create: the agent never writes someone else's Secret
  });

  it('a deleted Secret is created again by the next agent that looks, and its leaf follows the new CA', async () => {
    api = await startKubeApi();
    const a = source('node-a', { pollMs: 50 });
    await a.start();
    const before = a.current()!;
    const renewed = nextIdentity(a, (i) => i.ca !== before.ca);
    api.store.delete(SECRETS, NS, SECRET);
    const after = await renewed;
    expect(after.ca).toBe(secretData()?.ca);
    expect(issuedBy(after, after.ca)).toBe(true);
    expect(api.writes().filter((w) => w.method === 'POST').map((w) => w.status)).toEqual([201, 201]);
  });

  it('renews the leaf once two thirds of its validity have passed, from the CA it knows', async () => {
    api = await startKubeApi();
    let now = Date.now();
    const a = source('node-a', { pollMs: 50, now: () => now });
    await a.start();
    const first = a.current()!;

    now += 4 * DAY; // 4 of 7 days: not yet
    await polls(2);
    expect(a.current()).toBe(first);

    const renewed = nextIdentity(a);
    now += 0.7 * DAY; // 4.7 of 7 days
    const second = await renewed;
    expect(second.cert).not.toBe(first.cert);
    expect(second.key).not.toBe(first.key);
    expect(second.ca).toBe(first.ca);
    expect(new X509Certificate(second.cert).validToDate.getTime()).toBeGreaterThan(new X509Certificate(first.cert).validToDate.getTime());
    expect(secretWrites()).toBe(1);
  });
});

describe('KubePeerIdentity: fail closed', () => {
  const otherCa = createCa({ commonName: 'other', validityMs: DAY });
  const good = createCa({ commonName: 'good', validityMs: DAY });
  const expired = createCa({ commonName: 'old', validityMs: DAY, now: Date.now() - 2 * DAY });
  const leafAsCa = issueCertificate(good, { commonName: 'leaf', validityMs: DAY });
  const cases: Array<[string, Record<string, string>, RegExp]> = [
    ['no ca.key', { [CA_CERT_KEY]: good.certPem }, /missing data key\(s\) ca\.key/],
    ['garbage for a certificate', { [CA_CERT_KEY]: 'not a certificate', [CA_KEY_KEY]: good.keyPem }, /no PEM certificate/],
    ['garbage for a key', { [CA_CERT_KEY]: good.certPem, [CA_KEY_KEY]: 'not a key' }, /not a PEM private key/],
    ['a key that is not the CA’s', { [CA_CERT_KEY]: good.certPem, [CA_KEY_KEY]: otherCa.keyPem }, /does not belong/],
    ['a certificate that is not a CA', { [CA_CERT_KEY]: leafAsCa.certPem, [CA_KEY_KEY]: leafAsCa.keyPem }, /not a CA/],
    ['an expired CA', { [CA_CERT_KEY]: expired.certPem, [CA_KEY_KEY]: expired.keyPem }, /expired at/],
  ];

  it.each(cases)('a Secret with %s: current() stays undefined, the Secret is untouched, the reason is logged once', async (_what, data, reason) => {
    api = await startKubeApi();
    putSecret(data);
    const before = api.store.get(SECRETS, NS, SECRET);
    const a = source('node-a', { pollMs: 50 });
    await a.start();
    await polls(3);
    expect(a.current()).toBeUndefined();
    expect(api.store.get(SECRETS, NS, SECRET)).toEqual(before);
    expect(secretWrites()).toBe(0);
    const logged = warnings();
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ secret: SECRET, namespace: NS });
    expect(String(logged[0]?.reason)).toMatch(reason);
    expect(JSON.stringify(lines)).not.toContain('PRIVATE KEY');
  });

  it('a Secret that turns bad withdraws the identity; fixed, the identity comes back', async () => {
    api = await startKubeApi();
    const a = source('node-a', { pollMs: 50 });
    await a.start();
    expect(a.current()).toBeDefined();

    putSecret({ [CA_CERT_KEY]: good.certPem, [CA_KEY_KEY]: otherCa.keyPem });
    await pollUntil(() => a.current() === undefined, { timeoutMs: 10_000, what: 'identity withdrawn' });
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]).toMatchObject({ withdrawn: true });

    const back = nextIdentity(a);
    putSecret({ [CA_CERT_KEY]: good.certPem, [CA_KEY_KEY]: good.keyPem });
    expect(issuedBy(await back, good.certPem)).toBe(true);
    expect(a.current()).toBeDefined();
  });

  it('an unreachable API server: start returns without an identity, logs one warning for the outage, and recovers', async () => {
    api = await startKubeApi();
    await api.setDown(true);
    const a = source('node-a', { retryMs: 20 });
    await a.start();
    expect(a.current()).toBeUndefined();
    await pollUntil(() => lines.filter((l) => l.msg.includes('still failing')).length >= 3, { timeoutMs: 10_000, what: 'retries' });
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0]?.msg).toMatch(/API call failed/);

    await api.setDown(false);
    await pollUntil(() => a.current() !== undefined, { timeoutMs: 20_000, what: 'identity after the outage' });
    expect(lines.some((l) => l.msg === 'peer CA Secret readable again')).toBe(true);
    expect(issuedBy(a.current()!, secretData()?.ca ?? '')).toBe(true);
  });

  it('keeps the identity it has while the API server is away', async () => {
    api = await startKubeApi();
    const a = source('node-a', { pollMs: 50, retryMs: 20 });
    await a.start();
    const known = a.current();
    await api.setDown(true);
    await pollUntil(() => warnings().length === 1, { timeoutMs: 10_000, what: 'the outage noticed' });
    expect(a.current()).toBe(known);
    await api.setDown(false);
  });
});

describe('KubePeerIdentity: RBAC', () => {
  it('works with exactly get on the one Secret (resourceNames) and create on secrets, and uses both', async () => {
    api = await startKubeApi({ authorization: rbac(PEER_CA_RULES) });
    const a = source('node-a');
    const b = source('node-b');
    await Promise.all([a.start(), b.start()]);
    expect(a.current()?.ca).toBe(b.current()?.ca);
    expect(a.current()).toBeDefined();
    expect(api.requests.filter((r) => r.status === 403)).toEqual([]);
    const verbs = new Set(api.requests.map((r) => r.attributes?.verb));
    expect([...verbs].sort()).toEqual(['create', 'get']);
    expect(api.requests.every((r) => r.attributes?.verb !== 'get' || r.attributes.name === SECRET)).toBe(true);
  });

  it('without create, an agent that finds no Secret has no identity and says why, once', async () => {
    const getOnly = PEER_CA_RULES.filter((r) => !r.verbs.includes('create'));
    api = await startKubeApi({ authorization: rbac(getOnly) });
    const a = source('node-a', { retryMs: 20 });
    await a.start();
    await pollUntil(() => api.requests.filter((r) => r.status === 403).length >= 3, { timeoutMs: 10_000, what: 'retried creates' });
    expect(a.current()).toBeUndefined();
    expect(warnings()).toHaveLength(1);
    expect(String(warnings()[0]?.err)).toMatch(/^HTTP 403: .*cannot create resource "secrets"/);
  });

  it('the namespace-wide list/watch the agent already has for credentials is not enough: a GET by name is needed', async () => {
    api = await startKubeApi({ authorization: rbac([{ apiGroups: [''], resources: ['secrets'], verbs: ['list', 'watch'] }, ...PEER_CA_RULES.filter((r) => r.verbs.includes('create'))]) });
    const a = source('node-a');
    await a.start();
    expect(a.current()).toBeUndefined();
    expect(String(warnings()[0]?.err)).toMatch(/cannot get resource "secrets"/);
  });
});
