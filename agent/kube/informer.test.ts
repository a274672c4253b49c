import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { V1Secret } from '@kubernetes/client-node';
import type { KubeConfig } from '@kubernetes/client-node';
import { type Logger, pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { type KubeApi, type KubeApiRequest, SECRETS, kubeConfigAt, startKubeApi } from '../../test/fixtures/kube-api.ts';
import { pollUntil } from '../../test/fixtures/poll.ts';
import { KubeClient, paths } from './client.ts';
import { ResilientInformer } from './informer.ts';

const NS = 'agents';
const PATH = paths.secrets(NS);

interface LogLine {
  level: number;
  msg: string;
  informer?: string;
  err?: string;
}

let api: KubeApi | undefined;
let informer: ResilientInformer<V1Secret> | undefined;
let server: Server | undefined;
let logs: LogLine[] = [];
let changes = 0;

afterEach(async () => {
  await informer?.stop();
  informer = undefined;
  await api?.stop();
  api = undefined;
  await new Promise((resolve) => (server === undefined ? resolve(undefined) : server.close(resolve)));
  server?.closeAllConnections();
  server = undefined;
  logs = [];
  changes = 0;
});

function logger(): Logger {
  return pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
}

function secret(name: string, value: string, labels: Record<string, string> = { app: 'rpa' }): V1Secret {
  return { apiVersion: 'v1', kind: 'Secret', metadata: { name, namespace: NS, labels }, data: { v: Buffer.from(value).toString('base64') } };
}

function start(kc: KubeConfig, labelSelector?: string, watchIdleTimeoutMs?: number): ResilientInformer<V1Secret> {
  informer = new ResilientInformer<V1Secret>({
    client: new KubeClient(kc, watchIdleTimeoutMs === undefined ? {} : { watchIdleTimeoutMs }),
    path: PATH,
    ...(labelSelector === undefined ? {} : { labelSelector }),
    what: 'secrets',
    log: logger(),
    onChange: () => (changes += 1),
    backoff: { initialMs: 50, maxMs: 200 },
  });
  informer.start();
  return informer;
}

const until = (what: string, check: () => boolean | Promise<boolean>): Promise<void> => pollUntil(check, { what, timeoutMs: 5_000, intervalMs: 10 });
const valueOf = (s: V1Secret | undefined): string | undefined => (s?.data?.['v'] === undefined ? undefined : Buffer.from(s.data['v'], 'base64').toString());
const secretRequests = (kube: KubeApi): KubeApiRequest[] => kube.requests.filter((r) => r.path === PATH);

describe('ResilientInformer against the API double', () => {
  it('lists, then watches with bookmarks and the label selector: adds, updates and deletes reach the cache', async () => {
    api = await startKubeApi({ bookmarkIntervalMs: 60_000 });
    api.store.put(SECRETS, secret('one', 'a'));
    api.store.put(SECRETS, secret('other', 'x', { app: 'someone-else' }));
    const inf = start(api.kubeConfig(), 'app=rpa');
    expect(await inf.whenSynced(5_000)).toBe(true);
    expect(inf.list().map((s) => s.metadata?.name)).toEqual(['one']);

    await until('watching', () => api!.watchCount() === 1);
    api.store.put(SECRETS, secret('two', 'b'));
    await until('two added', () => valueOf(inf.get('two', NS)) === 'b');
    api.store.put(SECRETS, secret('one', 'a2'));
    await until('one updated', () => valueOf(inf.get('one', NS)) === 'a2');
    api.store.delete(SECRETS, NS, 'two');
    await until('two deleted', () => inf.get('two', NS) === undefined);
    api.store.put(SECRETS, secret('other', 'y', { app: 'someone-else' }));
    expect(inf.get('other', NS)).toBeUndefined();

    const watches = secretRequests(api).filter((r) => r.watch);
    expect(watches.length).toBeGreaterThan(0);
    for (const w of watches) {
      expect(w.query).toMatchObject({ allowWatchBookmarks: 'true', labelSelector: 'app=rpa' });
      // The server ends each stream after 5 to 10 minutes (as client-go asks), not the client after 30 s of quiet.
      expect(Number(w.query['timeoutSeconds'])).toBeGreaterThanOrEqual(300);
      expect(Number(w.query['timeoutSeconds'])).toBeLessThan(600);
    }
    expect(secretRequests(api).filter((r) => !r.watch)).toHaveLength(1);
    expect(changes).toBeGreaterThanOrEqual(4); // the list, the add, the update, the delete
  });

  it('a reconnect after the API server went away resumes from the bookmark, without a relist, and keeps the cache meanwhile', async () => {
    api = await startKubeApi({ bookmarkIntervalMs: 60_000 });
    api.store.put(SECRETS, secret('one', 'a'));
    const inf = start(api.kubeConfig());
    await inf.whenSynced(5_000);
    await until('watching', () => api!.watchCount() === 1);
    // Writes elsewhere move the resourceVersion on; the bookmark tells the quiet watch.
    for (let i = 0; i < 5; i += 1) api.store.put({ group: 'coordination.k8s.io', version: 'v1', resource: 'leases' }, { metadata: { name: `l${i}`, namespace: 'x' }, spec: {} });
    const bookmarked = api.store.resourceVersion();
    api.bookmark();
    await new Promise((resolve) => setTimeout(resolve, 100));

    await api.setDown(true);
    await until('failure logged', () => logs.some((l) => l.msg.startsWith('Kubernetes watch failed')));
    expect(valueOf(inf.get('one', NS))).toBe('a');
    api.clearRequests();
    await api.setDown(false);
    await until('watching again', () => api!.watchCount() === 1);
    await until('restored logged', () => logs.some((l) => l.msg === 'Kubernetes watch restored'));

    const after = secretRequests(api);
    expect(after.filter((r) => !r.watch)).toEqual([]);
    expect(after.find((r) => r.watch && r.status === 200)?.query.resourceVersion).toBe(bookmarked);
    // One warning for the outage, whatever the number of retries.
    expect(logs.filter((l) => l.level === 40)).toHaveLength(1);
  });

  it('410 Expired relists at once, replacing the cache: an object deleted meanwhile is gone, no failure logged', async () => {
    api = await startKubeApi({ bookmarkIntervalMs: 60_000 });
    api.store.put(SECRETS, secret('one', 'a'));
    api.store.put(SECRETS, secret('two', 'b'));
    const inf = start(api.kubeConfig());
    await inf.whenSynced(5_000);
    await until('watching', () => api!.watchCount() === 1);
    api.clearRequests();
    api.expireWatches();
    await until('relisted', () => secretRequests(api!).some((r) => !r.watch && r.status === 200));
    await until('watching again', () => secretRequests(api!).some((r) => r.watch && r.status === 200));
    api.store.delete(SECRETS, NS, 'two');
    api.store.put(SECRETS, secret('three', 'c'));
    await until('three added', () => inf.get('three', NS) !== undefined);
    expect(inf.list().map((s) => s.metadata?.name).sort()).toEqual(['one', 'three']);
    expect(logs.filter((l) => l.msg.startsWith('Kubernetes watch'))).toEqual([]);
  });

  it('a watch the API server refuses (403) backs off and retries without relisting; the listed objects stay', async () => {
    api = await startKubeApi({
      bookmarkIntervalMs: 60_000,
      authorization: { user: 'system:serviceaccount:agents:rpa', clusterRules: [], namespaceRules: { [NS]: [{ apiGroups: [''], resources: ['secrets'], verbs: ['list'] }] } },
    });
    api.store.put(SECRETS, secret('one', 'a'));
    const inf = start(api.kubeConfig());
    expect(await inf.whenSynced(5_000)).toBe(true);
    await until('three refused watches', () => secretRequests(api!).filter((r) => r.watch && r.status === 403).length >= 3);
    expect(secretRequests(api).filter((r) => !r.watch)).toHaveLength(1);
    expect(valueOf(inf.get('one', NS))).toBe('a');
    const warnings = logs.filter((l) => l.level === 40);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.err).toMatch(/403|Forbidden/);
  });

  it('stop() closes the open watch and nothing is asked after it', async () => {
    api = await startKubeApi({ bookmarkIntervalMs: 60_000 });
    const inf = start(api.kubeConfig());
    await inf.whenSynced(5_000);
    await until('watching', () => api!.watchCount() === 1);
    await inf.stop();
    await until('watch closed', () => api!.watchCount() === 0);
    const count = api.requests.length;
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(api.requests.length).toBe(count);
  });
});

