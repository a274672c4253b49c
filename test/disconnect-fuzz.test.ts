/**
 * Issue 12: the seeded disconnect fuzzer. Thousands of generated raw requests (every method including
 * CONNECT and PRI, garbage; origin, absolute and authority targets; HTTP/1.0, 1.1 and bogus versions;
 * Upgrade, Expect, chunked and duplicate Content-Length, pipelining), each cut at a random byte with a
 * FIN or a reset, before the request is complete or after reading part of the answer, against the
 * three listeners of a child agent (the peer listener inside mutual-TLS sessions with an agent
 * certificate). After every batch: the process is alive, /healthz answers 200, its open
 * descriptors are back to the baseline, and a cached blob is still served whole.
 *
 * The seed is printed. `RPA_FUZZ_SEED=<seed> npx vitest run test/disconnect-fuzz.test.ts` replays the
 * same cases (`RPA_FUZZ_CASES` sets how many per listener).
 */
import { get } from 'node:http';
import { type Socket, connect } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PortedAgentProcess, startPortedAgentProcess } from './fixtures/agent.ts';
import { sha256 } from './fixtures/digest.ts';
import { countFds } from './fixtures/fds.ts';
import { recordFigures } from './fixtures/figures.ts';
import { type FuzzCase, type FuzzTargets, generateCases } from './fixtures/fuzz-requests.ts';
import { type TestImage, makeImage, pushImage } from './fixtures/image.ts';
import { freePort } from './fixtures/net.ts';
import { TestPeerCa, peersToml } from './fixtures/peer-certs.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const REGISTRY = 'registry.corp.example:5000';
const REPO = 'team/app';
const SEED = Number(process.env['RPA_FUZZ_SEED'] ?? Math.floor(Math.random() * 2 ** 31));
const CASES = {
  mirror: Number(process.env['RPA_FUZZ_CASES'] ?? 4_000),
  metrics: Math.ceil(Number(process.env['RPA_FUZZ_CASES'] ?? 4_000) / 2),
  peer: Math.ceil(Number(process.env['RPA_FUZZ_CASES'] ?? 4_000) / 2),
};
const BATCH = 100;
const PARALLEL = 40;
/** A client that cuts with a FIN and stops reading is dropped by the test after this long. */
const FIN_GRACE_MS = 100;

let dir: string;
let registry: RegistryHandle;
let image: TestImage;
let agent: PortedAgentProcess;
let port: number;
let metricsPort: number;
/** The peer listener (mutual TLS), and the agent certificate the cut clients present. */
let peerPort: number;
const PEER_HOST = '127.0.0.3';
const ca = new TestPeerCa('fuzz agents CA');
const client = ca.issue('fuzz-client');
const statuses = new Map<string, number>();

beforeAll(async () => {
  console.log(`disconnect fuzzer seed: ${SEED} (replay: RPA_FUZZ_SEED=${SEED} npx vitest run test/disconnect-fuzz.test.ts)`);
  dir = await makeTempDir('rpa-fuzz');
  // A small layer for the after-batch check, a larger one so that answers can be cut mid-body.
  [registry, image] = await Promise.all([startRegistry(), makeImage({ layers: 2, layerBytes: 4 * 1024 * 1024, seed: 'fuzz' })]);
  await pushImage(registry.url, REPO, 'v1', image);
  peerPort = await freePort();
  // On 127.0.0.3: a port freePort found free on 127.0.0.1 cannot collide there with other tests' listeners.
  const files = await ca.writeFiles(dir, 'node-fuzz', [PEER_HOST]);
  agent = await startPortedAgentProcess({
    dir,
    mirrors: [{ registry: REGISTRY, upstream: registry.url }],
    extraToml: ['client_request_timeout = "2s"', 'send_timeout = "1s"'].join('\n'),
    // Peer sharing on, with a second member nobody runs: the peer listener is up and fuzzed too.
    tablesToml: peersToml({
      nodeName: 'node-fuzz',
      listen: `${PEER_HOST}:${peerPort}`,
      members: [
        { name: 'node-fuzz', url: `https://${PEER_HOST}:${peerPort}` },
        { name: 'node-gone', url: `https://127.0.0.2:${peerPort}` },
      ],
      files,
    }),
  });
  ({ port, metricsPort } = agent);
  // Warm: the manifest and both layers are cached before the first batch.
  expect(await blobDigest(image.layers[0]!.digest)).toBe(image.layers[0]!.digest);
  expect(await blobDigest(image.layers[1]!.digest)).toBe(image.layers[1]!.digest);
}, 120_000);

