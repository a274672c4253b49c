import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { V1Lease, V1Secret } from '@kubernetes/client-node';
import { type KubeConfig, V1MicroTime } from '@kubernetes/client-node';
import { afterEach, describe, expect, it } from 'vitest';
import { type KubeApi, LEASES, REGISTRY_MIRRORS, kubeConfigAt, startKubeApi } from '../../test/fixtures/kube-api.ts';
import { createCa, type IssuedPem, issueCertificate } from '../peers/x509.ts';
import { KubeApiError, KubeClient, messageOf, paths, statusOf } from './client.ts';
import { FIELD_MANAGER, REGISTRY_MIRRORS_PATH } from './resources.ts';

const DAY_MS = 86_400_000;
let api: KubeApi | undefined;

afterEach(async () => {
  await api?.stop();
  api = undefined;
});

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => expect.fail('resolved'),
    (error: unknown) => error,
  );
}

describe('KubeClient against the API double', () => {
  it('create, get, replace with optimistic concurrency: a stale resourceVersion is 409 with the Status message', async () => {
    api = await startKubeApi();
    const client = new KubeClient(api.kubeConfig());
    const path = paths.leases('agents');
    const renewTime = new V1MicroTime('2026-12-05T10:00:00.123Z');
    const created = await client.create<V1Lease>(path, { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name: 'l', namespace: 'agents' }, spec: { holderIdentity: 'a', renewTime } });
    // Sent as the API server wants a MicroTime, and read back as the string it is on the wire.
    expect(api.store.get(LEASES, 'agents', 'l')?.['spec']).toMatchObject({ renewTime: '2026-12-05T10:00:00.123000Z' });
    expect(created.spec?.renewTime).toBe('2026-12-05T10:00:00.123000Z');
    expect(api.writes(FIELD_MANAGER)).toHaveLength(1);

    const read = await client.get<V1Lease>(paths.leases('agents', 'l'));
    const replaced = await client.replace<V1Lease>(paths.leases('agents', 'l'), { ...read, spec: { ...read.spec, holderIdentity: 'b' } });
    expect(replaced.spec?.holderIdentity).toBe('b');
    const stale = await rejection(client.replace<V1Lease>(paths.leases('agents', 'l'), { ...read, spec: { holderIdentity: 'c' } }));
    expect(stale).toBeInstanceOf(KubeApiError);
    expect(statusOf(stale)).toBe(409);
    expect(messageOf(stale)).toMatch(/^HTTP 409: .*the object has been modified/);
  });

  it('a missing object is 404; a list of none is empty with a resourceVersion', async () => {
    api = await startKubeApi();
    const client = new KubeClient(api.kubeConfig());
    const missing = await rejection(client.get<V1Secret>(paths.secrets('agents', 'nope')));
    expect(statusOf(missing)).toBe(404);
    expect(messageOf(missing)).toMatch(/^HTTP 404: .*not found/);
    const list = await client.list<V1Secret>(paths.secrets('agents'));
    expect(list.items).toEqual([]);
    expect(list.metadata?.resourceVersion).toMatch(/^\d+$/);
  });

  it('apply is server-side apply of the status subresource, forced, with the agent as field manager', async () => {
    api = await startKubeApi();
    api.store.put(REGISTRY_MIRRORS, { apiVersion: 'registry-proxy.dev/v1alpha1', kind: 'RegistryMirror', metadata: { name: 'corp' }, spec: { registry: 'r.example:5000', upstream: 'http://r.example:5000' } });
    const client = new KubeClient(api.kubeConfig());
    await client.apply(`${REGISTRY_MIRRORS_PATH}/corp/status`, { apiVersion: 'registry-proxy.dev/v1alpha1', kind: 'RegistryMirror', metadata: { name: 'corp' }, status: { observedGeneration: 1 } });
    expect(api.store.get(REGISTRY_MIRRORS, undefined, 'corp')?.['status']).toMatchObject({ observedGeneration: 1 });
    const [write] = api.writes(FIELD_MANAGER);
    expect(write).toMatchObject({ method: 'PATCH', contentType: 'application/apply-patch+yaml', path: `${REGISTRY_MIRRORS_PATH}/corp/status` });
    expect(write?.query).toMatchObject({ fieldManager: FIELD_MANAGER, force: 'true' });
  });

  it('a wrong token is 401, and no answer at all is the connection error', async () => {
    api = await startKubeApi();
    const kc = api.kubeConfig();
    const user = kc.getCurrentUser();
    if (user === null) throw new Error('no user');
    (user as { token?: string }).token = 'wrong';
    expect(statusOf(await rejection(new KubeClient(kc).list(paths.secrets('agents'))))).toBe(401);
    const url = api.url;
    await api.stop();
    api = undefined;
    const refused = await rejection(new KubeClient(kubeConfigAt(url, 't')).list(paths.secrets('agents')));
    expect(statusOf(refused)).toBeUndefined();
    expect(messageOf(refused)).not.toBe('');
  });
});