describe('ResilientInformer against an API server that misbehaves on watches', () => {
  let lists = 0;
  let watches = 0;

  /** Lists one empty collection; every watch request is answered by `onWatch`. */
  async function serve(onWatch: (res: import('node:http').ServerResponse) => void): Promise<KubeConfig> {
    lists = 0;
    watches = 0;
    server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      res.setHeader('content-type', 'application/json');
      if (url.searchParams.get('watch') === 'true') {
        watches += 1;
        onWatch(res);
        return;
      }
      lists += 1;
      res.end(JSON.stringify({ kind: 'SecretList', apiVersion: 'v1', metadata: { resourceVersion: '7' }, items: [] }));
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    return kubeConfigAt(`http://127.0.0.1:${port}`, 't');
  }

  it('a stream that sends its headers and then nothing is reopened after the idle timeout, not logged as a failure', async () => {
    const kc = await serve((res) => res.flushHeaders());
    const inf = start(kc, undefined, 200);
    expect(await inf.whenSynced(5_000)).toBe(true);
    await until('reopened twice', () => watches >= 3);
    expect(lists).toBe(1);
    expect(logs.filter((l) => l.msg.startsWith('Kubernetes watch'))).toEqual([]);
  });

  it('a line that is not JSON ends the stream as a failure: logged, backed off, the cache kept', async () => {
    const kc = await serve((res) => res.end('{"type":"ADDED","object":\n'));
    const inf = start(kc);
    expect(await inf.whenSynced(5_000)).toBe(true);
    await until('failure logged', () => logs.some((l) => l.msg.startsWith('Kubernetes watch failed') && /not JSON/.test(l.err ?? '')));
    expect(lists).toBe(1);
  });

  it('a server that ends every watch at once: reconnects with growing delays, not in a tight loop', async () => {
    const kc = await serve((res) => res.end());
    const inf = start(kc);
    expect(await inf.whenSynced(5_000)).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    // Delays 0, 50, 100, 200, 200 …: about 9 watches in 1.5 s; a tight loop makes hundreds.
    expect(watches).toBeGreaterThanOrEqual(3);
    expect(watches).toBeLessThan(20);
    expect(lists).toBe(1);
  });
});
