import { readFile } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { type Logger, pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { ENDPOINT_SLICES, type KubeApi, type PolicyRule, startKubeApi } from '../../test/fixtures/kube-api.ts';
import { pollUntil } from '../../test/fixtures/poll.ts';
import type { PeerMember } from '../peers/rendezvous.ts';
import { KubeClient } from './client.ts';
import { EndpointSliceMembers, SERVICE_NAME_LABEL } from './peer-members.ts';

const NS = 'registry-proxy-agent';
const SERVICE = 'registry-proxy-agent-peers';
const PORT = 5443;
const SLICES_PATH = `/apis/discovery.k8s.io/v1/namespaces/${NS}/endpointslices`;

interface Endpoint {
  addresses: string[];
  nodeName?: string;
  conditions?: { ready?: boolean | null; serving?: boolean | null; terminating?: boolean | null };
}

interface SliceOptions {
  addressType?: 'IPv4' | 'IPv6' | 'FQDN';
  ports?: Array<{ name?: string; port?: number; protocol?: string }>;
  service?: string;
  namespace?: string;
}

const ready = (ip: string, nodeName?: string): Endpoint => ({ addresses: [ip], ...(nodeName === undefined ? {} : { nodeName }), conditions: { ready: true, serving: true, terminating: false } });
const member = (name: string, ip: string, port = PORT): PeerMember => ({ name, url: `https://${ip}:${port}` });

interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

describe('EndpointSliceMembers: peer membership from the EndpointSlices of the headless Service', () => {
  let api: KubeApi;
  let members: EndpointSliceMembers | undefined;
  let changes: PeerMember[][];
  let logs: LogLine[];

  /** An EndpointSlice as the EndpointSlice controller writes it for the agents' Service. */
  function putSlice(name: string, endpoints: Endpoint[], opts: SliceOptions = {}): void {
    api.store.put(ENDPOINT_SLICES, {
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: {
        name,
        namespace: opts.namespace ?? NS,
        labels: { [SERVICE_NAME_LABEL]: opts.service ?? SERVICE, 'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io' },
      },
      addressType: opts.addressType ?? 'IPv4',
      endpoints,
      ports: opts.ports ?? [{ name: 'peer', port: PORT, protocol: 'TCP' }],
    });
  }

  /** A logger whose lines land in `logs`. */
  function logger(): Logger {
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString('utf8').split('\n')) if (line !== '') logs.push(JSON.parse(line) as LogLine);
        done();
      },
    });
    return pino({ level: 'debug' }, sink);
  }

  /** Members of the Service on the running API double, as the agent starts them. */
  async function start(initialSyncTimeoutMs = 2_000): Promise<EndpointSliceMembers> {
    members = new EndpointSliceMembers({
      client: new KubeClient(api.kubeConfig()),
      namespace: NS,
      service: SERVICE,
      log: logger(),
      onChange: (list) => changes.push(list),
      initialSyncTimeoutMs,
      backoff: { initialMs: 50, maxMs: 200 },
    });
    await members.start();
    return members;
  }

  const until = (what: string, check: () => boolean): Promise<void> => pollUntil(check, { what, timeoutMs: 5_000, intervalMs: 10 });
  const logged = (msg: string): LogLine[] => logs.filter((l) => l.msg.includes(msg));
  const last = (): PeerMember[] | undefined => changes[changes.length - 1];

  beforeEach(() => {
    changes = [];
    logs = [];
  });

  afterEach(async () => {
    await members?.stop();
    members = undefined;
    await api?.stop();
    api = undefined as unknown as KubeApi;
  });

  describe('with the API double up from the start', () => {
    beforeEach(async () => {
      api = await startKubeApi({ bookmarkIntervalMs: 60_000 });
    });

    it('start() resolves with the first list applied: ready members only, a missing ready counting as ready, sorted by name', async () => {
      putSlice('peers-a', [
        ready('10.0.0.3', 'node-c'),
        { addresses: ['10.0.0.1'], nodeName: 'node-a', conditions: { ready: true } },
        { addresses: ['10.0.0.2'], nodeName: 'node-b', conditions: { ready: false, serving: false, terminating: false } },
        // Absent and null conditions: ready per the API.
        { addresses: ['10.0.0.4'], nodeName: 'node-d', conditions: {} },
        { addresses: ['10.0.0.5'], nodeName: 'node-e' },
        { addresses: ['10.0.0.6'], nodeName: 'node-f', conditions: { ready: null } },
        // Terminating: not ready (and serving), and never a member even where ready stays true
        // (publishNotReadyAddresses).
        { addresses: ['10.0.0.7'], nodeName: 'node-g', conditions: { ready: false, serving: true, terminating: true } },
        { addresses: ['10.0.0.8'], nodeName: 'node-h', conditions: { ready: true, serving: true, terminating: true } },
      ]);
      const m = await start();
      const expected = [member('node-a', '10.0.0.1'), member('node-c', '10.0.0.3'), member('node-d', '10.0.0.4'), member('node-e', '10.0.0.5'), member('node-f', '10.0.0.6')];
      expect(m.current()).toEqual(expected);
      expect(changes).toEqual([expected]);
      // It lists and watches only the Service's slices, in its namespace.
      const requests = () => api.requests.filter((r) => r.path === SLICES_PATH);
      await until('watching', () => requests().some((r) => r.watch));
      expect(requests().map((r) => [r.watch, r.query['labelSelector']])).toEqual([
        [false, `${SERVICE_NAME_LABEL}=${SERVICE}`],
        [true, `${SERVICE_NAME_LABEL}=${SERVICE}`],
      ]);
    });

    it('ignores slices of other Services and other namespaces, and reports no change for an empty first list', async () => {
      putSlice('other', [ready('10.0.0.9', 'node-x')], { service: 'registry-proxy-agent-metrics' });
      putSlice('elsewhere', [ready('10.0.0.8', 'node-y')], { namespace: 'default' });
      const m = await start();
      expect(m.current()).toEqual([]);
      expect(changes).toEqual([]);
    });

    it('leaves out a ready endpoint without nodeName, logging it once while it stays', async () => {
      putSlice('peers-a', [ready('10.0.0.1', 'node-a'), ready('10.0.0.2')]);
      const m = await start();
      expect(m.current()).toEqual([member('node-a', '10.0.0.1')]);
      const leftOut = () => logged('endpoint left out');
      expect(leftOut()).toHaveLength(1);
      expect(leftOut()[0]).toMatchObject({ level: 40, slice: 'peers-a', address: '10.0.0.2', reason: expect.stringContaining('no nodeName') });
      // More changes: still one line for it.
      putSlice('peers-a', [ready('10.0.0.1', 'node-a'), ready('10.0.0.2'), ready('10.0.0.3', 'node-c')]);
      await until('node-c joined', () => last()?.length === 2);
      expect(leftOut()).toHaveLength(1);
      // A not-ready endpoint without a node name is not a candidate, so not worth a line.
      putSlice('peers-a', [ready('10.0.0.1', 'node-a'), { addresses: ['10.0.0.4'], conditions: { ready: false } }]);
      await until('node-c left', () => last()?.length === 1);
      expect(leftOut()).toHaveLength(1);
    });

    it('joins the slices of the Service; a node in two slices is one member, its lowest ready url', async () => {
      putSlice('peers-a', [ready('10.0.0.1', 'node-a'), ready('10.0.1.2', 'node-b'), { addresses: ['10.0.0.3'], nodeName: 'node-c', conditions: { ready: false } }]);
      putSlice('peers-b', [ready('10.0.0.2', 'node-b'), ready('10.0.1.3', 'node-c'), ready('10.0.0.4', 'node-d')], { ports: [{ name: 'peer', port: 6000 }] });
      const m = await start();
      expect(m.current()).toEqual([
        member('node-a', '10.0.0.1'),
        // "https://10.0.0.2:6000" < "https://10.0.1.2:5443": the url decides, whichever slice it is in.
        member('node-b', '10.0.0.2', 6000),
        // Not ready in peers-a, ready in peers-b: the ready one, though its url sorts later.
        member('node-c', '10.0.1.3', 6000),
        member('node-d', '10.0.0.4', 6000),
      ]);
      // Listed twice in one slice (mid-transition): still one member.
      putSlice('peers-a', [ready('10.0.0.9', 'node-a'), ready('10.0.0.1', 'node-a')]);
      await until('node-a once', () => last()?.filter((x) => x.name === 'node-a').length === 1 && last()?.length === 4);
      expect(m.current().find((x) => x.name === 'node-a')).toEqual(member('node-a', '10.0.0.1'));
    });

    it('brackets IPv6 addresses', async () => {
      putSlice('peers-v6', [ready('fd00::1', 'node-a'), ready('2001:db8::2', 'node-b')], { addressType: 'IPv6' });
      const m = await start();
      expect(m.current()).toEqual([
        { name: 'node-a', url: `https://[fd00::1]:${PORT}` },
        { name: 'node-b', url: `https://[2001:db8::2]:${PORT}` },
      ]);
    });

    it('uses the port named portName, and leaves out a slice without it', async () => {
      putSlice('peers-a', [ready('10.0.0.1', 'node-a')], { ports: [{ name: 'metrics', port: 9402 }, { name: 'peer', port: 5443 }] });
      putSlice('peers-b', [ready('10.0.0.2', 'node-b')], { ports: [{ name: 'metrics', port: 9402 }] });
      putSlice('peers-fqdn', [ready('agent.example', 'node-c')], { addressType: 'FQDN' });
      const m = await start();
      expect(m.current()).toEqual([member('node-a', '10.0.0.1')]);
      expect(logged('endpoint left out').map((l) => [l['slice'], l['reason']])).toEqual([
        ['peers-b', 'no port named "peer"'],
        ['peers-fqdn', 'address type FQDN: peers are addressed by IP'],
      ]);
    });

    it('follows slice updates and deletions, reporting only real changes', async () => {
      putSlice('peers-a', [ready('10.0.0.1', 'node-a'), ready('10.0.0.2', 'node-b')]);
      putSlice('peers-b', [ready('10.0.0.3', 'node-c')]);
      const m = await start();
      expect(changes).toHaveLength(1);

      // node-b turns not ready: it leaves.
      putSlice('peers-a', [ready('10.0.0.1', 'node-a'), { addresses: ['10.0.0.2'], nodeName: 'node-b', conditions: { ready: false } }]);
      await until('node-b left', () => changes.length === 2);
      expect(last()).toEqual([member('node-a', '10.0.0.1'), member('node-c', '10.0.0.3')]);

      // The same members, reordered, relabelled, plus a nameless endpoint: no change to report (the
      // log line for the nameless endpoint shows the update was seen).
      api.store.put(ENDPOINT_SLICES, {
        metadata: { name: 'peers-a', namespace: NS, labels: { [SERVICE_NAME_LABEL]: SERVICE, extra: 'yes' } },
        addressType: 'IPv4',
        endpoints: [ready('10.0.0.99'), ready('10.0.0.1', 'node-a')],
        ports: [{ name: 'peer', port: PORT }],
      });
      await until('update seen', () => logged('endpoint left out').length === 1);
      expect(changes).toHaveLength(2);

      // A node's address changes (a url change): reported.
      putSlice('peers-b', [ready('10.0.0.33', 'node-c')]);
      await until('node-c moved', () => changes.length === 3);
      expect(last()).toEqual([member('node-a', '10.0.0.1'), member('node-c', '10.0.0.33')]);

      // A slice deleted: its members leave.
      api.store.delete(ENDPOINT_SLICES, NS, 'peers-b');
      await until('peers-b gone', () => changes.length === 4);
      expect(last()).toEqual([member('node-a', '10.0.0.1')]);
      expect(m.current()).toEqual([member('node-a', '10.0.0.1')]);

      // The slice leaving the Service (label changed) is a deletion too.
      api.store.put(ENDPOINT_SLICES, {
        metadata: { name: 'peers-a', namespace: NS, labels: { [SERVICE_NAME_LABEL]: 'something-else' } },
        addressType: 'IPv4',
        endpoints: [ready('10.0.0.1', 'node-a')],
        ports: [{ name: 'peer', port: PORT }],
      });
      await until('empty', () => changes.length === 5);
      expect(last()).toEqual([]);
      expect(m.current()).toEqual([]);
    });

    it('keeps the last list while the API server is down, and catches up when it is back', async () => {
      putSlice('peers-a', [ready('10.0.0.1', 'node-a'), ready('10.0.0.2', 'node-b')]);
      const m = await start();
      const before = m.current();
      expect(before).toHaveLength(2);

      await api.setDown(true);
      await until('watch failure logged', () => logged('Kubernetes watch failed').length > 0);
      // Changes the agent cannot see yet; meanwhile nothing is dropped.
      putSlice('peers-a', [ready('10.0.0.1', 'node-a')]);
      putSlice('peers-b', [ready('10.0.0.3', 'node-c')]);
      await until('a retry failed too', () => logged('Kubernetes watch still failing').length > 0);
      expect(m.current()).toEqual(before);
      expect(changes).toHaveLength(1);

      await api.setDown(false);
      await until('caught up', () => changes.length === 2);
      expect(last()).toEqual([member('node-a', '10.0.0.1'), member('node-c', '10.0.0.3')]);
      expect(logged('Kubernetes watch restored')).toHaveLength(1);
    });

    it('never reports a half-applied relist (410 Expired after an outage)', async () => {
      putSlice('peers-a', [ready('10.0.0.1', 'node-a'), ready('10.0.0.2', 'node-b')]);
      const m = await start();
      await api.setDown(true);
      await until('watch failure logged', () => logged('Kubernetes watch failed').length > 0);
      // The controller re-sliced: the same endpoints now in another slice; history compacted, so the
      // informer has to relist (deleting peers-a, then adding peers-c).
      api.store.delete(ENDPOINT_SLICES, NS, 'peers-a');
      putSlice('peers-c', [ready('10.0.0.2', 'node-b'), ready('10.0.0.1', 'node-a')]);
      api.expireWatches();
      api.clearRequests();
      await api.setDown(false);
      await until('relisted', () => api.requests.some((r) => r.path === SLICES_PATH && !r.watch && r.status === 200));
      // Then something real, to know the relist has been applied.
      putSlice('peers-d', [ready('10.0.0.3', 'node-c')]);
      await until('node-c joined', () => changes.length === 2);
      expect(changes).toEqual([
        [member('node-a', '10.0.0.1'), member('node-b', '10.0.0.2')],
        [member('node-a', '10.0.0.1'), member('node-b', '10.0.0.2'), member('node-c', '10.0.0.3')],
      ]);
      expect(m.current()).toEqual(last());
    });

    it('survives an onChange that throws', async () => {
      putSlice('peers-a', [ready('10.0.0.1', 'node-a')]);
      members = new EndpointSliceMembers({
        client: new KubeClient(api.kubeConfig()),
        namespace: NS,
        service: SERVICE,
        log: logger(),
        onChange: () => {
          throw new Error('refused');
        },
      });
      await members.start();
      expect(members.current()).toEqual([member('node-a', '10.0.0.1')]);
      expect(logged('applying the new member list failed')).toHaveLength(1);
    });
  });

  it('starts without the API server: no members, a warning, and the list once it answers', async () => {
    api = await startKubeApi({ bookmarkIntervalMs: 60_000 });
    putSlice('peers-a', [ready('10.0.0.1', 'node-a')]);
    await api.setDown(true);
    const m = await start(200);
    expect(m.current()).toEqual([]);
    expect(logged('EndpointSlices not listed yet')).toHaveLength(1);
    await api.setDown(false);
    await until('listed', () => changes.length === 1);
    expect(m.current()).toEqual([member('node-a', '10.0.0.1')]);
  });

  it('says clearly, once, when RBAC does not allow listing EndpointSlices, and keeps retrying', async () => {
    api = await startKubeApi({ bookmarkIntervalMs: 60_000, authorization: { user: `system:serviceaccount:${NS}:registry-proxy-agent`, clusterRules: [] } });
    putSlice('peers-a', [ready('10.0.0.1', 'node-a')]);
    const m = await start(200);
    expect(m.current()).toEqual([]);
    await until('three denied lists', () => api.requests.filter((r) => r.path === SLICES_PATH && r.status === 403).length >= 3);
    const denied = logged('may not list EndpointSlices');
    expect(denied).toHaveLength(1);
    expect(denied[0]).toMatchObject({ level: 50, namespace: NS, service: SERVICE });
    expect(denied[0]?.msg).toContain('endpointslices.discovery.k8s.io');
    expect(String(denied[0]?.['err'])).toMatch(/^HTTP 403: endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:registry-proxy-agent:registry-proxy-agent" cannot list/);
  });

  it('needs no more than the Role of manifests/base/rbac.yaml', async () => {
    const docs = parseAllDocuments(await readFile(new URL('../../manifests/base/rbac.yaml', import.meta.url), 'utf8')).map(
      (d) => d.toJS() as { kind: string; metadata: { namespace?: string }; rules?: PolicyRule[] },
    );
    const role = docs.find((d) => d.kind === 'Role' && d.metadata.namespace === NS);
    const clusterRole = docs.find((d) => d.kind === 'ClusterRole');
    api = await startKubeApi({
      bookmarkIntervalMs: 60_000,
      authorization: { user: `system:serviceaccount:${NS}:registry-proxy-agent`, clusterRules: clusterRole?.rules ?? [], namespaceRules: { [NS]: role?.rules ?? [] } },
    });
    putSlice('peers-a', [ready('10.0.0.1', 'node-a')]);
    const m = await start();
    expect(m.current()).toEqual([member('node-a', '10.0.0.1')]);
    putSlice('peers-a', [ready('10.0.0.1', 'node-a'), ready('10.0.0.2', 'node-b')]);
    await until('watched', () => changes.length === 2);
    expect(api.requests.filter((r) => r.status === 403)).toEqual([]);
  });
});
