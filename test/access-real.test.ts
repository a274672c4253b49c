/**
 * Access and memory with real parts: containerd + ctr, the distribution registry (htpasswd and
 * token auth), the Connectivity Proxy double, the agent in this process and as a child process.
 *
 * 1. Content cached through a passthrough mirror must not come out of another mirror (auth = "agent").
 * 2. Offline token pulls: containerd POSTs its OAuth2 form first; the offline token must be issued
 *    whether the credential reached the realm online as that form or (fallback) as a Basic header.
 * 3. A cached 200 MiB layer asked for as a manifest: memory stays flat, the answer is an error.
 * 4. An entitled pull of a cold blob while anonymous clients hammer the same digest: always 200
 *    (upstream 50 ms away through the counting proxy's latency, so their fills overlap).
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type InProcessAgent, type PortedAgentProcess, agentMain, startAgent, startPortedAgentProcess } from './fixtures/agent.ts';
import { type ConfiguredAgent, startConfiguredAgent } from './fixtures/configured-agent.ts';
import { type ContainerdHandle, startContainerd } from './fixtures/containerd.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { type CpStack, startCpStack } from './fixtures/cp-stack.ts';
import { sha256 } from './fixtures/digest.ts';
import { type FileBlob, type MemoryBlob, type TestImage, makeImage, makeRandomBlob, makeRandomBlobFile, pushBlob, pushImage } from './fixtures/image.ts';
import { peakRssMiB, resetPeakRss, rssMiB } from './fixtures/memory.ts';
import { pollUntil } from './fixtures/poll.ts';
import { runCommand } from './fixtures/process.ts';
import { type RealmRegistry, startRealmRegistry } from './fixtures/realm-registry.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';
import { type TokenRegistry, type TokenServer, startTokenRegistry } from './fixtures/token-registry.ts';

const alice = { username: 'alice', password: 'wonder land' };
const aliceUser = `${alice.username}:${alice.password}`;

function basic(user: { username: string; password: string }): string {
  return `Basic ${Buffer.from(`${user.username}:${user.password}`).toString('base64')}`;
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

async function call(url: string, opts: { method?: 'GET' | 'HEAD'; headers?: Record<string, string> } = {}): Promise<Answer> {
  const response = await request(url, { method: opts.method ?? 'GET', headers: opts.headers ?? {} });
  const body = Buffer.from(await response.body.arrayBuffer());
  return { status: response.statusCode, headers: response.headers, body };
}

/** The first OCI error code of a body, if it is an OCI error body. */
function ociCode(body: Buffer): string | undefined {
  try {
    return (JSON.parse(body.toString('utf8')) as { errors?: Array<{ code?: string }> }).errors?.[0]?.code;
  } catch {
    return undefined;
  }
}