afterAll(async () => {
  await agent?.process.stop();
  await registry?.stop();
  if (dir) await removeTempDir(dir);
  const summary = [...statuses.entries()].sort().map(([status, n]) => `${status}: ${n}`).join(', ');
  console.log(`disconnect fuzzer seed ${SEED}: answers seen by the cut clients: ${summary}`);
});

function mirrorTargets(): FuzzTargets {
  const layer = image.layers[1]!.digest;
  return {
    authority: `127.0.0.1:${port}`,
    registry: REGISTRY,
    paths: [
      '/v2/',
      `/v2/${REPO}/manifests/v1`,
      `/v2/${REPO}/manifests/${image.manifestDigest}`,
      `/v2/${REPO}/blobs/${layer}`,
      `/v2/${REPO}/blobs/${layer}`,
      `/v2/${REPO}/blobs/${image.layers[0]!.digest}`,
      `/v2/${REPO}/blobs/sha256:${'0'.repeat(64)}`,
      `/v2/${REPO}/manifests/missing`,
      '/v2/nope/blobs/sha256:zz',
      `/_token/${encodeURIComponent(REGISTRY)}/0123456789abcdef`,
      '/healthz',
      '/',
    ],
  };
}

function peerTargets(): FuzzTargets {
  const layer = image.layers[1]!.digest;
  return {
    authority: `${PEER_HOST}:${peerPort}`,
    registry: REGISTRY,
    paths: [`/v2/${REPO}/blobs/${layer}`, `/v2/${REPO}/blobs/${layer}`, `/v2/${REPO}/blobs/${image.layers[0]!.digest}`, `/v2/${REPO}/blobs/sha256:${'0'.repeat(64)}`, `/v2/${REPO}/manifests/v1`, '/v2/'],
  };
}

function metricsTargets(): FuzzTargets {
  return { authority: `127.0.0.1:${metricsPort}`, registry: REGISTRY, paths: ['/healthz', '/readyz', '/metrics', '/metrics', '/', '/v2/'] };
}

/**
 * Sends one case and cuts the connection as planned; resolves when the client side is gone. With
 * `tls` (the peer listener) the case travels inside a mutual-TLS session with an agent certificate;
 * a reset cuts the TCP connection under it.
 */
function runCase(target: number, fuzz: FuzzCase, tls = false): Promise<void> {
  return new Promise((resolve) => {
    const raw: Socket = connect({ host: tls ? PEER_HOST : '127.0.0.1', port: target });
    const socket: Socket = tls
      ? tlsConnect({ socket: raw, ca: ca.ca.certPem, cert: client.certPem, key: client.keyPem, checkServerIdentity: () => undefined })
      : raw;
    if (tls) raw.on('error', () => undefined);
    let received = 0;
    let head = '';
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      const status = /^HTTP\/\d\.\d (\d{3})/.exec(head)?.[1] ?? (head === '' ? 'none' : 'garbled');
      statuses.set(status, (statuses.get(status) ?? 0) + 1);
      socket.destroy();
      resolve();
    };
    let cutting = false;
    const cut = (): void => {
      if (cutting) return;
      cutting = true;
      if (fuzz.cut.how === 'rst') {
        raw.resetAndDestroy();
        finish();
        return;
      }
      socket.end();
      socket.pause();
      setTimeout(finish, FIN_GRACE_MS).unref();
    };
    socket.on('error', finish);
    socket.on('close', finish);
    socket.on('data', (data: Buffer) => {
      if (head.length < 64) head += data.toString('latin1', 0, Math.min(data.length, 64));
      received += data.length;
      if (fuzz.cut.readBytes !== undefined && received >= fuzz.cut.readBytes) cut();
    });
    socket.on(tls ? 'secureConnect' : 'connect', () => {
      const payload = fuzz.bytes.subarray(0, fuzz.cut.sendBytes);
      const send = (then: () => void): void => {
        if (!fuzz.cut.split || payload.length < 2) {
          socket.write(payload, then);
          return;
        }
        const at = Math.floor(payload.length / 2);
        socket.write(payload.subarray(0, at), () => setTimeout(() => socket.write(payload.subarray(at), then), 5));
      };
      send(() => {
        if (fuzz.cut.readBytes === undefined || fuzz.cut.readBytes === 0) cut();
        // Otherwise the data handler cuts once enough of the answer arrived; an answer that is
        // shorter, or never comes, is cut when the client's patience runs out.
        else setTimeout(cut, fuzz.cut.patienceMs).unref();
      });
    });
  });
}

