import { createHash } from 'node:crypto';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:https';
import { connect as netConnect } from 'node:net';
import { connect } from 'node:tls';
import { Agent } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Digest } from '../agent/oci/digest.ts';
import { parseRepositoryName } from '../agent/oci/reference.ts';
import { rankOwners } from '../agent/peers/rendezvous.ts';
import { type InProcessAgent, type TestMirror, startAgent } from './fixtures/agent.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { fetchAnswer, get } from './fixtures/http-client.ts';
import { type MemoryBlob, makeImage, makeRandomBlob, pushBlob, pushImage } from './fixtures/image.ts';
import { parseMetrics } from './fixtures/metrics-text.ts';
import { freePort } from './fixtures/net.ts';
import { TestPeerCa, peersToml } from './fixtures/peer-certs.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

/**
 * Peer sharing between agents in one process: each agent's peer listener on its own loopback
 * address (127.0.0.1x), a real distribution registry behind a counting proxy standing for the
 * tunnel. The network-namespace e2e (peers-lab.test.ts) runs the same with separate processes.
 */

const REGISTRY = 'registry.corp.example:5000';
const REPO = 'team/app';
const auth = { username: 'puller', password: 'pull-secret' };
const basic = (user: string, password: string): string => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const GOOD = { authorization: basic(auth.username, auth.password) };

interface Node {
  name: string;
  address: string;
  port: number;
  url: string;
}

let dir: string;
let registry: RegistryHandle;
let tunnel: CountingProxy;
const ca = new TestPeerCa();
const running: InProcessAgent[] = [];
const servers: TlsServer[] = [];

beforeAll(async () => {
  dir = await makeTempDir('peers-test-');
  registry = await startRegistry({ auth });
  tunnel = await startCountingProxy(registry.url);
});

afterEach(async () => {
  await Promise.all(running.splice(0).map((a) => a.stop()));
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
  tunnel.reset();
  await tunnel.setFault(undefined);
});

afterAll(async () => {
  await tunnel?.stop();
  await registry?.stop();
  await removeTempDir(dir);
});

async function nodes(count: number, first = 11): Promise<Node[]> {
  const list: Node[] = [];
  for (let i = 0; i < count; i++) {
    const address = `127.0.0.${first + i}`;
    const port = await freePort();
    list.push({ name: `node-${first + i}`, address, port, url: `https://${address}:${port}` });
  }
  return list;
}

async function startNode(node: Node, members: readonly Node[], extra: string[] = [], mirror: Partial<TestMirror> = {}, extraToml?: string): Promise<InProcessAgent> {
  const nodeDir = await makeTempDir(`peers-${node.name}-`);
  const files = await ca.writeFiles(nodeDir, node.name, [node.address]);
  const agent = await startAgent({
    dir: nodeDir,
    mirrors: [{ registry: REGISTRY, upstream: tunnel.url, ...mirror }],
    ...(extraToml ? { extraToml } : {}),
    tablesToml: peersToml({ nodeName: node.name, listen: `${node.address}:${node.port}`, members: members.map(({ name, url }) => ({ name, url })), files, extra }),
  });
  running.push(agent);
  await agent.runtime.peers!.listening();
  return agent;
}

function blobUrl(agent: InProcessAgent, digest: string): string {
  return `${agent.url}/v2/${REPO}/blobs/${digest}?ns=${REGISTRY}`;
}

function tunnelGets(digest: string): number {
  return tunnel.count({ method: 'GET', pathIncludes: digest });
}

function tunnelBytes(digest: string): number {
  return tunnel.requests.filter((r) => r.method === 'GET' && r.path.includes(digest)).reduce((sum, r) => sum + r.bytes, 0);
}

async function metric(agent: InProcessAgent, name: string): Promise<number> {
  const text = await (await fetch(`${agent.runtime.healthUrl}/metrics`)).text();
  return parseMetrics(text).get(name) ?? 0;
}