/** Runs every cleanup step even when one throws; throws the first failure afterwards. */
async function cleanup(...steps: Array<() => Promise<unknown> | undefined>): Promise<void> {
  const results = await Promise.allSettled(steps.map(async (step) => step()));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/** ctr's output without its own progress-display shutdown line (not a failed fetch). */
function ctrOutput(result: { stdout: string; stderr: string }): string {
  return `${result.stderr}\n${result.stdout}`
    .split('\n')
    .filter((line) => !/msg="failed to get content info" error="context canceled"/.test(line))
    .join('\n')
    .trim();
}

// One containerd for the file (tests 1 and 2), each pull in a namespace of its own; started on first use.
let containerdStarting: Promise<ContainerdHandle> | undefined;
function sharedContainerd(): Promise<ContainerdHandle> {
  containerdStarting ??= startContainerd();
  return containerdStarting;
}

afterAll(async () => {
  if (containerdStarting) await (await containerdStarting.catch(() => undefined))?.stop();
});

describe('1. cross-mirror: content cached through a passthrough mirror does not come out of an auth = "agent" mirror', () => {
  const P = 'private.corp.example:5000';
  const G = 'general.corp.example:5000';
  const bob = { username: 'bob', password: 'the builder' };
  let dir: string;
  let privateRegistry: RegistryHandle | undefined;
  let generalRegistry: RegistryHandle | undefined;
  let agent: InProcessAgent | undefined;
  let containerd: ContainerdHandle;
  let image: TestImage;
  let hostsDir: string;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-access-cross');
    hostsDir = join(dir, 'certs.d');
    let unrelated: TestImage;
    await Promise.all([
      startRegistry({ auth: alice }).then((r) => (privateRegistry = r)),
      startRegistry({ auth: bob }).then((r) => (generalRegistry = r)),
      sharedContainerd().then((c) => (containerd = c)),
      makeImage({ layers: 2, layerBytes: 256 * 1024 }).then((i) => (image = i)),
      makeImage({ layers: 1, layerBytes: 64 * 1024 }).then((i) => (unrelated = i)),
    ]);
    await pushImage(privateRegistry!.url, 'team/app', 'v1', image, alice);
    // G's registry holds something, just not I.
    await pushImage(generalRegistry!.url, 'x', 'v1', unrelated!, bob);
    agent = await startAgent({
      dir,
      manageHosts: true,
      mirrors: [
        { registry: P, upstream: privateRegistry!.url, auth: 'passthrough' },
        { registry: G, upstream: generalRegistry!.url, auth: 'agent', ...bob },
      ],
    });
  });

  afterAll(async () => {
    await cleanup(() => agent?.stop());
    await cleanup(
      () => privateRegistry?.stop(),
      () => generalRegistry?.stop(),
    );
    if (dir) await removeTempDir(dir);
  });

  it('alice pulls image I through P with her pull secret (the cache is warm)', async () => {
    const result = await containerd.pull(`${P}/team/app:v1`, { hostsDir, namespace: 'cross-alice', user: aliceUser });
    expect(result.code, ctrOutput(result)).toBe(0);
    const cached = await readdir(join(dir, 'cache', 'blobs', 'sha256'));
    for (const digest of [image.manifestDigest, image.config.digest, ...image.layers.map((l) => l.digest)]) {
      expect(cached, digest).toContain(digest.slice('sha256:'.length));
    }
  });

  it("ctr pull <G>/x@<I's manifest digest> without a credential fails, and G sends none of I's bytes", async () => {
    const mark = agent!.logs.length;
    const result = await containerd.pull(`${G}/x@${image.manifestDigest}`, { hostsDir, namespace: 'cross-g', timeoutMs: 30_000 });
    const lines = agent!.logs.slice(mark).filter((l) => l['msg'] === 'request' && l['registry'] === G);
    const summary = lines.map((l) => `${String(l['method'])} ${String(l['path'])} ${String(l['status'])} ${String(l['bytes'])}B ${String(l['cache'] ?? '')}`).join('\n');
    const iBlobs = [image.config.digest, ...image.layers.map((l) => l.digest)];
    // Never a 200 blob answer on G for I's blobs: no bytes of I leave through G.
    const leakedBlobs = lines.filter((l) => l['kind'] === 'blob' && l['status'] === 200 && iBlobs.some((d) => String(l['path']).includes(d)));
    const leakedManifest = lines.filter((l) => l['kind'] === 'manifest' && l['status'] === 200);
    const contentOnG = (await containerd.ctr(['-n', 'cross-g', 'content', 'ls', '-q'])).stdout;
    expect(
      {
        pulled: result.code === 0,
        blobAnswers200: leakedBlobs.length,
        blobBytesSentOnG: lines.filter((l) => l['kind'] === 'blob').reduce((sum, l) => sum + Number(l['bytes'] ?? 0), 0),
        manifestAnswers200: leakedManifest.length,
        layersInContainerd: image.layers.filter((l) => contentOnG.includes(l.digest)).length,
      },
      `agent requests on ${G}:\n${summary}\nctr:\n${ctrOutput(result)}`,
    ).toEqual({ pulled: false, blobAnswers200: 0, blobBytesSentOnG: 0, manifestAnswers200: 0, layersInContainerd: 0 });
  });

  it("GET /v2/anything/blobs/<I's layer digest>?ns=<G> is not answered 200", async () => {
    for (const layer of image.layers) {
      const answer = await call(`${agent!.url}/v2/anything/blobs/${layer.digest}?ns=${G}`);
      const what = `${layer.digest}: ${answer.status} ${answer.body.subarray(0, 300).toString()}`;
      expect(answer.status, what).not.toBe(200);
      expect(answer.body.includes(layer.bytes.subarray(0, 64)), what).toBe(false);
    }
  });

  it("HEAD /v2/anything/blobs/<I's layer digest>?ns=<G> is not answered 200 either (existence and size of I's layer)", async () => {
    for (const layer of image.layers) {
      const answer = await call(`${agent!.url}/v2/anything/blobs/${layer.digest}?ns=${G}`, { method: 'HEAD' });
      expect(answer.status, `${layer.digest}: content-length ${String(answer.headers['content-length'])}`).not.toBe(200);
    }
  });
});

