// Peer sharing with real processes on a real network stack: five agents, each in its own network
// namespace with its own address (test/fixtures/cluster-lab.ts), the registry behind the
// Connectivity Proxy double over a 200 Mbit/s tc-shaped link, tunnel bytes counted on its far side.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { rankOwners } from '../agent/peers/rendezvous.ts';
import { startContainerd } from './fixtures/containerd.ts';
import { writeHostsToml } from './fixtures/hosts.ts';
import { makeImage, makeRandomBlobFile, pushBlob, pushImage } from './fixtures/image.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';
import { parseMetrics } from './fixtures/metrics-text.ts';
import { type Fetched, LAB_REGISTRY, PEER_PORT, type PeerLab, startPeerLab } from './fixtures/peer-lab.ts';
import { pollUntil } from './fixtures/poll.ts';

const MiB = 1024 * 1024;
const REPO = 'team/app';
const NODES = 5;

let lab: PeerLab;
const rolloutFigures: string[] = [];
/**
 * Nodes the others pass over for a while (SIGKILLed, firewalled): a blob such a node owns is fetched
 * by it and by the next in rank, so tests that count tunnel bytes pick blobs other nodes own.
 */
const passedOver = new Set<number>();

beforeAll(async () => {
  lab = await startPeerLab({ nodes: NODES });
  await Promise.all(lab.agents.map((a) => lab.startAgent(a.index)));
}, 120_000);

afterAll(async () => {
  await lab?.stop();
  if (rolloutFigures.length > 0) console.log(rolloutFigures.join('\n'));
});

async function pushed(bytes: number): Promise<{ digest: string; size: number }> {
  const blob = await makeRandomBlobFile(`${lab.registry.dir}/upload-${Date.now()}-${Math.random()}`, bytes);
  await pushBlob(lab.registry.url, REPO, blob);
  return { digest: blob.digest, size: bytes };
}

async function tunnelBytes(digest: string): Promise<number> {
  return (await lab.tunnel()).filter((r) => r.method === 'GET' && r.path.includes(digest)).reduce((sum, r) => sum + r.bytes, 0);
}

function expectRight(answers: readonly Fetched[], blob: { digest: string; size: number }): void {
  for (const answer of answers) {
    expect(answer.error, JSON.stringify(answer)).toBeUndefined();
    expect(answer.status).toBe(200);
    expect(answer.bytes).toBe(blob.size);
    expect(answer.digest).toBe(blob.digest);
  }
}

function ownerIndex(digest: string): number {
  const owner = rankOwners(digest, lab.members)[0]!.name;
  return lab.agents.findIndex((a) => a.name === owner);
}

/**
 * Times a node passed a peer over for the next one because it did not answer. A dropped port is a
 * connect timeout on a new connection, and a stall on a connection kept alive from an earlier test.
 */
async function passedOverCount(index: number): Promise<number> {
  const parsed = parseMetrics(await lab.metrics(index));
  return ['connect', 'stalled'].reduce((sum, reason) => sum + (parsed.get(`registry_proxy_peer_fallbacks_total{step="peer",reason="${reason}"}`) ?? 0), 0);
}