function sha(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

/** A blob whose owner among `members` is `owner`. */
function blobOwnedBy(owner: string, members: readonly Node[], bytes: number): MemoryBlob {
  for (;;) {
    const blob = makeRandomBlob(bytes);
    if (rankOwners(blob.digest, members)[0]!.name === owner) return blob;
  }
}

describe('peer sharing (agents in one process)', () => {
  it('four agents asking for one cold blob at once: the tunnel carries it once, every agent gets the right bytes and keeps a copy', async () => {
    const members = await nodes(4);
    const agents = await Promise.all(members.map((m) => startNode(m, members)));
    const blob = makeRandomBlob(24 * 1024 * 1024);
    await pushBlob(registry.url, REPO, blob, auth);
    tunnel.reset();

    const answers = await Promise.all(agents.map((a) => get(blobUrl(a, blob.digest), GOOD)));
    for (const answer of answers) {
      expect(answer.status).toBe(200);
      expect(sha(answer.body)).toBe(blob.digest);
    }
    expect(tunnelGets(blob.digest)).toBe(1);
    expect(tunnelBytes(blob.digest)).toBe(blob.bytes.length);
    // Each non-owner received the blob from its owner, and cached it: a second round moves nothing.
    const owner = rankOwners(blob.digest, members)[0]!.name;
    const received = await Promise.all(agents.map((a) => metric(a, 'registry_proxy_peer_bytes_total{direction="received"}')));
    expect(received.filter((bytes) => bytes === blob.bytes.length)).toHaveLength(3);
    const ownerAgent = agents[members.findIndex((m) => m.name === owner)]!;
    expect(await metric(ownerAgent, 'registry_proxy_peer_bytes_total{direction="served"}')).toBe(3 * blob.bytes.length);
    expect(await metric(ownerAgent, `registry_proxy_upstream_blob_bytes_total{registry="${REGISTRY}"}`)).toBe(blob.bytes.length);
    const again = await Promise.all(agents.map((a) => get(blobUrl(a, blob.digest), GOOD)));
    for (const answer of again) expect(sha(answer.body)).toBe(blob.digest);
    expect(tunnelGets(blob.digest)).toBe(1);
  });

  it('the owner down: the next candidate serves, the tunnel carries the blob once more at most, the fallback is counted and logged', async () => {
    const members = await nodes(4, 21);
    const blob = blobOwnedBy(members[0]!.name, members, 8 * 1024 * 1024);
    await pushBlob(registry.url, REPO, blob, auth);
    // The owner is a member but never starts: connections to it are refused.
    const agents = await Promise.all(members.slice(1).map((m) => startNode(m, members)));
    tunnel.reset();
    const answers = await Promise.all(agents.map((a) => get(blobUrl(a, blob.digest), GOOD)));
    for (const answer of answers) expect(sha(answer.body)).toBe(blob.digest);
    expect(tunnelGets(blob.digest)).toBe(1);
    const fallbacks = await Promise.all(agents.map((a) => metric(a, 'registry_proxy_peer_fallbacks_total{step="peer",reason="connect"}')));
    expect(fallbacks.reduce((a, b) => a + b, 0)).toBeGreaterThanOrEqual(1);
    expect(agents.some((a) => a.logs.some((l) => l['msg'] === 'peer failed: trying the next peer' && l['peer'] === members[0]!.name))).toBe(true);
  });

  it('a peer that serves wrong bytes: the blob is not cached nor completed, the peer is passed over and the next request gets the right bytes', async () => {
    const members = await nodes(3, 31);
    const liar = members[0]!;
    const blob = blobOwnedBy(liar.name, members, 4 * 1024 * 1024);
    await pushBlob(registry.url, REPO, blob, auth);
    // The liar holds a valid agent certificate: only the digest check can catch it.
    const leaf = ca.issue(liar.name, [liar.address]);
    const wrong = Buffer.from(blob.bytes.map((b) => b ^ 0xff));
    const server = createTlsServer({ ca: ca.ca.certPem, cert: leaf.certPem, key: leaf.keyPem, requestCert: true, rejectUnauthorized: true }, (req, res) => {
      res.writeHead(200, { 'content-length': String(wrong.length), 'docker-content-digest': blob.digest });
      res.end(wrong);
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(liar.port, liar.address, resolve));
    const agent = await startNode(members[1]!, members);

    const first = await fetchAnswer(blobUrl(agent, blob.digest), { headers: GOOD }).catch((error: unknown) => error as Error);
    // Cut before its last byte, or refused: never the wrong bytes as a whole answer.
    if (!(first instanceof Error)) {
      expect(first.status === 200 && sha(first.body) === blob.digest).toBe(false);
      if (first.status === 200) expect(first.body.length).toBeLessThan(blob.bytes.length);
    }
    expect(agent.runtime.cache.isCached(blob.digest as never)).toBe(false);
    expect(await metric(agent, 'registry_proxy_peer_fallbacks_total{step="upstream",reason="corrupt"}')).toBe(1);

    const second = await get(blobUrl(agent, blob.digest), GOOD);
    expect(second.status).toBe(200);
    expect(sha(second.body)).toBe(blob.digest);
  });

  it('a requester upstream refuses gets 401 and no peer is asked, although the owner holds the blob', async () => {
    const members = await nodes(2, 41);
    const blob = blobOwnedBy(members[0]!.name, members, 1024 * 1024);
    await pushBlob(registry.url, REPO, blob, auth);
    const [owner, other] = await Promise.all(members.map((m) => startNode(m, members)));
    expect(sha((await get(blobUrl(owner!, blob.digest), GOOD)).body)).toBe(blob.digest);
    const servedBefore = await metric(owner!, 'registry_proxy_peer_bytes_total{direction="served"}');
    const peerRequestsBefore = owner!.logs.filter((l) => l['component'] === 'peer-listener').length;

    for (const headers of [{}, { authorization: basic('puller', 'wrong') }] as Array<Record<string, string>>) {
      const answer = await get(blobUrl(other!, blob.digest), headers);
      expect(answer.status).toBe(401);
      expect(answer.body.includes(blob.bytes.subarray(0, 64))).toBe(false);
    }
    expect(await metric(owner!, 'registry_proxy_peer_bytes_total{direction="served"}')).toBe(servedBefore);
    expect(owner!.logs.filter((l) => l['component'] === 'peer-listener').length).toBe(peerRequestsBefore);
    // The entitled requester still gets it through the owner.
    expect(sha((await get(blobUrl(other!, blob.digest), GOOD)).body)).toBe(blob.digest);
  });

  it('the tunnel down: a blob another agent holds is served from that agent to a requester entitled offline (agent auth, manifest seen online)', async () => {
    const members = await nodes(2, 71);
    let image = await makeImage({ layers: 1, layerBytes: 256 * 1024 });
    while (rankOwners(image.layers[0]!.digest, members)[0]!.name !== members[0]!.name) image = await makeImage({ layers: 1, layerBytes: 256 * 1024 });
    await pushImage(registry.url, 'team/offline', 'v1', image, auth);
    const agentAuth = { username: auth.username, password: auth.password, auth: 'agent' as const };
    const [owner, other] = await Promise.all(members.map((m) => startNode(m, members, [], agentAuth)));
    const layer = image.layers[0]!;
    const layerUrl = (agent: InProcessAgent): string => `${agent.url}/v2/team/offline/blobs/${layer.digest}?ns=${REGISTRY}`;
    expect(sha((await get(layerUrl(owner!))).body)).toBe(layer.digest);
    // The other node resolves the tag while upstream answers: it learns the manifest and what it references.
    expect((await get(`${other!.url}/v2/team/offline/manifests/v1?ns=${REGISTRY}`, { accept: 'application/vnd.oci.image.manifest.v1+json' })).status).toBe(200);
    await tunnel.setFault({ kind: 'down' });
    const answer = await get(layerUrl(other!));
    expect(answer.status).toBe(200);
    expect(sha(answer.body)).toBe(layer.digest);
    expect(await metric(other!, 'registry_proxy_peer_bytes_total{direction="received"}')).toBe(layer.bytes.length);
  });

  it('the peer listener refuses clients without an agent certificate, and serves blob GETs only', async () => {
    const members = await nodes(2, 51);
    const [node] = await Promise.all(members.map((m) => startNode(m, members)));
    const target = members[0]!;
    const blob = makeRandomBlob(1024);
    await pushBlob(registry.url, REPO, blob, auth);
    const path = `/v2/${REPO}/blobs/${blob.digest}?ns=${REGISTRY}`;

    const handshake = (options: { cert?: string; key?: string; ca?: string }): Promise<string> =>
      new Promise((resolve) => {
        const socket = connect({ host: target.address, port: target.port, rejectUnauthorized: false, ...options }, () => {
          socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
        });
        let text = '';
        socket.on('data', (d: Buffer) => (text += d.toString('latin1')));
        socket.on('error', (error) => resolve(`error: ${error.message}`));
        socket.on('close', () => resolve(text));
      });
    // No certificate, or one from another CA: no HTTP answer at all, no byte of the blob.
    for (const answer of [await handshake({}), await handshake({ ...pem(new TestPeerCa('other CA').issue('intruder')) })]) {
      expect(answer.startsWith('HTTP/')).toBe(false);
    }
    // Plain HTTP to the TLS port: nothing served either.
    const plain = await fetch(`http://${target.address}:${target.port}${path}`).then((r) => r.status, () => 0);
    expect(plain === 0 || plain === 400).toBe(true);

    // With an agent certificate: blobs only.
    const leaf = ca.issue('tester');
    const dispatcher = new Agent({ connect: { ca: ca.ca.certPem, cert: leaf.certPem, key: leaf.keyPem, rejectUnauthorized: true, checkServerIdentity: () => undefined } });
    try {
      const blobAnswer = await fetchAnswer(`${target.url}${path}`, { dispatcher, headers: GOOD });
      expect(blobAnswer.status).toBe(200);
      expect(sha(blobAnswer.body)).toBe(blob.digest);
      const manifest = await fetchAnswer(`${target.url}/v2/${REPO}/manifests/latest?ns=${REGISTRY}`, { dispatcher });
      expect(manifest.status).toBe(404);
      const token = await fetchAnswer(`${target.url}/token/${REGISTRY}?scope=x`, { dispatcher });
      expect(token.status).toBe(404);
      const head = await fetchAnswer(`${target.url}${path}`, { dispatcher, method: 'HEAD' });
      expect(head.status).toBe(405);
    } finally {
      await dispatcher.close();
    }
    expect(node).toBeDefined();
  });

  it('a peer connection that pipelines too deep, or stops reading, is cut (a TLS socket cannot be reset: it is destroyed); the agent goes on serving', async () => {
    const members = await nodes(2, 81);
    const [node] = await Promise.all(members.map((m) => startNode(m, members, [], {}, 'send_timeout = "1s"')));
    const blob = makeRandomBlob(24 * 1024 * 1024);
    await pushBlob(registry.url, REPO, blob, auth);
    expect(sha((await get(blobUrl(node!, blob.digest), GOOD)).body)).toBe(blob.digest);
    const target = members[0]!;
    const leaf = ca.issue('tester');
    const open = (): Promise<import('node:tls').TLSSocket> =>
      new Promise((resolve, reject) => {
        const socket = connect({ host: target.address, port: target.port, ca: ca.ca.certPem, cert: leaf.certPem, key: leaf.keyPem, checkServerIdentity: () => undefined }, () => resolve(socket));
        socket.once('error', reject);
      });
    // The clients do not read, so they would not see the close: the agent's count of cuts says it.
    const cut = (reason: string, count: number): Promise<void> =>
      pollUntil(async () => (await metric(node!, `registry_proxy_connections_cut_total{listener="peer",reason="${reason}"}`)) >= count, {
        timeoutMs: 10_000,
        what: `a ${reason} cut on the peer listener`,
      });
    const request = `GET /v2/${REPO}/blobs/${blob.digest}?ns=${REGISTRY} HTTP/1.1\r\nHost: peer\r\nAuthorization: ${GOOD.authorization}\r\n\r\n`;

    const pipelining = await open();
    pipelining.on('error', () => undefined);
    pipelining.pause();
    // Small answers, so that the agent keeps parsing while the client reads nothing: 20 requests queue up.
    const small = makeRandomBlob(1024);
    await pushBlob(registry.url, REPO, small, auth);
    pipelining.write(request.replaceAll(blob.digest, small.digest).repeat(40));
    await cut('pipelining', 1);
    pipelining.destroy();

    const stalled = await open();
    stalled.on('error', () => undefined);
    stalled.pause();
    stalled.write(request);
    await cut('send_timeout', 1);
    stalled.destroy();

    // Still serving, on both ports.
    const fresh = await open();
    fresh.on('error', () => undefined);
    fresh.end();
    expect(sha((await get(blobUrl(node!, blob.digest), GOOD)).body)).toBe(blob.digest);
  });

  it('[peers] max_connections caps the peer listener (not the mirror port\'s cap), closing the rest before any handshake', async () => {
    const members = await nodes(2, 91);
    await Promise.all(members.map((m) => startNode(m, members, ['max_connections = 4'])));
    const target = members[0]!;
    const sockets = await Promise.all(
      Array.from({ length: 10 }, () =>
        new Promise<import('node:net').Socket>((resolve, reject) => {
          const socket = netConnect(target.port, target.address, () => resolve(socket));
          socket.once('error', reject);
        }),
      ),
    );
    const ended = await Promise.all(sockets.map((socket) => new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 1_000);
      socket.once('close', () => { clearTimeout(timer); resolve(true); });
      socket.resume();
    })));
    expect(ended.filter((e) => e)).toHaveLength(6);
    for (const socket of sockets) socket.destroy();
  });

  it('the same preload list on every node: the tunnel carries each blob of the image once', async () => {
    const members = await nodes(3, 41);
    const image = await makeImage({ layers: 3, layerBytes: 256 * 1024 });
    await pushImage(registry.url, REPO, 'preload', image, auth);
    const agents = await Promise.all(
      members.map((m) => startNode(m, members, [], { username: auth.username, password: auth.password, auth: 'agent', lines: ['preload = ["team/app:preload"]'] })),
    );
    const phases = (): string => agents.map((a) => a.runtime.preloadStates(REGISTRY)[0]?.phase).join(',');
    await pollUntil(() => phases() === 'ready,ready,ready', { timeoutMs: 30_000, what: 'preload on every node' });
    expect(phases()).toBe('ready,ready,ready');
    for (const blob of [image.config, ...image.layers]) {
      expect(tunnelGets(blob.digest), blob.digest).toBe(1);
      for (const agent of agents) expect(agent.runtime.cache.isCached(blob.digest as never)).toBe(true);
    }
  });

  it('preload through a peer stays background on the owner: its tunnel budget ranks the download below pulls', async () => {
    const members = await nodes(2, 51);
    const [ownerNode, otherNode] = members as [Node, Node];
    const agentAuth = { username: auth.username, password: auth.password, auth: 'agent' as const };
    const owner = await startNode(ownerNode, members, [], { ...agentAuth, lines: ['max_bytes_per_second = "1MiB"'] });
    const other = await startNode(otherNode, members, [], agentAuth);
    const preloaded = blobOwnedBy(ownerNode.name, members, 1024 * 1024);
    const pulled = blobOwnedBy(ownerNode.name, members, 1024 * 1024);
    for (const blob of [preloaded, pulled]) await pushBlob(registry.url, REPO, blob, auth);
    const throttled = (priority: string): Promise<number> => metric(owner, `registry_proxy_budget_throttled_bytes_total{budget="${REGISTRY}",priority="${priority}"}`);

    // As the preloader asks its mirror: background priority, on the node that does not own the blob.
    const mirror = other.runtime.mirrors.list().find((m) => m.registry === REGISTRY)!;
    const reader = await mirror.blob(parseRepositoryName(REPO), preloaded.digest as Digest, { priority: 'background' });
    const hash = createHash('sha256');
    for await (const chunk of reader.read(0)) hash.update(chunk);
    reader.close();
    expect(`sha256:${hash.digest('hex')}`).toBe(preloaded.digest);
    expect(await throttled('background')).toBeGreaterThan(0);
    expect(await throttled('live')).toBe(0);

    // A pull on that node, through the same owner, is live there.
    const answer = await get(blobUrl(other, pulled.digest), {});
    expect(answer.status).toBe(200);
    expect(sha(answer.body)).toBe(pulled.digest);
    expect(await throttled('live')).toBeGreaterThan(0);
    expect(await metric(owner, 'registry_proxy_peer_bytes_total{direction="served"}')).toBe(2 * 1024 * 1024);
  });

  it('a member list reloaded live moves ownership: the new member serves what it owns', async () => {
    const members = await nodes(3, 61);
    const [a, b] = await Promise.all(members.slice(0, 2).map((m) => startNode(m, members.slice(0, 2))));
    const blob = blobOwnedBy(members[2]!.name, members, 2 * 1024 * 1024);
    await pushBlob(registry.url, REPO, blob, auth);
    const c = await startNode(members[2]!, members);
    a!.runtime.setPeerMembers(members);
    b!.runtime.setPeerMembers(members);
    tunnel.reset();
    const answers = await Promise.all([a!, b!].map((x) => get(blobUrl(x, blob.digest), GOOD)));
    for (const answer of answers) expect(sha(answer.body)).toBe(blob.digest);
    expect(tunnelGets(blob.digest)).toBe(1);
    await pollUntil(async () => (await metric(c, 'registry_proxy_peer_bytes_total{direction="served"}')) === 2 * blob.bytes.length, { timeoutMs: 5_000, what: 'the new member served both' });
  });
});

function pem(issued: { certPem: string; keyPem: string }): { cert: string; key: string } {
  return { cert: issued.certPem, key: issued.keyPem };
}