/** What one offline-token scenario needs: an agent with two passthrough mirrors of one token registry. */
interface TokenLab {
  agent: ConfiguredAgent;
  hostsDir: string;
  tokenServer: TokenServer;
  /** Mirror whose online pull POSTs to a realm that supports the OAuth2 form. */
  postFirst: string;
  /** Mirror whose online pull finds the realm refusing POST (405): containerd falls back to GET with Basic. */
  getFallback: string;
  /** Repository pulled through `postFirst` / `getFallback` (different images: each online pull is a real miss). */
  repoA: string;
  repoB: string;
  /** Makes registry and realm unreachable (for good). */
  goOffline(): Promise<void>;
  /** Checks every token request went the mirror's route (CP: to the mapped virtual host). */
  checkRoute?(): void;
  stop(): Promise<void>;
}

/** containerd's token requests to the agent, as the agent answered them, since `mark`. */
function tokenAnswers(agent: ConfiguredAgent, registry: string, mark: number): string[] {
  return agent.requests
    .slice(mark)
    .filter((r) => r.outcome.kind === 'token' && r.outcome.registry === registry)
    .map((r) => `${r.method} ${r.status}${r.error ? ` ${r.error.code}: ${r.error.message}` : ''}`);
}

function describeOfflineTokens(title: string, start: () => Promise<TokenLab>): void {
  describe(title, () => {
    let lab: TokenLab | undefined;
    let containerd: ContainerdHandle;
    let offline = false;

    beforeAll(async () => {
      containerd = await sharedContainerd();
      lab = await start();
    });

    afterAll(async () => {
      await lab?.stop();
    });

    const pull = (registry: string, repo: string, namespace: string, user: string) =>
      containerd.pull(`${registry}/${repo}:v1`, { hostsDir: lab!.hostsDir, namespace, user, timeoutMs: 30_000 });

    async function down(): Promise<void> {
      if (offline) return;
      offline = true;
      await lab!.goOffline();
    }

    it('online, POST first: containerd POSTs its OAuth2 password form to the agent, the realm answers it', async () => {
      const { tokenServer, agent } = lab!;
      tokenServer.setPostMode('supported');
      tokenServer.reset();
      const mark = agent.requests.length;
      const result = await pull(lab!.postFirst, lab!.repoA, 'online-post', aliceUser);
      expect(result.code, ctrOutput(result)).toBe(0);
      const posts = tokenServer.requests.filter((r) => r.method === 'POST');
      expect(posts.length).toBeGreaterThan(0);
      expect(posts.every((r) => r.status === 200 && r.form?.['grant_type'] === 'password' && r.form['username'] === alice.username)).toBe(true);
      expect(tokenServer.requests.filter((r) => r.method === 'GET' && r.hadBasic)).toEqual([]);
      expect(tokenAnswers(agent, lab!.postFirst, mark)).toContain('POST 200');
      lab!.checkRoute?.();
    });

    it('online, GET fallback: the realm refuses POST (405), containerd falls back to GET with Basic', async () => {
      const { tokenServer, agent } = lab!;
      tokenServer.setPostMode('405');
      tokenServer.reset();
      const mark = agent.requests.length;
      try {
        const result = await pull(lab!.getFallback, lab!.repoB, 'online-get', aliceUser);
        expect(result.code, ctrOutput(result)).toBe(0);
      } finally {
        tokenServer.setPostMode('supported');
      }
      expect(tokenServer.requests.some((r) => r.method === 'POST' && r.status === 405)).toBe(true);
      expect(tokenServer.requests.some((r) => r.method === 'GET' && r.hadBasic && r.status === 200 && r.user === alice.username)).toBe(true);
      expect(tokenServer.requests.filter((r) => r.method === 'POST' && r.status === 200)).toEqual([]);
      const answers = tokenAnswers(agent, lab!.getFallback, mark);
      expect(answers).toContain('POST 405');
      expect(answers).toContain('GET 200');
      lab!.checkRoute?.();
    });

    it.each([
      ['the POST-first pull', 'postFirst', 'repoA', 'offline-post'],
      ['the GET-fallback pull', 'getFallback', 'repoB', 'offline-get'],
    ] as const)('offline after %s: the POST gets an offline token, a fresh namespace pulls', async (_label, registry, repo, namespace) => {
      await down();
      const mark = lab!.agent.requests.length;
      const result = await pull(lab![registry], lab![repo], namespace, aliceUser);
      const answers = tokenAnswers(lab!.agent, lab![registry], mark);
      expect(result.code, `agent token answers: ${answers.join(', ')}\n${ctrOutput(result)}`).toBe(0);
      expect(answers).toContain('POST 200');
    });

    it('offline with a wrong password: no token, the pull fails (both mirrors)', async () => {
      await down();
      for (const [registry, repo, namespace] of [
        [lab!.postFirst, lab!.repoA, 'offline-wrong-post'],
        [lab!.getFallback, lab!.repoB, 'offline-wrong-get'],
      ] as const) {
        const mark = lab!.agent.requests.length;
        const result = await pull(registry, repo, namespace, `${alice.username}:not her password`);
        const answers = tokenAnswers(lab!.agent, registry, mark);
        expect(result.code, `${registry}: agent token answers: ${answers.join(', ')}`).not.toBe(0);
        expect(answers.filter((a) => a.endsWith(' 200')), registry).toEqual([]);
        const content = (await containerd.ctr(['-n', namespace, 'content', 'ls', '-q'])).stdout.trim();
        expect(content, registry).toBe('');
      }
    });
  });
}