describe(`peer sharing on ${NODES} nodes in network namespaces`, () => {
  it('all nodes ask for one cold 256 MiB blob at once: the tunnel carries ≤ 1.05 × its bytes, every node gets the right bytes', async () => {
    const blob = await pushed(256 * MiB);
    await lab.resetTunnel();
    const started = performance.now();
    const answers = await Promise.all(lab.agents.map((a) => lab.getBlob(a.index, REPO, blob.digest)));
    const lastMs = performance.now() - started;
    expectRight(answers, blob);
    const bytes = await tunnelBytes(blob.digest);
    expect(bytes).toBeGreaterThanOrEqual(blob.size);
    expect(bytes).toBeLessThanOrEqual(1.05 * blob.size);
    rolloutFigures.push(`peers on, ${NODES} nodes, 256 MiB: tunnel ${(bytes / blob.size).toFixed(3)} × blob, last node complete after ${(lastMs / 1000).toFixed(1)} s`);
    // Every node keeps its copy: a second rollout moves nothing through the tunnel.
    await lab.resetTunnel();
    expectRight(await Promise.all(lab.agents.map((a) => lab.getBlob(a.index, REPO, blob.digest))), blob);
    expect(await tunnelBytes(blob.digest)).toBe(0);
  }, 180_000);

  it('real containerd on two nodes pulls a 5-layer image at once through its agent: the tunnel carries ≤ 1.05 × the image', async () => {
    const image = await makeImage({ layers: 5, layerBytes: 12 * MiB });
    await pushImage(lab.registry.url, REPO, 'v1', image);
    const imageBytes = image.manifest.length + image.config.bytes.length + image.layers.reduce((sum, l) => sum + l.bytes.length, 0);
    const dir = await makeTempDir('peer-lab-ctr-');
    const containerds = await Promise.all([0, 1].map(() => startContainerd()));
    try {
      await writeHostsToml(dir, { registry: LAB_REGISTRY, hosts: ['http://127.0.0.1:5050'] });
      await lab.resetTunnel();
      const pulls = await Promise.all(
        containerds.map((containerd, node) => containerd.pull(`${LAB_REGISTRY}/${REPO}:v1`, { hostsDir: dir, netns: lab.lab.nodes[node]!.ns, timeoutMs: 120_000 })),
      );
      for (const pull of pulls) expect(pull.code, pull.stderr + pull.stdout).toBe(0);
      const moved = (await lab.tunnel()).filter((r) => r.method === 'GET').reduce((sum, r) => sum + r.bytes, 0);
      expect(moved).toBeGreaterThanOrEqual(imageBytes - image.manifest.length);
      expect(moved).toBeLessThanOrEqual(1.05 * imageBytes);
      rolloutFigures.push(`containerd on 2 nodes, 5-layer image of ${(imageBytes / MiB).toFixed(1)} MiB: tunnel ${(moved / imageBytes).toFixed(3)} × image`);
    } finally {
      await Promise.all(containerds.map((c) => c.stop()));
      await removeTempDir(dir);
    }
  }, 180_000);

  it('the owner is SIGKILLed halfway: every other node completes with the right bytes, the tunnel carries ≤ 2 × the blob', async () => {
    const blob = await pushed(128 * MiB);
    const owner = ownerIndex(blob.digest);
    const others = lab.agents.filter((a) => a.index !== owner);
    await lab.resetTunnel();
    const rollout = Promise.all(others.map((a) => lab.getBlob(a.index, REPO, blob.digest)));
    await pollUntil(async () => (await tunnelBytes(blob.digest)) >= blob.size / 2, { timeoutMs: 60_000, intervalMs: 100, what: 'half the blob through the tunnel' });
    lab.kill(owner);
    passedOver.add(owner);
    const answers = await rollout;
    expectRight(answers, blob);
    const bytes = await tunnelBytes(blob.digest);
    expect(bytes).toBeLessThanOrEqual(2 * blob.size);
    rolloutFigures.push(`owner SIGKILLed at half: tunnel ${(bytes / blob.size).toFixed(3)} × blob`);
    const logs = await Promise.all(others.map((a) => lab.log(a.index)));
    expect(logs.some((log) => log.includes('peer failed'))).toBe(true);
    // The owner comes back (same cache) for the tests after this one.
    await lab.startAgent(owner);
  }, 180_000);

  it("a node whose peer port is firewalled (dropped) is passed over after the connect or progress timeout; nodes still get the right bytes", async () => {
    // Owned by a node no agent passes over already (the one SIGKILLed before is, for a while).
    let blob = await pushed(32 * MiB);
    while (passedOver.has(ownerIndex(blob.digest))) blob = await pushed(32 * MiB);
    const owner = ownerIndex(blob.digest);
    passedOver.add(owner);
    await lab.lab.block(owner, PEER_PORT, 'drop');
    try {
      const others = lab.agents.filter((a) => a.index !== owner);
      const before = await Promise.all(others.map((a) => passedOverCount(a.index)));
      await lab.resetTunnel();
      const answers = await Promise.all(others.map((a) => lab.getBlob(a.index, REPO, blob.digest)));
      expectRight(answers, blob);
      expect(Math.max(...answers.map((a) => a.ms))).toBeLessThan(30_000);
      const after = await Promise.all(others.map((a) => passedOverCount(a.index)));
      expect(after.reduce((s, v) => s + v, 0)).toBeGreaterThan(before.reduce((s, v) => s + v, 0));
      expect(await tunnelBytes(blob.digest)).toBeLessThanOrEqual(2 * blob.size);
    } finally {
      await lab.lab.unblock(owner, PEER_PORT);
    }
  }, 120_000);

  it('a node joins mid-rollout (members reloaded by SIGHUP): every node completes, the tunnel carries ≤ 2 × the blob', async () => {
    const joining = NODES - 1;
    const without = lab.members.filter((_, i) => i !== joining);
    lab.kill(joining);
    await Promise.all(lab.agents.filter((a) => a.index !== joining).map((a) => lab.reloadMembers(a.index, without)));
    const ownerBefore = (digest: string): number => lab.members.findIndex((m) => m.name === rankOwners(digest, without)[0]!.name);
    let blob = await pushed(64 * MiB);
    while (passedOver.has(ownerBefore(blob.digest))) blob = await pushed(64 * MiB);
    await lab.resetTunnel();
    const rollout = Promise.all(lab.agents.filter((a) => a.index !== joining).map((a) => lab.getBlob(a.index, REPO, blob.digest)));
    await pollUntil(async () => (await tunnelBytes(blob.digest)) > 0, { timeoutMs: 30_000, intervalMs: 50, what: 'the rollout under way' });
    await lab.startAgent(joining, lab.members);
    await Promise.all(lab.agents.filter((a) => a.index !== joining).map((a) => lab.reloadMembers(a.index, lab.members)));
    const late = lab.getBlob(joining, REPO, blob.digest);
    const answers = [...(await rollout), await late];
    expectRight(answers, blob);
    expect(await tunnelBytes(blob.digest)).toBeLessThanOrEqual(2 * blob.size);
  }, 120_000);
});