async function runBatch(target: number, cases: readonly FuzzCase[], tls: boolean): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (next < cases.length) {
        const fuzz = cases[next++]!;
        await runCase(target, fuzz, tls);
      }
    }),
  );
}

/** GET without keep-alive, so the check itself leaves no connection behind. */
function plainGet(url: string): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = get(url, { agent: false, headers: { connection: 'close' }, timeout: 10_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url} timed out`)));
    req.on('error', reject);
  });
}

async function blobDigest(digest: string): Promise<string> {
  const { status, body } = await plainGet(`http://127.0.0.1:${port}/v2/${REPO}/blobs/${digest}?ns=${REGISTRY}`);
  expect(status).toBe(200);
  return sha256(body);
}

async function invariants(baselineFds: number, where: string): Promise<void> {
  expect(agent.process.exitInfo(), `agent exited ${where}; ${await agent.logs()}`).toBeUndefined();
  const health = await plainGet(`http://127.0.0.1:${metricsPort}/healthz`);
  expect(health.status, where).toBe(200);
  let last = '';
  await pollUntil(
    async () => {
      const fds = await countFds(agent.process.pid, [registry.port]);
      last = `${fds.rest} (${fds.restTargets.join(', ')})`;
      return fds.rest <= baselineFds;
    },
    { timeoutMs: 10_000, intervalMs: 100, what: `descriptors back to ${baselineFds} ${where}` },
  ).catch((error: unknown) => {
    throw new Error(`${(error as Error).message}: still ${last}`);
  });
  expect(await blobDigest(image.layers[0]!.digest), where).toBe(image.layers[0]!.digest);
}

describe(`disconnect fuzzer (seed ${SEED})`, () => {
  it.each([
    ['mirror', () => port, mirrorTargets, CASES.mirror],
    ['metrics', () => metricsPort, metricsTargets, CASES.metrics],
    ['peer', () => peerPort, peerTargets, CASES.peer],
  ] as const)(
    'the %s port: every generated request cut at a random byte; after each batch the agent is alive, healthy, back to its descriptors and serving',
    async (listener, target, targets, count) => {
      const baseline = (await countFds(agent.process.pid, [registry.port])).rest;
      const started = Date.now();
      for (let first = 0; first < count; first += BATCH) {
        const cases = generateCases(SEED + { mirror: 0, metrics: 1, peer: 2 }[listener], Math.min(BATCH, count - first), targets(), first);
        await runBatch(target(), cases, listener === 'peer');
        await invariants(baseline, `after ${listener} cases ${first}-${first + cases.length - 1} (seed ${SEED}; first: ${cases[0]?.label ?? ''})`);
      }
      await recordFigures('disconnect-fuzz', listener, { seed: SEED, cases: count, batches: Math.ceil(count / BATCH), seconds: Math.round((Date.now() - started) / 1000), baselineFds: baseline });
    },
    300_000,
  );

  it('no cut client ever saw an internal error (500)', () => {
    expect(statuses.get('500') ?? 0).toBe(0);
    expect([...statuses.values()].reduce((a, b) => a + b, 0)).toBe(CASES.mirror + CASES.metrics + CASES.peer);
  });
});