describeOfflineTokens('2a. offline token pull, direct route: token registry with its realm on another port', async () => {
  const M1 = 'token-post.corp.example:5000';
  const M2 = 'token-get.corp.example:5000';
  const dir = await makeTempDir('rpa-access-token-direct');
  let tokens: TokenRegistry | undefined;
  let agent: ConfiguredAgent | undefined;
  try {
    let imageA: TestImage;
    let imageB: TestImage;
    [tokens, imageA, imageB] = await Promise.all([
      startTokenRegistry({ users: { [alice.username]: alice.password }, postMode: 'supported' }),
      makeImage({ layers: 2, layerBytes: 64 * 1024 }),
      makeImage({ layers: 2, layerBytes: 64 * 1024 }),
    ]);
    await tokens.push('team/a', 'v1', imageA);
    await tokens.push('team/b', 'v1', imageB);
    // The realm is another service on loopback: it must be listed.
    const realmHost = `127.0.0.1:${tokens.tokenServer.port}`;
    agent = await startConfiguredAgent({
      dir,
      manageHosts: true,
      mirrors: [M1, M2].map((registry) => ({ registry, upstream: tokens!.registry.url, auth: 'passthrough' as const, allowedDestinations: [realmHost] })),
    });
    const running = agent;
    const registry = tokens;
    return {
      agent: running,
      hostsDir: join(dir, 'certs.d'),
      tokenServer: registry.tokenServer,
      postFirst: M1,
      getFallback: M2,
      repoA: 'team/a',
      repoB: 'team/b',
      goOffline: () => registry.stop(),
      async stop() {
        await cleanup(() => running.stop());
        await cleanup(() => registry.stop());
        await removeTempDir(dir);
      },
    };
  } catch (error) {
    await cleanup(
      () => agent?.stop(),
      () => tokens?.stop(),
    );
    await removeTempDir(dir);
    throw error;
  }
});