describe(`the same rollout with peer sharing off, ${NODES} nodes`, () => {
  it('every node fetches through the tunnel on its own: N × the blob (the figure the shared rollout is compared with)', async () => {
    const blob = await pushed(64 * MiB);
    await lab.resetTunnel();
    const sharedStart = performance.now();
    expectRight(await Promise.all(lab.agents.map((a) => lab.getBlob(a.index, REPO, blob.digest))), blob);
    const sharedMs = performance.now() - sharedStart;
    const shared = await tunnelBytes(blob.digest);

    const off = await startPeerLab({ nodes: NODES, peers: false });
    try {
      await Promise.all(off.agents.map((a) => off.startAgent(a.index)));
      const other = await makeRandomBlobFile(`${off.registry.dir}/upload-off`, 64 * MiB);
      await pushBlob(off.registry.url, REPO, other);
      await off.resetTunnel();
      const started = performance.now();
      const answers = await Promise.all(off.agents.map((a) => off.getBlob(a.index, REPO, other.digest)));
      const offMs = performance.now() - started;
      expectRight(answers, { digest: other.digest, size: 64 * MiB });
      const moved = (await off.tunnel()).filter((r) => r.method === 'GET' && r.path.includes(other.digest)).reduce((sum, r) => sum + r.bytes, 0);
      expect(moved).toBe(NODES * 64 * MiB);
      rolloutFigures.push(
        `64 MiB to ${NODES} nodes: peers on ${(shared / blob.size).toFixed(2)} × blob through the tunnel, last node after ${(sharedMs / 1000).toFixed(1)} s; ` +
          `peers off ${(moved / blob.size).toFixed(2)} ×, ${(offMs / 1000).toFixed(1)} s`,
      );
    } finally {
      await off.stop();
    }
  }, 180_000);
});