describe('KubeClient over TLS, as in a cluster (the API server certificate checked against the kubeconfig CA)', () => {
  let server: Server | undefined;

  afterEach(async () => {
    server?.closeAllConnections();
    await new Promise((resolve) => (server === undefined ? resolve(undefined) : server.close(resolve)));
    server = undefined;
  });

  /** An HTTPS API server with a certificate from `ca`, answering a list and a watch of one event; its kubeconfig trusts `trusted`. */
  async function tlsApi(ca: IssuedPem, trusted: IssuedPem): Promise<{ kc: KubeConfig; auth: string[] }> {
    const leaf = issueCertificate(ca, { commonName: 'kube-apiserver', validityMs: DAY_MS, ipAddresses: ['127.0.0.1'] });
    const auth: string[] = [];
    server = createServer({ cert: leaf.certPem, key: leaf.keyPem }, (req, res) => {
      auth.push(req.headers.authorization ?? '');
      res.setHeader('content-type', 'application/json');
      if (req.url?.includes('watch=true')) {
        res.end(`${JSON.stringify({ type: 'ADDED', object: { metadata: { name: 's', namespace: 'agents', resourceVersion: '8' } } })}\n`);
        return;
      }
      res.end(JSON.stringify({ kind: 'SecretList', apiVersion: 'v1', metadata: { resourceVersion: '7' }, items: [] }));
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    const kc = kubeConfigAt(`https://127.0.0.1:${port}`, 'sa-token', trusted.certPem);
    return { kc, auth };
  }

  it('lists and watches with the bearer token when the certificate is from the kubeconfig CA', async () => {
    const ca = createCa({ commonName: 'cluster CA', validityMs: DAY_MS });
    const { kc, auth } = await tlsApi(ca, ca);
    const client = new KubeClient(kc);
    expect((await client.list(paths.secrets('agents'))).metadata?.resourceVersion).toBe('7');
    const events: string[] = [];
    const ended = await new Promise<unknown>((resolve) => void client.watch(paths.secrets('agents'), {}, (type) => events.push(type), resolve));
    expect(ended).toBeNull();
    expect(events).toEqual(['ADDED']);
    expect(auth).toEqual(['Bearer sa-token', 'Bearer sa-token']);
  });

  it('refuses an API server whose certificate is not from the kubeconfig CA, before sending the token', async () => {
    const ca = createCa({ commonName: 'cluster CA', validityMs: DAY_MS });
    const other = createCa({ commonName: 'someone else', validityMs: DAY_MS });
    const { kc, auth } = await tlsApi(other, ca);
    const client = new KubeClient(kc);
    const refused = await rejection(client.list(paths.secrets('agents')));
    expect(statusOf(refused)).toBeUndefined();
    const ended = await new Promise<unknown>((resolve) => void client.watch(paths.secrets('agents'), {}, () => undefined, resolve));
    expect(ended).toBeInstanceOf(Error);
    expect(auth).toEqual([]);
  });
});