describeOfflineTokens('2b. offline token pull through the Connectivity Proxy: https realm mapped to its own virtual host (realm_map)', async () => {
  const M1 = 'cp-token-post.corp.example:5000';
  const M2 = 'cp-token-get.corp.example:5000';
  const VIRTUAL = 'registry.virtual:5000';
  const TOKEN_VIRTUAL = 'auth.virtual:80';
  const REALM = 'https://auth.corp.example/token';
  const REALM_MAP = [`realm_map = { "https://auth.corp.example" = "http://${TOKEN_VIRTUAL}" }`];
  let realm: RealmRegistry | undefined;
  let stack: CpStack<ConfiguredAgent> | undefined;
  try {
    let imageA: TestImage;
    let imageB: TestImage;
    [realm, imageA, imageB] = await Promise.all([
      startRealmRegistry({ realm: REALM, users: { [alice.username]: alice.password } }),
      makeImage({ layers: 2, layerBytes: 64 * 1024 }),
      makeImage({ layers: 2, layerBytes: 64 * 1024 }),
    ]);
    await realm.push('team/a', 'v1', imageA);
    await realm.push('team/b', 'v1', imageB);
    stack = await startCpStack({
      dir: { name: 'rpa-access-token-cp' },
      virtualHosts: { [VIRTUAL]: realm.registry.url, [TOKEN_VIRTUAL]: realm.tokenOrigin },
      agent: {
        manageHosts: true,
        mirrors: [M1, M2].map((registry) => ({ registry, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy' as const, auth: 'passthrough' as const })),
      },
      start: (setup) => startConfiguredAgent(setup, { [M1]: REALM_MAP, [M2]: REALM_MAP }),
    });
    const [started, registry] = [stack, realm];
    const { agent: running, cp: proxy, dir } = started;
    return {
      agent: running,
      hostsDir: join(dir, 'certs.d'),
      tokenServer: registry.tokenServer,
      postFirst: M1,
      getFallback: M2,
      repoA: 'team/a',
      repoB: 'team/b',
      // The Cloud Connector loses its connection: the proxy answers 503 for every virtual host.
      goOffline: async () => proxy.setLocation('', 'disconnected'),
      checkRoute() {
        const hops = proxy.requests.filter((r) => r.target.startsWith('http://auth.virtual/'));
        expect(hops.length).toBeGreaterThan(0);
        for (const r of proxy.requests) expect(r.target, r.target).toMatch(/^http:\/\/(registry\.virtual:5000|auth\.virtual)\//);
      },
      async stop() {
        await started.stop();
        await registry.stop();
      },
    };
  } catch (error) {
    await cleanup(
      () => stack?.stop(),
      () => realm?.stop(),
    );
    throw error;
  }
});

/** dist/ is what child agents run: rebuilt when any agent source is newer (the agent may be changing). */
async function ensureCompiledAgent(): Promise<void> {
  const main = agentMain();
  const root = new URL('..', import.meta.url).pathname;
  const sources = (await readdir(join(root, 'agent'), { recursive: true })).filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts'));
  const newest = Math.max(...(await Promise.all(sources.map(async (f) => (await stat(join(root, 'agent', f))).mtimeMs))));
  if (main.endsWith('.js') && existsSync(main) && (await stat(main)).mtimeMs >= newest) return;
  const built = await runCommand(process.execPath, ['scripts/build.ts'], { cwd: root, timeoutMs: 60_000 });
  if (built.code !== 0) throw new Error(`node scripts/build.ts failed:\n${built.stdout}\n${built.stderr}`);
}

describe('3. memory: a cached 200 MiB layer asked for as a manifest (child agent, RSS from /proc)', () => {
  const P = 'big.corp.example:5000';
  const REPO = 'priv/big';
  const SIZE = 200 * 1024 * 1024;
  const BOUND_MIB = 16;
  let dir: string;
  let registry: RegistryHandle | undefined;
  let agent: PortedAgentProcess | undefined;
  let layer: FileBlob;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-access-memory');
    await ensureCompiledAgent();
    [registry, layer] = await Promise.all([startRegistry({ auth: alice }), makeRandomBlobFile(join(dir, 'layer.bin'), SIZE)]);
    await pushBlob(registry.url, REPO, layer, alice);
    agent = await startPortedAgentProcess({ dir, mirrors: [{ registry: P, upstream: registry.url, auth: 'passthrough' }] });
    // Pulled once as a blob, by alice: now cached.
    const response = await request(`${agent.url}/v2/${REPO}/blobs/${layer.digest}?ns=${P}`, { headers: { authorization: basic(alice) } });
    expect(response.statusCode).toBe(200);
    const hash = createHash('sha256');
    for await (const chunk of response.body) hash.update(chunk as Buffer);
    expect(`sha256:${hash.digest('hex')}`).toBe(layer.digest);
    const file = join(dir, 'cache', 'blobs', 'sha256', layer.digest.slice('sha256:'.length));
    await pollUntil(async () => (await stat(file).catch(() => undefined))?.size === SIZE, { timeoutMs: 15_000, what: 'the 200 MiB layer committed to the cache' });
  });

  afterAll(async () => {
    await cleanup(() => agent?.process.stop());
    await cleanup(() => registry?.stop());
    if (dir) await removeTempDir(dir);
  });

  it('10 × HEAD and 10 × GET /manifests/<layer digest> (alice and anonymous, through its mirror): errors only, RSS flat', async () => {
    const pid = agent!.process.pid;
    const url = `${agent!.url}/v2/${REPO}/manifests/${layer.digest}?ns=${P}`;
    const asAlice = { authorization: basic(alice) };
    // Warm the same code paths on a digest that is not cached, so the baseline is not start-up noise.
    const unknown = `${agent!.url}/v2/${REPO}/manifests/sha256:${'ab'.repeat(32)}?ns=${P}`;
    for (const method of ['HEAD', 'GET'] as const) {
      for (const headers of [asAlice, {}]) await call(unknown, { method, headers });
    }
    const rssBefore = await rssMiB(pid);
    await resetPeakRss(pid);
    // 10 HEAD and 10 GET, half of each by alice (entitled), half anonymous; the first four cover every pair.
    const plan = Array.from({ length: 5 }, () => [
      ['HEAD', true],
      ['GET', true],
      ['HEAD', false],
      ['GET', false],
    ] as const).flat();
    const answers: string[] = [];
    const wrong: string[] = [];
    let stoppedEarly = '';
    for (const [index, [method, entitled]] of plan.entries()) {
      const answer = await call(url, { method, headers: entitled ? asAlice : {} });
      const code = method === 'GET' ? ociCode(answer.body) : undefined;
      const seen = `${method} ${entitled ? 'alice' : 'anonymous'} → ${answer.status}${code ? ` ${code}` : ''} (${answer.body.length} B)`;
      answers.push(seen);
      // A requester that is not entitled: 401, like upstream. alice: an error, never the layer. The
      // real distribution registry answers this request 500 UNKNOWN (it tries to parse the layer as
      // a manifest), which the agent passes on as a 5xx UNAVAILABLE; 404 MANIFEST_UNKNOWN is the
      // other acceptable answer (the agent refusing by itself).
      const ok = entitled
        ? (answer.status === 404 && (method === 'HEAD' || code === 'MANIFEST_UNKNOWN')) ||
          (answer.status >= 500 && (method === 'HEAD' || code === 'UNAVAILABLE'))
        : answer.status === 401 && (method === 'HEAD' || code === 'UNAUTHORIZED');
      if (!ok || answer.body.length > 64 * 1024) wrong.push(seen);
      // Peak memory never goes down: once over the bound the verdict is in, and each further request
      // would cost seconds on an agent that reads the whole file.
      if (index >= 3 && (await peakRssMiB(pid)) - rssBefore > BOUND_MIB) {
        stoppedEarly = `stopped after ${index + 1} of ${plan.length} requests: the peak was already over the bound`;
        break;
      }
    }
    const rssAfter = await rssMiB(pid);
    const peak = await peakRssMiB(pid);
    const figures = { rssBeforeMiB: Math.round(rssBefore), rssAfterMiB: Math.round(rssAfter), peakMiB: Math.round(peak), requests: answers.length, ...(stoppedEarly ? { stoppedEarly } : {}) };
    console.log(`figures: ${JSON.stringify(figures)}\n${answers.join('\n')}`);
    expect(agent!.process.exitInfo(), 'agent exited').toBeUndefined();
    expect(wrong, answers.join('\n')).toEqual([]);
    expect({ rssGrowthWithinBound: rssAfter - rssBefore <= BOUND_MIB, peakGrowthWithinBound: peak - rssBefore <= BOUND_MIB, allSent: answers.length === plan.length }, JSON.stringify(figures)).toEqual({
      rssGrowthWithinBound: true,
      peakGrowthWithinBound: true,
      allSent: true,
    });
  });
});

describe('4. join: an entitled pull of a cold blob while anonymous clients loop on the same digest', () => {
  const P = 'join.corp.example:5000';
  const ROUNDS = 5;
  const LOOPS = 4;
  let dir: string;
  let registry: RegistryHandle | undefined;
  let proxy: CountingProxy | undefined;
  let agent: InProcessAgent | undefined;
  let blobs: MemoryBlob[];

  beforeAll(async () => {
    dir = await makeTempDir('rpa-access-join');
    registry = await startRegistry({ auth: alice });
    blobs = Array.from({ length: ROUNDS }, () => makeRandomBlob(32 * 1024 * 1024));
    for (const blob of blobs) await pushBlob(registry.url, 'priv/app', blob, alice);
    // A paced upstream: every answer (a 401 too) comes 50 ms after the request, as through a tunnel,
    // and each 32 MiB body takes about a second: fills and requests for one digest overlap.
    proxy = await startCountingProxy(registry.url, { latencyMs: 50 });
    await proxy.setFault({ kind: 'throttle', bytesPerSecond: 32 * 1024 * 1024, pathIncludes: '/blobs/' });
    agent = await startAgent({ dir, mirrors: [{ registry: P, upstream: proxy.url, auth: 'passthrough' }] });
  });

  afterAll(async () => {
    await cleanup(() => agent?.stop());
    await cleanup(
      () => proxy?.stop(),
      () => registry?.stop(),
    );
    if (dir) await removeTempDir(dir);
  });

  it('alice gets 200 with the right bytes every round; the anonymous clients never get 200', async () => {
    const rounds: Array<{ entitled: string; anonymous: Record<number, number>; anonymousBefore: number }> = [];
    for (const blob of blobs) {
      const file = join(dir, 'cache', 'blobs', 'sha256', blob.digest.slice('sha256:'.length));
      expect(existsSync(file), 'the blob is cold').toBe(false);
      const anonymous: number[] = [];
      let stop = false;
      const loop = async (): Promise<void> => {
        while (!stop) {
          const answer = await call(`${agent!.url}/v2/nope/blobs/${blob.digest}?ns=${P}`).catch(() => ({ status: 0, body: Buffer.alloc(0) }));
          anonymous.push(answer.status === 200 && answer.body.includes(blob.bytes.subarray(0, 64)) ? 200 : answer.status);
        }
      };
      const loops = Array.from({ length: LOOPS }, loop);
      let entitled: string;
      let anonymousBefore: number;
      try {
        // The anonymous loops run on the cold digest before the entitled request.
        await pollUntil(() => anonymous.length >= LOOPS, { timeoutMs: 10_000, what: 'anonymous answers on the cold digest' });
        anonymousBefore = anonymous.length;
        const answer = await call(`${agent!.url}/v2/priv/app/blobs/${blob.digest}?ns=${P}`, { headers: { authorization: basic(alice) } });
        entitled = answer.status === 200 ? (sha256(answer.body) === blob.digest ? '200 ok' : '200 wrong bytes') : `${answer.status} ${ociCode(answer.body) ?? ''}`.trim();
      } finally {
        stop = true;
        await Promise.all(loops);
      }
      const counts: Record<number, number> = {};
      for (const status of anonymous) counts[status] = (counts[status] ?? 0) + 1;
      rounds.push({ entitled, anonymous: counts, anonymousBefore });
    }
    console.log(`join rounds: ${JSON.stringify(rounds)}`);
    expect(rounds.map((r) => r.entitled), JSON.stringify(rounds)).toEqual(blobs.map(() => '200 ok'));
    expect(rounds.map((r) => r.anonymous[200] ?? 0), JSON.stringify(rounds)).toEqual(blobs.map(() => 0));
  });
});
