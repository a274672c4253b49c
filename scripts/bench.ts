/**
 * Benchmarks of the agent against references measured in the same run; writes BENCHMARKS.md.
 * Run with `bash scripts/bench [--quick] [--runs N] [--sizes 16,256,1024] ...` (see --help).
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, rm, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { BURST_SECONDS } from '../agent/admission/byte-rate.ts';
import { startConnectivityProxy } from '../test/fixtures/connectivity-proxy.ts';
import { type ContainerdHandle, startContainerd } from '../test/fixtures/containerd.ts';
import { startCountingProxy } from '../test/fixtures/counting-proxy.ts';
import { writeHostsToml } from '../test/fixtures/hosts.ts';
import { type FileBlob, makeImage, makeRandomBlobFile, pushBlob, pushImage } from '../test/fixtures/image.ts';
import { AGENT_NODE_FLAGS, agentEnv } from '../test/fixtures/agent.ts';
import { startKubeApi } from '../test/fixtures/kube-api.ts';
import { type RegistryHandle, startRegistry } from '../test/fixtures/registry.ts';
import { runCommand } from '../test/fixtures/process.ts';
import { makeTempDir, removeTempDir } from '../test/fixtures/tmp.ts';
import { type BenchOptions, type Section, USAGE, UsageError, parseArgs, runsFor } from './bench-lib/args.ts';
import { type HttpClient, GiB, MiB, type ParallelResult, curlClient, getExact, getParallel, mibPerSecond, undiciClient } from './bench-lib/client.ts';
import { LoadMonitor } from './bench-lib/load.ts';
import { PEERS_GOAL_PREFIX, PEERS_TITLE, extractPeers, goalRow, peersSection, spliceReport } from './bench-lib/peers.ts';
import { type ProfileEntry, summariseProfile } from './bench-lib/profile.ts';
import { type Machine, Report, type Table, describeMachine, renderReport } from './bench-lib/report.ts';
import { type AgentChild, type AgentChildOptions, BENCH_REGISTRY, type ProcessUsage, type Service, idleUsage, pidOf, processUsage, startAgentChild, startNginx, startProxyRegistry, ticksPerSecond, treeCpuSeconds } from './bench-lib/services.ts';
import { max, median, min, num, ratio, seconds, sizeLabel, withSpread } from './bench-lib/stats.ts';

const REPO = 'bench/blobs';
const IMAGE_REPO = 'bench/image';
const CP_VIRTUAL = 'registry.virtual:5000';
const STARTUP_BLOBS = 10_000;
/** Bytes each server serves per size while its CPU time is read on the warm path. */
const CPU_SAMPLE_BYTES = 256 * 1024 * 1024;
/** The warm CPU goal is about large blobs: from this size on (the performance issue measures 512 MiB). */
const WARM_CPU_GOAL_MIN_MIB = 256;

interface Blob extends FileBlob {
  sizeMiB: number;
}

interface Context {
  opts: BenchOptions;
  work: string;
  blobsDir: string;
  registry: RegistryHandle;
  nginx: Service;
  client: HttpClient;
  /** Main blobs by size (MiB); their files stay for nginx. */
  blobs: Map<number, Blob>;
  /** A small blob every fresh agent fetches (and serves once from cache) before it is measured, so its code is JIT-warm. */
  warmupBlob: Blob;
  report: Report;
}

const cleanups: Array<() => Promise<unknown>> = [];

function log(message: string): void {
  process.stdout.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

function blobUrl(base: string, digest: string, repo = REPO): string {
  return `${base}/v2/${repo}/blobs/${digest}`;
}

function mib(bytes: number): string {
  return `${num(bytes / MiB)} MiB`;
}

/**
 * A fresh agent process (empty cache). With `warmup`, it first fetches and then serves the warm-up
 * blob: a long-running agent has JIT-compiled code and we measure the cache state, not process start.
 */
async function withAgent<T>(opts: AgentChildOptions, use: (agent: AgentChild) => Promise<T>, warmup?: { client: HttpClient; blob: Blob }): Promise<T> {
  const agent = await startAgentChild(opts);
  try {
    if (warmup) {
      for (let i = 0; i < 2; i++) await getExact(warmup.client, blobUrl(agent.url, warmup.blob.digest), warmup.blob.size);
    }
    return await use(agent);
  } catch (err) {
    // Say whether the agent itself went away, with the end of its log: the temp dir is removed below.
    const ended = agent.exitInfo();
    const tail = (await agent.logTail(8_192)).split('\n').filter((l) => l && !l.includes('"msg":"request"')).slice(-8).join('\n');
    throw new Error(`${(err as Error).message}\n  agent ${ended ? `exited (${ended})` : 'still running'}; end of its log:\n${tail}`, { cause: err });
  } finally {
    await agent.stop();
  }
}

/** Runs `fn`; on failure notes it in the report and runs it once more (a second failure propagates). */
async function retryOnce<T>(report: Report, what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    const lines = (err as Error).message.split('\n');
    const agentLine = lines.find((l) => l.includes('  agent exited') || l.includes('  agent still running'))?.trim();
    const message = `${what}: failed once and was repeated (${lines[0] ?? ''}${agentLine ? `; ${agentLine}` : ''})`;
    log(`${message}\n${lines.slice(1).join('\n')}`);
    report.notes.push(message);
    return fn();
  }
}

// ---- set-up ------------------------------------------------------------------------------

async function checkDisk(opts: BenchOptions): Promise<void> {
  const sum = opts.sizesMiB.reduce((a, b) => a + b, 0) * MiB;
  const largest = (opts.sizesMiB.at(-1) ?? 0) * MiB;
  // blob files + registry + proxy registry + agent caches, 2 extra concurrency blobs (file, registry,
  // agent), the image in the registry and in 3 containerd namespaces at most, plus slack.
  const need = 5 * sum + 6 * largest + 6 * opts.layers * opts.layerMiB * MiB + 2 * GiB;
  const fs = await statfs(tmpdir());
  const free = fs.bavail * fs.bsize;
  log(`disk: ${num(free / GiB)} GiB free under ${tmpdir()}, need about ${num(need / GiB)} GiB`);
  if (free < need) throw new Error(`not enough free disk under ${tmpdir()}: ${num(free / GiB)} GiB free, need about ${num(need / GiB)} GiB`);
}

async function makeBlob(dir: string, name: string, sizeMiB: number, registry: RegistryHandle): Promise<Blob> {
  const file = await makeRandomBlobFile(join(dir, name), sizeMiB * MiB);
  await pushBlob(registry.url, REPO, file);
  return { ...file, sizeMiB };
}

/** Picks the client: undici in-process unless it is slower than curl against nginx (then it would bottleneck). */
async function chooseClient(nginx: Service, blob: Blob, report: Report): Promise<HttpClient> {
  const url = `${nginx.url}/${basename(blob.path)}`;
  const best = async (client: HttpClient): Promise<number> => {
    const rates: number[] = [];
    for (let i = 0; i < 3; i++) rates.push(mibPerSecond(await getExact(client, url, blob.size)));
    return max(rates);
  };
  const undici = await best(undiciClient);
  const curl = await best(curlClient);
  const chosen = undici >= 0.95 * curl ? undiciClient : curlClient;
  const line =
    `Client: ${chosen.name}. Calibration against nginx (${sizeLabel(blob.sizeMiB)}, best of 3): ` +
    `undici ${num(undici)} MiB/s, curl ${num(curl)} MiB/s; ` +
    (chosen === curlClient ? 'undici would be the bottleneck, so curl is used for every target.' : 'undici keeps up, so it is used for every target.');
  report.notes.push(line);
  log(line);
  return chosen;
}

// ---- warm GET throughput ------------------------------------------------------------------

async function warmSection(ctx: Context): Promise<void> {
  const { opts, client, registry, nginx, report } = ctx;
  log('warm: starting the agent and the distribution registry in proxy mode');
  const agent = await startAgentChild({ mirror: { upstream: registry.url } });
  const proxyRegistry = await startProxyRegistry(registry.url);
  const table: Table = {
    header: ['Blob', 'nginx sendfile', 'distribution (own storage)', 'distribution proxy, warm', 'agent, warm', 'agent / nginx', 'agent / dist. proxy', 'agent CPU s per GiB'],
    rows: [],
  };
  const cpuTable: Table = {
    header: ['Blob', 'nginx sendfile', 'distribution (own storage)', 'distribution proxy, warm', 'agent, warm', 'agent CPU / nginx CPU'],
    rows: [],
  };
  const cpuVsNginx: string[] = [];
  let cpuMet = true;
  const registryPid = await pidOf(registry.dir);
  const vsNginx: string[] = [];
  const vsProxy: string[] = [];
  let nginxFastest = true;
  let nginxMet = true;
  let proxyMet = true;
  let peakRss = 0;
  try {
    for (const sizeMiB of opts.sizesMiB) {
      const blob = ctx.blobs.get(sizeMiB);
      if (!blob) continue;
      const targets = {
        nginx: `${nginx.url}/${basename(blob.path)}`,
        registry: blobUrl(registry.url, blob.digest),
        proxy: blobUrl(proxyRegistry.url, blob.digest),
        agent: blobUrl(agent.url, blob.digest),
      };
      // Unmeasured: fills the agent and the proxy registry, warms page caches and connections.
      for (const url of Object.values(targets)) await getExact(client, url, blob.size);
      await getExact(client, targets.proxy, blob.size);
      await getExact(client, targets.agent, blob.size);
      const rates: Record<keyof typeof targets, number[]> = { nginx: [], registry: [], proxy: [], agent: [] };
      const runs = runsFor(opts, sizeMiB);
      // Each server's CPU (its process tree) is read around its own GETs only.
      const pids: Record<keyof typeof targets, number> = { nginx: nginx.pid, registry: registryPid, proxy: proxyRegistry.pid, agent: agent.pid };
      const cpu: Record<keyof typeof targets, number> = { nginx: 0, registry: 0, proxy: 0, agent: 0 };
      for (let run = 0; run < runs; run++) {
        for (const key of Object.keys(targets) as Array<keyof typeof targets>) {
          rates[key].push(mibPerSecond(await retryOnce(report, `warm ${sizeLabel(sizeMiB)} ${key} run ${run + 1}`, () => getExact(client, targets[key], blob.size))));
        }
      }
      // CPU over at least CPU_SAMPLE_BYTES per server: /proc counts CPU time in 10 ms ticks, a
      // 16 MiB GET takes 1-2 of them.
      const gets = Math.max(runs, Math.ceil(CPU_SAMPLE_BYTES / blob.size));
      for (const key of Object.keys(targets) as Array<keyof typeof targets>) {
        const before = await treeCpuSeconds(pids[key]);
        for (let get = 0; get < gets; get++) await getExact(client, targets[key], blob.size);
        cpu[key] = (await treeCpuSeconds(pids[key])) - before;
      }
      peakRss = Math.max(peakRss, (await agent.usage()).peakRssBytes);
      const perGiB = (key: keyof typeof targets): number => cpu[key] / ((gets * blob.size) / GiB);
      const cpuPerGiB = perGiB('agent');
      const cpuRatio = perGiB('agent') / perGiB('nginx');
      // The goal is for large blobs (the performance issue measures 512 MiB); a small blob's figure is
      // dominated by the fixed cost per request, shown for information.
      const inGoal = sizeMiB >= WARM_CPU_GOAL_MIN_MIB;
      if (inGoal && !(cpuRatio <= 2)) cpuMet = false;
      cpuVsNginx.push(`${sizeLabel(sizeMiB)} ${num(perGiB('agent'), 2)} vs ${num(perGiB('nginx'), 2)} s/GiB (${ratio(cpuRatio)}${inGoal ? '' : ', not in the goal'})`);
      cpuTable.rows.push([
        `${sizeLabel(sizeMiB)}${runs !== opts.runs ? ` (${runs} runs)` : ''}`,
        num(perGiB('nginx'), 2),
        num(perGiB('registry'), 2),
        num(perGiB('proxy'), 2),
        num(perGiB('agent'), 2),
        ratio(cpuRatio),
      ]);
      const m = (k: keyof typeof targets): number => median(rates[k]);
      const rNginx = m('agent') / m('nginx');
      const rProxy = m('agent') / m('proxy');
      if (m('nginx') < Math.max(m('registry'), m('proxy'), m('agent'))) nginxFastest = false;
      if (rNginx < 0.45) nginxMet = false;
      if (rProxy < 1.5) proxyMet = false;
      vsNginx.push(`${sizeLabel(sizeMiB)} ${ratio(rNginx)}`);
      vsProxy.push(`${sizeLabel(sizeMiB)} ${ratio(rProxy)}`);
      table.rows.push([
        `${sizeLabel(sizeMiB)}${runs !== opts.runs ? ` (${runs} runs)` : ''}`,
        withSpread(rates.nginx),
        withSpread(rates.registry),
        withSpread(rates.proxy),
        withSpread(rates.agent),
        ratio(rNginx),
        ratio(rProxy),
        num(cpuPerGiB, 2),
      ]);
      log(`warm ${sizeLabel(sizeMiB)}: nginx ${num(m('nginx'))}, registry ${num(m('registry'))}, proxy ${num(m('proxy'))}, agent ${num(m('agent'))} MiB/s`);
    }
  } finally {
    await agent.stop();
    await proxyRegistry.stop();
  }
  report.goal('Warm GET ≥ 1.5× the distribution proxy (warm)', vsProxy.join(', '), proxyMet ? 'met' : 'NOT met');
  report.goal('Warm GET ≥ 0.45× nginx sendfile', vsNginx.join(', '), nginxMet ? 'met' : 'NOT met');
  report.goal(`Warm GET of ${sizeLabel(WARM_CPU_GOAL_MIN_MIB)} and more: agent CPU per GiB ≤ 2× nginx sendfile`, cpuVsNginx.join('; '), cpuMet ? 'met' : 'NOT met');
  const text = report.section(
    'Warm (cached) blob GET throughput, MiB/s',
    `One client (${client.name}), one GET at a time, a new connection per GET. "distribution (own storage)" is the ` +
      'upstream registry serving the pushed blob; "distribution proxy, warm" is a second `docker-registry` with ' +
      '`proxy.remoteurl` pointing at the first, after one GET filled it; the agent was filled by one GET too. ' +
      `Agent CPU is the agent's figure of the second table. Peak RSS of the agent over this section: ${mib(peakRss)}. ` +
      `The second table is CPU seconds per GiB served by each server (utime+stime of its process tree, nginx master and worker, read around its own GETs only; at least ${CPU_SAMPLE_BYTES / MiB} MiB served per server and size, GETs one after another, after the timed runs).`,
    [table, cpuTable],
    nginxFastest ? [] : ['**Note:** nginx was not the fastest target for every size: the client may be limiting; treat the ratios to nginx with care.'],
  );
  process.stdout.write(`${text}\n\n`);
}

// ---- cold GET -----------------------------------------------------------------------------

/**
 * MB/s of `dd` writing 1 GiB of new data into a file under `dir`: first into memory the VM has not
 * touched lately (after a pause, freed pages are handed back to the host), then right away again
 * into the pages the first file just freed.
 */
async function pageCacheWrites(dir: string): Promise<{ fresh: number; reused: number }> {
  const file = join(dir, 'page-cache-probe');
  const write = async (): Promise<number> => {
    const started = performance.now();
    await runCommand('dd', ['if=/dev/zero', `of=${file}`, 'bs=1M', 'count=1024'], { timeoutMs: 120_000 });
    const mbs = (GiB / 1e6) / ((performance.now() - started) / 1000);
    await rm(file, { force: true });
    return mbs;
  };
  await new Promise((resolve) => setTimeout(resolve, 5_000));
  const fresh = await write();
  const reused = await write();
  return { fresh, reused };
}

async function coldSection(ctx: Context): Promise<void> {
  const { opts, client, registry, report } = ctx;
  const cp = await startConnectivityProxy({ virtualHosts: { [CP_VIRTUAL]: registry.url } });
  const table: Table = {
    header: ['Blob', 'registry direct', 'agent cold, direct route', 'agent / direct', 'GET via CP double', 'agent cold, CP route', 'agent / via CP', 'agent CPU s per GiB (direct, CP)', 'of which kernel (direct)'],
    rows: [],
  };
  const verdicts: string[] = [];
  const cpuVerdicts: string[] = [];
  let met = true;
  let cpuMet = true;
  const pageCache = await pageCacheWrites(ctx.work);
  const registryPid = await pidOf(registry.dir);
  const registryCpu: number[] = [];
  try {
    for (const sizeMiB of opts.sizesMiB) {
      const blob = ctx.blobs.get(sizeMiB);
      if (!blob) continue;
      const rates = { direct: [] as number[], agent: [] as number[], viaCp: [] as number[], agentCp: [] as number[] };
      const cpu = { agent: [] as number[], agentCp: [] as number[], agentSystem: [] as number[] };
      const runs = runsFor(opts, sizeMiB);
      const virtualUrl = blobUrl(`http://${CP_VIRTUAL}`, blob.digest);
      await getExact(client, blobUrl(registry.url, blob.digest), blob.size); // page cache, unmeasured
      const warmup = { client, blob: ctx.warmupBlob };
      const agentRun = (opts: AgentChildOptions): Promise<{ rate: number; cpu: number; system: number }> =>
        withAgent(
          opts,
          async (agent) => {
            const before = await agent.usage();
            const rate = mibPerSecond(await getExact(client, blobUrl(agent.url, blob.digest), blob.size));
            const after = await agent.usage();
            const gib = blob.size / GiB;
            return { rate, cpu: (after.cpuSeconds - before.cpuSeconds) / gib, system: (after.systemSeconds - before.systemSeconds) / gib };
          },
          warmup,
        );
      const label = (what: string, run: number): string => `cold ${sizeLabel(sizeMiB)} ${what} run ${run + 1}`;
      for (let run = 0; run < runs; run++) {
        const registryBefore = await treeCpuSeconds(registryPid);
        rates.direct.push(mibPerSecond(await retryOnce(report, label('registry direct', run), () => getExact(client, blobUrl(registry.url, blob.digest), blob.size))));
        registryCpu.push(((await treeCpuSeconds(registryPid)) - registryBefore) / (blob.size / GiB));
        const a = await retryOnce(report, label('agent direct route', run), () => agentRun({ mirror: { upstream: registry.url } }));
        rates.agent.push(a.rate);
        cpu.agent.push(a.cpu);
        cpu.agentSystem.push(a.system);
        rates.viaCp.push(mibPerSecond(await retryOnce(report, label('GET via CP', run), () => getExact(client, virtualUrl, blob.size, cp.url))));
        const c = await retryOnce(report, label('agent CP route', run), () =>
          agentRun({ mirror: { upstream: `http://${CP_VIRTUAL}`, route: 'connectivity-proxy' }, connectivityProxy: { url: cp.url } }),
        );
        rates.agentCp.push(c.rate);
        cpu.agentCp.push(c.cpu);
      }
      const rDirect = median(rates.agent) / median(rates.direct);
      const rCp = median(rates.agentCp) / median(rates.viaCp);
      if (rDirect < 0.9 || rCp < 0.9) met = false;
      verdicts.push(`${sizeLabel(sizeMiB)} direct ${ratio(rDirect)}, CP ${ratio(rCp)}`);
      if (median(cpu.agent) > 1.2) cpuMet = false;
      cpuVerdicts.push(`${sizeLabel(sizeMiB)} ${num(median(cpu.agent), 2)} s (kernel ${num(median(cpu.agentSystem), 2)})`);
      table.rows.push([
        `${sizeLabel(sizeMiB)}${runs !== opts.runs ? ` (${runs} runs)` : ''}`,
        withSpread(rates.direct),
        withSpread(rates.agent),
        ratio(rDirect),
        withSpread(rates.viaCp),
        withSpread(rates.agentCp),
        ratio(rCp),
        `${num(median(cpu.agent), 2)}, ${num(median(cpu.agentCp), 2)}`,
        num(median(cpu.agentSystem), 2),
      ]);
      log(`cold ${sizeLabel(sizeMiB)}: direct ${num(median(rates.direct))}, agent ${num(median(rates.agent))}, via CP ${num(median(rates.viaCp))}, agent CP ${num(median(rates.agentCp))} MiB/s`);
    }
  } finally {
    await cp.stop();
  }
  report.goal('Cold GET through the agent ≥ 0.9× the same GET without it', verdicts.join('; '), met ? 'met' : 'NOT met');
  report.goal('Cold GET: agent CPU per GiB ≤ 1.2 s (direct route)', cpuVerdicts.join('; '), cpuMet ? 'met' : 'NOT met');
  const text = report.section(
    'Cold (uncached) blob GET throughput, MiB/s',
    `One client (${client.name}). Every agent run uses a fresh agent process with an empty cache dir that first ` +
      'fetches and serves an unrelated 8 MiB blob (so its code is JIT-warm, as in a long-running agent); the upstream ' +
      "registry serves from page cache. The agent's figure includes hashing, writing the temp file and the rename: " +
      "it withholds the last byte until the blob is verified and committed (the fsync follows after the response). The CP route goes through the Connectivity " +
      `Proxy double (virtual host ${CP_VIRTUAL}, trusted mode); its reference is the same GET through the double without the agent. ` +
      `The registry itself used ${num(median(registryCpu), 2)} CPU s per GiB for a direct GET (median over all sizes). ` +
      `Writing new data into this machine's page cache (dd of 1 GiB, what the agent's temp file costs the kernel): ${num(pageCache.fresh)} MB/s into memory ` +
      `the VM had returned to its host (virtio-balloon free page reporting: every page faults on the host first), ${num(pageCache.reused)} MB/s into memory freed a moment ago. ` +
      'A cold fill writes every byte into the page cache; the reference GET (curl -o /dev/null) writes nothing.',
    [table],
  );
  process.stdout.write(`${text}\n\n`);
}

// ---- tunnel budget -------------------------------------------------------------------------

/** The mirror's budget in the budget section: what a Kyma admin might give one registry. */
const BUDGET_MIB_PER_SECOND = 20;
const BUDGET_BLOB_MIB = 256;

/**
 * A 256 MiB cold fetch through a mirror with `max_bytes_per_second = "20MiB"`, against the same
 * fetch through a mirror without a budget, each in a fresh agent, alternating within each run.
 */
async function budgetSection(ctx: Context): Promise<void> {
  const { opts, client, registry, report } = ctx;
  const blob = ctx.blobs.get(BUDGET_BLOB_MIB) ?? (await makeBlob(ctx.blobsDir, `blob-${BUDGET_BLOB_MIB}m`, BUDGET_BLOB_MIB, registry));
  ctx.blobs.set(BUDGET_BLOB_MIB, blob);
  await getExact(client, blobUrl(registry.url, blob.digest), blob.size); // page cache, unmeasured
  const warmup = { client, blob: ctx.warmupBlob };
  const coldFetch = (lines: string[]): Promise<number> =>
    withAgent({ mirror: { upstream: registry.url, lines } }, async (agent) => (await getExact(client, blobUrl(agent.url, blob.digest), blob.size)).seconds, warmup);
  const times = { free: [] as number[], budget: [] as number[] };
  for (let run = 0; run < opts.runs; run++) {
    times.free.push(await retryOnce(report, `budget unthrottled run ${run + 1}`, () => coldFetch([])));
    times.budget.push(await retryOnce(report, `budget ${BUDGET_MIB_PER_SECOND} MiB/s run ${run + 1}`, () => coldFetch([`max_bytes_per_second = "${BUDGET_MIB_PER_SECOND}MiB"`])));
  }
  // The bucket starts full (BURST_SECONDS of the rate): the least the throttled fetch can take.
  const burstMiB = BUDGET_MIB_PER_SECOND * BURST_SECONDS;
  const least = (BUDGET_BLOB_MIB - burstMiB) / BUDGET_MIB_PER_SECOND;
  const throttled = median(times.budget);
  const rate = blob.size / MiB / throttled;
  report.goal(
    `${sizeLabel(BUDGET_BLOB_MIB)} cold at max_bytes_per_second = ${BUDGET_MIB_PER_SECOND}MiB takes 12–14 s`,
    `${seconds(throttled)} (${num(rate)} MiB/s; unthrottled ${seconds(median(times.free))})`,
    throttled >= 12 && throttled <= 14 ? 'met' : 'NOT met',
  );
  const table: Table = {
    header: ['Blob', 'agent cold, no budget', `agent cold, ${BUDGET_MIB_PER_SECOND} MiB/s budget`, 'budget / no budget (time)', 'throughput with budget', 'least possible with budget'],
    rows: [
      [
        `${sizeLabel(BUDGET_BLOB_MIB)}${opts.runs > 1 ? ` (${opts.runs} runs)` : ''}`,
        withSpread(times.free, seconds),
        withSpread(times.budget, seconds),
        ratio(throttled / median(times.free)),
        `${num(rate)} MiB/s`,
        seconds(least),
      ],
    ],
  };
  const text = report.section(
    'Tunnel budget: a cold fetch at max_bytes_per_second',
    `One client (${client.name}), the direct route. Each run starts a fresh agent (empty cache, JIT-warm as in the cold section) ` +
      `without a budget and one with \`max_bytes_per_second = "${BUDGET_MIB_PER_SECOND}MiB"\` on the mirror, and fetches the same ` +
      `${sizeLabel(BUDGET_BLOB_MIB)} blob once through each. The budget is a token bucket holding ${BURST_SECONDS} s of the rate: the ` +
      `least the budgeted fetch can take is (${BUDGET_BLOB_MIB} − ${burstMiB}) MiB / ${BUDGET_MIB_PER_SECOND} MiB/s = ${seconds(least)}.`,
    [table],
  );
  log(`budget ${sizeLabel(BUDGET_BLOB_MIB)}: no budget ${seconds(median(times.free))}, ${BUDGET_MIB_PER_SECOND} MiB/s budget ${seconds(throttled)}`);
  process.stdout.write(`${text}\n\n`);
}

// ---- concurrency --------------------------------------------------------------------------

function parallelRow(scenario: string, path: string, fetches: number[], results: ParallelResult[], size: number, rss?: number[]): string[] {
  const totals = results.map((r) => r.totalSeconds);
  const aggregate = results.map((r) => (r.samples.length * size) / MiB / r.totalSeconds);
  const perClient = results.flatMap((r) => r.samples.map(mibPerSecond));
  return [
    scenario,
    path,
    [...new Set(fetches)].join('/'),
    withSpread(totals, seconds),
    num(median(aggregate)),
    `${num(median(perClient))} (min ${num(min(perClient))})`,
    rss && rss.length > 0 ? mib(max(rss)) : '',
  ];
}

async function concurrentSection(ctx: Context): Promise<void> {
  const { opts, client, registry, report } = ctx;
  const size3 = opts.sizesMiB.at(-1) ?? 16;
  const size20 = [...opts.sizesMiB].reverse().find((s) => s <= 256) ?? opts.sizesMiB[0] ?? 16;
  const main3 = ctx.blobs.get(size3);
  const blob20 = ctx.blobs.get(size20);
  if (!main3 || !blob20) throw new Error('concurrent: main blobs missing');
  log(`concurrent: making 2 more ${sizeLabel(size3)} blobs`);
  const extra: Blob[] = [];
  for (const name of ['concurrent-a', 'concurrent-b']) {
    const blob = await makeBlob(ctx.work, name, size3, registry);
    await rm(blob.path); // the registry has it; no file needed
    extra.push(blob);
  }
  const three = [main3, ...extra];
  const counting = await startCountingProxy(registry.url);
  const gets = (digest: string): number => counting.count({ method: 'GET', pathIncludes: `/blobs/${digest}` });
  const r3 = { ref: [] as ParallelResult[], cold: [] as ParallelResult[], warm: [] as ParallelResult[], refFetches: [] as number[], coldFetches: [] as number[], rssCold: [] as number[], rssWarm: [] as number[] };
  const r20 = { ref: [] as ParallelResult[], cold: [] as ParallelResult[], refFetches: [] as number[], coldFetches: [] as number[], rss: [] as number[] };
  const cpuCold3: number[] = [];
  try {
    const warmup = { client, blob: ctx.warmupBlob };
    const urls3 = (base: string): string[] => three.map((b) => blobUrl(base, b.digest));
    const fetches3 = (): number => three.reduce((n, b) => n + gets(b.digest), 0);
    for (let run = 0; run < runsFor(opts, size3); run++) {
      const what = `concurrent 3 × ${sizeLabel(size3)} run ${run + 1}`;
      const ref = await retryOnce(report, `${what}, reference`, async () => {
        counting.reset();
        const result = await getParallel(client, urls3(counting.url), main3.size);
        return { result, fetches: fetches3() };
      });
      r3.ref.push(ref.result);
      r3.refFetches.push(ref.fetches);
      const a = await retryOnce(report, `${what}, agent`, () =>
        withAgent(
          { mirror: { upstream: counting.url } },
          async (agent) => {
            counting.reset();
            const before = await agent.usage();
            const cold = await getParallel(client, urls3(agent.url), main3.size);
            const fetches = fetches3();
            const afterCold = await agent.usage();
            const warm = await getParallel(client, urls3(agent.url), main3.size);
            const afterWarm = await agent.usage();
            return { cold, fetches, afterCold, before, warm, afterWarm };
          },
          warmup,
        ),
      );
      r3.cold.push(a.cold);
      r3.coldFetches.push(a.fetches);
      r3.rssCold.push(a.afterCold.peakRssBytes);
      cpuCold3.push((a.afterCold.cpuSeconds - a.before.cpuSeconds) / ((3 * main3.size) / GiB));
      r3.warm.push(a.warm);
      r3.rssWarm.push(a.afterWarm.peakRssBytes);
      log(`${what}: ref ${seconds(ref.result.totalSeconds)}, agent cold ${seconds(a.cold.totalSeconds)}, warm ${seconds(a.warm.totalSeconds)}`);
    }
    const urls20 = (base: string): string[] => Array.from({ length: 20 }, () => blobUrl(base, blob20.digest));
    for (let run = 0; run < runsFor(opts, size20); run++) {
      const what = `concurrent 20 × one ${sizeLabel(size20)} run ${run + 1}`;
      const ref = await retryOnce(report, `${what}, reference`, async () => {
        counting.reset();
        const result = await getParallel(client, urls20(counting.url), blob20.size);
        return { result, fetches: gets(blob20.digest) };
      });
      r20.ref.push(ref.result);
      r20.refFetches.push(ref.fetches);
      const a = await retryOnce(report, `${what}, agent`, () =>
        withAgent(
          { mirror: { upstream: counting.url } },
          async (agent) => {
            counting.reset();
            const result = await getParallel(client, urls20(agent.url), blob20.size);
            return { result, fetches: gets(blob20.digest), rss: (await agent.usage()).peakRssBytes };
          },
          warmup,
        ),
      );
      r20.cold.push(a.result);
      r20.coldFetches.push(a.fetches);
      r20.rss.push(a.rss);
      log(`${what}: ref ${seconds(ref.result.totalSeconds)}, agent ${seconds(a.result.totalSeconds)}, upstream GETs ${a.fetches}`);
    }
  } finally {
    await counting.stop();
  }
  const s3 = sizeLabel(size3);
  const s20 = sizeLabel(size20);
  const table: Table = {
    header: ['Scenario', 'Path', 'Upstream GETs', 'Total time', 'Aggregate MiB/s', 'Per-client MiB/s median (min)', 'Agent peak RSS'],
    rows: [
      parallelRow(`3 different ${s3} blobs`, 'direct via counting proxy', r3.refFetches, r3.ref, main3.size),
      parallelRow(`3 different ${s3} blobs`, 'agent, cold', r3.coldFetches, r3.cold, main3.size, r3.rssCold),
      parallelRow(`3 different ${s3} blobs`, 'agent, warm (same agent)', [0], r3.warm, main3.size, r3.rssWarm),
      parallelRow(`20 × one ${s20} blob`, 'direct via counting proxy', r20.refFetches, r20.ref, blob20.size),
      parallelRow(`20 × one ${s20} blob`, 'agent, cold', r20.coldFetches, r20.cold, blob20.size, r20.rss),
    ],
  };
  const coldRatio = median(r3.ref.map((r) => r.totalSeconds)) / median(r3.cold.map((r) => r.totalSeconds));
  const ratio20 = median(r20.ref.map((r) => r.totalSeconds)) / median(r20.cold.map((r) => r.totalSeconds));
  const one = r20.coldFetches.every((n) => n === 1);
  report.goal(`Exactly one upstream fetch under 20 concurrent cold GETs (${s20})`, `upstream GETs per run: ${r20.coldFetches.join(', ')}`, one ? 'met' : 'NOT met');
  const peak = max([...r3.rssCold, ...r3.rssWarm]);
  const full = size3 >= 1024;
  report.goal(
    `Agent peak RSS ≤ 128 MiB while streaming 3 × 1 GiB`,
    `${mib(peak)} (VmHWM, 3 × ${s3} cold then warm${full ? '' : '; smaller blobs than the goal names'})`,
    !full ? 'n/a' : peak <= 128 * MiB ? 'met' : 'NOT met',
  );
  const text = report.section(
    'Concurrent cold GETs',
    `All clients start at once (${client.name}, one process per client with curl). Upstream GETs are counted by a counting proxy in ` +
      'front of the registry; the reference path goes through the same proxy without the agent. Each agent run is a fresh ' +
      `agent process with an empty cache (warmed up with an unrelated 8 MiB blob). Throughput ratio agent/reference by total time: 3 streams ${ratio(coldRatio)}, ` +
      `20 clients ${ratio(ratio20)}. Agent CPU for 3 cold streams: ${num(median(cpuCold3), 2)} s per GiB served. ` +
      'Peak RSS is VmHWM of the agent process (it includes start-up; the warm row is cumulative over the same process).',
    [table],
  );
  process.stdout.write(`${text}\n\n`);
}

// ---- containerd ---------------------------------------------------------------------------

async function containerdSection(ctx: Context): Promise<void> {
  const { opts, registry, report } = ctx;
  log(`containerd: building a ${opts.layers}-layer image (${opts.layerMiB} MiB random per layer, gzip tar)`);
  const image = await makeImage({ layers: opts.layers, layerBytes: opts.layerMiB * MiB });
  await pushImage(registry.url, IMAGE_REPO, 'v1', image);
  const imageBytes = image.layers.reduce((n, l) => n + l.bytes.length, 0) + image.config.bytes.length;
  const ref = `${BENCH_REGISTRY}/${IMAGE_REPO}:v1`;
  const directHosts = join(ctx.work, 'hosts-direct');
  await writeHostsToml(directHosts, { registry: BENCH_REGISTRY, server: registry.url, hosts: [registry.url] });
  const containerd: ContainerdHandle = await startContainerd();
  cleanups.push(() => containerd.stop());
  let namespace = 0;
  const pull = async (hostsDir: string, label: string): Promise<number> => {
    const ns = `${label}-${namespace++}`;
    const started = performance.now();
    const res = await containerd.pull(ref, { hostsDir, namespace: ns, timeoutMs: 900_000 });
    const took = (performance.now() - started) / 1000;
    if (res.code !== 0) throw new Error(`ctr pull (${label}) failed: ${res.stderr}${res.stdout}`);
    const rm = await containerd.ctr(['-n', ns, 'images', 'rm', '--sync', ref], { timeoutMs: 120_000 });
    if (rm.code !== 0) log(`containerd: could not remove ${ref} from ${ns}: ${rm.stderr}`);
    return took;
  };
  const times = { direct: [] as number[], cold: [] as number[], warm: [] as number[] };
  try {
    await pull(directHosts, 'warmup');
    for (let run = 0; run < opts.runs; run++) {
      times.direct.push(await pull(directHosts, 'direct'));
      await withAgent({ mirror: { upstream: registry.url } }, async (agent) => {
        const hostsDir = join(agent.dir, 'hosts');
        // server: a closed port, so a failing agent shows instead of a silent fallback to the registry.
        await writeHostsToml(hostsDir, { registry: BENCH_REGISTRY, server: 'http://127.0.0.1:9', hosts: [agent.url] });
        times.cold.push(await pull(hostsDir, 'cold'));
        times.warm.push(await pull(hostsDir, 'warm'));
      }, { client: ctx.client, blob: ctx.warmupBlob });
      log(`containerd run ${run + 1}: direct ${seconds(times.direct.at(-1) ?? NaN)}, agent cold ${seconds(times.cold.at(-1) ?? NaN)}, warm ${seconds(times.warm.at(-1) ?? NaN)}`);
    }
  } finally {
    await containerd.stop();
  }
  const d = median(times.direct);
  const warmRatio = median(times.warm) / d;
  const coldRatio = median(times.cold) / d;
  report.goal('Cold containerd pull through the agent ≤ 1.05× a direct pull', `${ratio(coldRatio)} (${seconds(median(times.cold))} vs ${seconds(d)})`, coldRatio <= 1.05 ? 'met' : 'NOT met');
  report.goal('Warm containerd pull ≤ 1.05× a direct local pull', `${ratio(warmRatio)} (${seconds(median(times.warm))} vs ${seconds(d)})`, warmRatio <= 1.05 ? 'met' : 'NOT met');
  const row = (path: string, values: number[]): string[] => [path, withSpread(values, seconds), ratio(median(values) / d), num(imageBytes / MiB / median(values))];
  const text = report.section(
    'containerd end to end: `ctr images pull`',
    `Image: ${opts.layers} layers of ${opts.layerMiB} MiB random data each (gzip tar), ${mib(imageBytes)} of blobs. ` +
      'containerd 1.6 with its own root, `content_sharing_policy = "isolated"` and a fresh namespace per pull, so every ' +
      'pull fetches and unpacks (overlayfs) everything; the image is removed again (`images rm --sync`) outside the timing. ' +
      '"direct": hosts.toml points at the registry. "agent cold": a fresh agent process with an empty cache (warmed up with an ' +
      'unrelated 8 MiB blob); "agent warm": ' +
      'the same agent right after (tags are still checked upstream, tag_ttl 0s). Timing is the wall time of `ctr images pull`.',
    [{ header: ['Path', 'Pull time', 'vs direct', 'MiB/s of blobs'], rows: [row('direct from the registry', times.direct), row('agent, cold', times.cold), row('agent, warm', times.warm)] }],
  );
  process.stdout.write(`${text}\n\n`);
}

// ---- start-up -----------------------------------------------------------------------------

const IDLE_SETTLE_MS = 5_000;

/** VmRSS of Node 24 (the agent's flags) running only an idle node:http server, IDLE_SETTLE_MS after it listens. */
async function bareServerRss(): Promise<ProcessUsage> {
  const code = "require('node:http').createServer((q, s) => s.end()).listen(0, '127.0.0.1', () => process.stdout.write('up\\n'))";
  const child = spawn(process.execPath, [...AGENT_NODE_FLAGS, '-e', code], { stdio: ['ignore', 'pipe', 'inherit'], env: agentEnv() });
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout.once('data', () => resolve());
      child.once('exit', (c: number | null) => reject(new Error(`bare node server exited (${String(c)})`)));
    });
    await new Promise((resolve) => setTimeout(resolve, IDLE_SETTLE_MS));
    return await processUsage(child.pid!);
  } finally {
    child.kill('SIGTERM');
  }
}

/** VmRSS of idle agents with `[kubernetes]` enabled (the API double of the tests), IDLE_SETTLE_MS after ready. */
async function kubeIdleRss(ctx: Context, runs: number): Promise<ProcessUsage[]> {
  const api = await startKubeApi();
  const kubeconfig = join(ctx.work, 'bench-kubeconfig');
  await writeFile(kubeconfig, api.kubeconfigYaml());
  const rss: ProcessUsage[] = [];
  try {
    for (let run = 0; run < runs; run++) rss.push(await idleUsage({ mirror: { upstream: ctx.registry.url }, kubernetes: { kubeconfig, nodeName: 'bench-node' } }, IDLE_SETTLE_MS));
  } finally {
    await api.stop();
  }
  return rss;
}

async function startupSection(ctx: Context): Promise<void> {
  const { opts, registry, report } = ctx;
  log(`startup: preparing ${STARTUP_BLOBS} small blobs`);
  const contents: Array<{ hex: string; bytes: Buffer }> = [];
  for (let i = 0; i < STARTUP_BLOBS; i++) {
    const bytes = randomBytes(1024 + (i % 4) * 1024);
    contents.push({ hex: createHash('sha256').update(bytes).digest('hex'), bytes });
  }
  const fill = async (cacheDir: string): Promise<void> => {
    const dir = join(cacheDir, 'blobs', 'sha256');
    await mkdir(dir, { recursive: true, mode: 0o700 });
    for (let i = 0; i < contents.length; i += 200) {
      await Promise.all(contents.slice(i, i + 200).map((c) => writeFile(join(dir, c.hex), c.bytes, { mode: 0o600 })));
    }
  };
  const times = { emptyListen: [] as number[], emptyReady: [] as number[], fullListen: [] as number[], fullReady: [] as number[], rssEmpty: [] as number[], rssFull: [] as number[], rssIdle: [] as number[] };
  const bareUsage: ProcessUsage[] = [];
  for (let run = 0; run < opts.runs; run++) bareUsage.push(await bareServerRss());
  const kubeUsage = await kubeIdleRss(ctx, opts.runs);
  const bareNode = bareUsage.map((u) => u.rssBytes);
  const withKube = kubeUsage.map((u) => u.rssBytes);
  const anonIdle: number[] = [];
  for (let run = 0; run < opts.runs; run++) {
    for (const full of [false, true]) {
      const agent = await startAgentChild({ mirror: { upstream: registry.url }, ...(full ? { prepareCache: fill } : {}) }, true);
      try {
        const t = agent.timing;
        if (!t) throw new Error('startup: no timing');
        const rss = (await agent.usage()).peakRssBytes;
        if (!full) {
          // Idle: nothing asked of it for a while after ready (timers, probes and the GC settled).
          await new Promise((resolve) => setTimeout(resolve, IDLE_SETTLE_MS));
          const idle = await agent.usage();
          times.rssIdle.push(idle.rssBytes);
          anonIdle.push(idle.rssAnonBytes);
        }
        if (full) {
          times.fullListen.push((t.listeningAt - t.spawnedAt) / 1000);
          times.fullReady.push((t.readyAt - t.spawnedAt) / 1000);
          times.rssFull.push(rss);
        } else {
          times.emptyListen.push((t.listeningAt - t.spawnedAt) / 1000);
          times.emptyReady.push((t.readyAt - t.spawnedAt) / 1000);
          times.rssEmpty.push(rss);
        }
      } finally {
        await agent.stop();
      }
    }
  }
  const idle = median(times.rssIdle);
  const idleKube = median(withKube);
  report.goal('Idle RSS ≤ 64 MiB without RegistryMirrors', `${mib(idle)} (a bare Node 24 node:http server: ${mib(median(bareNode))})`, idle <= 64 * MiB ? 'met' : 'NOT met');
  report.goal('Idle RSS ≤ 96 MiB with RegistryMirrors (`@kubernetes/client-node`)', mib(idleKube), idleKube <= 96 * MiB ? 'met' : 'NOT met');
  const text = report.section(
    'Agent start-up',
    `From spawning \`node --max-semi-space-size=1 dist/agent/main.js --config …\` to the "mirror listening" log line (log polled every 2 ms) and to the ` +
      `first \`/readyz\` 200 (the cache index rebuilt). "${STARTUP_BLOBS.toLocaleString('en-US')} cached blobs": 1–4 KiB files written ` +
      'straight into `<cache_dir>/blobs/sha256/<hex>` before the start. ' +
      `Idle RSS: VmRSS of the agent (empty cache, no RegistryMirrors) ${IDLE_SETTLE_MS / 1000} s after ready: ${withSpread(times.rssIdle, mib)}; ` +
      `the same Node 24 with the same flags running nothing but a node:http server on loopback: ${withSpread(bareNode, mib)} ` +
      `(the agent's own share: ${mib(median(times.rssIdle) - median(bareNode))}). ` +
      `With \`[kubernetes]\` enabled (RegistryMirror informers, node report, leader lease, against the in-process API double of the tests, no RegistryMirror objects): ${withSpread(withKube, mib)}. ` +
      `Of these, anonymous memory (RssAnon: heap, stacks, buffers; the rest is mapped files, mostly the node binary's own pages, shared with every node process and reclaimable): ` +
      `bare server ${mib(median(bareUsage.map((u) => u.rssAnonBytes)))}, agent ${mib(median(anonIdle))}, agent with \`[kubernetes]\` ${mib(median(kubeUsage.map((u) => u.rssAnonBytes)))}.`,
    [
      {
        header: ['Cache', 'To "mirror listening"', 'To /readyz 200', 'vs empty (ready)', 'Peak RSS at ready'],
        rows: [
          ['empty', withSpread(times.emptyListen, seconds), withSpread(times.emptyReady, seconds), '1.00×', mib(median(times.rssEmpty))],
          [
            `${STARTUP_BLOBS.toLocaleString('en-US')} cached blobs`,
            withSpread(times.fullListen, seconds),
            withSpread(times.fullReady, seconds),
            ratio(median(times.fullReady) / median(times.emptyReady)),
            mib(median(times.rssFull)),
          ],
        ],
      },
    ],
  );
  process.stdout.write(`${text}\n\n`);
}

// ---- profile ------------------------------------------------------------------------------

async function profileSection(ctx: Context): Promise<void> {
  const { opts, client, registry, report } = ctx;
  const sizeMiB = [...opts.sizesMiB].reverse().find((s) => s <= 256) ?? opts.sizesMiB[0] ?? 16;
  const blob = ctx.blobs.get(sizeMiB);
  if (!blob) throw new Error('profile: blob missing');
  const gets = Math.max(4, Math.round((2 * GiB) / blob.size));
  const profDir = join(ctx.work, 'cpu-profile');
  await mkdir(profDir, { recursive: true });
  log(`profile: agent with --cpu-prof, warm-up, 1 cold fill of ${sizeLabel(sizeMiB)}, then ${gets} warm GETs of it`);
  const agent = await startAgentChild({ mirror: { upstream: registry.url }, nodeArgs: ['--cpu-prof', '--cpu-prof-dir', profDir] });
  const at = { fillStart: 0, fillEnd: 0, warmStart: 0, warmEnd: 0, stop: 0 };
  const rates: number[] = [];
  let coldRate = 0;
  try {
    for (let i = 0; i < 2; i++) await getExact(client, blobUrl(agent.url, ctx.warmupBlob.digest), ctx.warmupBlob.size);
    // Idle gaps of 1 s separate the phases, so that the windows cut from the profile do not overlap.
    await delay(1_000);
    at.fillStart = performance.now();
    coldRate = mibPerSecond(await getExact(client, blobUrl(agent.url, blob.digest), blob.size));
    at.fillEnd = performance.now();
    await delay(1_000);
    at.warmStart = performance.now();
    for (let i = 0; i < gets; i++) rates.push(mibPerSecond(await getExact(client, blobUrl(agent.url, blob.digest), blob.size)));
    at.warmEnd = performance.now();
    await delay(1_000);
  } finally {
    at.stop = performance.now();
    await agent.stop();
  }
  const file = (await readdir(profDir)).find((f) => f.endsWith('.cpuprofile'));
  if (!file) throw new Error(`profile: no .cpuprofile in ${profDir}`);
  const kept = join(tmpdir(), `rpa-bench-${Date.now()}.cpuprofile`);
  await copyFile(join(profDir, file), kept);
  // The profile ends at process exit, shortly after SIGTERM: windows are measured back from the stop,
  // widened by 200 ms into the idle gaps (idle samples are not counted).
  const window = (from: number, to: number): { startBeforeEndMs: number; endBeforeEndMs: number } => ({
    startBeforeEndMs: at.stop - from + 200,
    endBeforeEndMs: Math.max(0, at.stop - to - 200),
  });
  const warm = await summariseProfile(kept, window(at.warmStart, at.warmEnd));
  const cold = await summariseProfile(kept, window(at.fillStart, at.fillEnd), 10);
  const served = (gets * blob.size) / GiB;
  const pct = (share: number): string => `${(share * 100).toFixed(1)} %`;
  const top = (title: string, entries: ProfileEntry[]): Table => ({
    header: [title, 'Where', 'ms', 'Share of busy'],
    rows: entries.map((e) => [e.name, e.where, num(e.selfMs, 0), pct(e.share)]),
  });
  const text = report.section(
    'Profile: agent hot path',
    `\`node --cpu-prof\` on the agent child (1 ms sampling; the main thread only: libuv's file reads and kernel work ` +
      `for sockets are not in it). **Warm:** ${gets} sequential GETs of one ${sizeLabel(sizeMiB)} blob (${num(served, 2)} GiB, ` +
      `${num(median(rates))} MiB/s median under the profiler); the main thread was busy ${num(warm.busyMs / 1000, 2)} s of ` +
      `${num(warm.windowMs / 1000, 2)} s, ${num(warm.busyMs / 1000 / served, 2)} s per GiB. **Cold:** the fill of the same blob ` +
      `(${num(coldRate)} MiB/s), busy ${num(cold.busyMs / 1000, 2)} s, ${num(cold.busyMs / 1000 / (blob.size / GiB), 2)} s per GiB. ` +
      `Profile kept at \`${kept}\`.`,
    [
      top('Warm, self time: function', warm.top),
      { header: ['Warm, self time by area', 'ms', 'Share of busy'], rows: warm.byArea.map((e) => [e.name, num(e.selfMs, 0), pct(e.share)]) },
      top('Warm, inclusive: agent frame', warm.inclusive),
      top('Cold fill, self time: function', cold.top),
      top('Cold fill, inclusive: agent frame', cold.inclusive),
    ],
  );
  process.stdout.write(`${text}\n\n`);
}

// ---- main ---------------------------------------------------------------------------------

async function runCleanups(): Promise<void> {
  while (cleanups.length > 0) {
    const next = cleanups.pop();
    await next?.().catch((err: unknown) => log(`cleanup: ${(err as Error).message}`));
  }
}

async function main(argv: readonly string[]): Promise<number> {
  let opts: BenchOptions;
  try {
    const parsed = parseArgs(argv);
    if (parsed === 'help') {
      process.stdout.write(USAGE);
      return 0;
    }
    opts = parsed;
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`bench: ${err.message}\n${USAGE}`);
      return 2;
    }
    throw err;
  }
  const startedAt = performance.now();
  const machine: Machine = await describeMachine();
  log(`${machine.cpu}, ${machine.cores} cores, ${num(machine.ramGiB)} GiB RAM, Node ${machine.node}, ${machine.kernel}`);
  log(`sizes ${opts.sizesMiB.map(sizeLabel).join(', ')}; runs ${opts.runs}${opts.bigRuns !== opts.runs ? ` (${opts.bigRuns} for ≥ 1 GiB)` : ''}; sections ${[...opts.sections].join(', ')}`);
  // The peers section brings its own registry and agents (a cluster lab): `--only peers` skips the shared set-up.
  const shared = [...opts.sections].some((s) => s !== 'peers');
  if (shared) await checkDisk(opts);

  const work = await makeTempDir('rpa-bench');
  if (!opts.keep) cleanups.push(() => removeTempDir(work));
  else log(`keeping ${work}`);
  const report = new Report();
  let ctx: Context | undefined;
  if (shared) {
    const blobsDir = join(work, 'blobs');
    await mkdir(blobsDir);
    const registry = await startRegistry();
    cleanups.push(() => registry.stop());
    const nginx = await startNginx(blobsDir, join(work, 'nginx'));
    cleanups.push(() => nginx.stop());

    const blobs = new Map<number, Blob>();
    for (const sizeMiB of opts.sizesMiB) {
      log(`making and pushing a ${sizeLabel(sizeMiB)} random blob`);
      blobs.set(sizeMiB, await makeBlob(blobsDir, `blob-${sizeMiB}m`, sizeMiB, registry));
    }
    const warmupBlob = await makeBlob(blobsDir, 'warmup', 8, registry);
    const calibrationBlob = blobs.get([...opts.sizesMiB].reverse().find((s) => s <= 1024) ?? opts.sizesMiB[0] ?? 16);
    if (!calibrationBlob) throw new Error('no blob for calibration');
    const client = await chooseClient(nginx, calibrationBlob, report);
    ctx = { opts, work, blobsDir, registry, nginx, client, blobs, warmupBlob, report };
  }
  const withCtx = (fn: (c: Context) => Promise<void>) => (): Promise<void> => {
    if (!ctx) throw new Error('shared set-up missing');
    return fn(ctx);
  };

  const timings: string[] = [];
  const foreign: string[] = [];
  let peersRun: { seconds: number; cores: number; notes: string[] } | undefined;
  const monitor = new LoadMonitor(await ticksPerSecond());
  await monitor.start();
  cleanups.push(async () => monitor.stop());
  if (opts.waitIdleMinutes > 0) {
    const deadline = performance.now() + opts.waitIdleMinutes * 60_000;
    for (;;) {
      await monitor.take();
      await delay(5_000);
      const other = await monitor.take();
      const cores = other.cpuSeconds / other.wallSeconds;
      if (cores < 0.1) break;
      if (performance.now() > deadline) {
        report.notes.push(`The machine did not become idle within ${opts.waitIdleMinutes} min (--wait-idle); measured anyway.`);
        break;
      }
      log(`waiting for an idle machine: other processes use ${cores.toFixed(2)} cores (${other.top.join(', ')})`);
    }
    await monitor.take();
  }
  const sections: Array<[Section, () => Promise<void>]> = [
    ['warm', withCtx(warmSection)],
    ['cold', withCtx(coldSection)],
    ['budget', withCtx(budgetSection)],
    ['concurrent', withCtx(concurrentSection)],
    ['containerd', withCtx(containerdSection)],
    ['startup', withCtx(startupSection)],
    ['peers', async () => void process.stdout.write(`${await peersSection({ opts, report, work, log, cleanups })}\n\n`)],
    ['profile', withCtx(profileSection)],
  ];
  for (const [name, run] of sections) {
    if (!opts.sections.has(name)) continue;
    const t0 = performance.now();
    log(`section ${name}`);
    await run();
    const took = (performance.now() - t0) / 1000;
    timings.push(`${name} ${seconds(took)}`);
    const other = await monitor.take();
    const cores = other.cpuSeconds / other.wallSeconds;
    foreign.push(`${name} ${cores.toFixed(2)}`);
    log(`section ${name} took ${seconds(took)}; other processes used ${cores.toFixed(2)} cores on average`);
    const disturbed =
      `**Disturbed:** during the ${name} section other processes used ${other.cpuSeconds.toFixed(1)} core-seconds ` +
      `(${cores.toFixed(2)} of ${machine.cores} cores on average; ${other.top.join(', ')}); its figures are less reliable.`;
    // The peers section carries its own note (it may be kept by later reports; see below).
    if (cores > 0.1 && name !== 'peers') report.notes.push(disturbed);
    if (name === 'peers') peersRun = { seconds: took, cores, notes: cores > 0.1 ? [disturbed] : [] };
  }
  if (!opts.sections.has('warm')) report.goal('Warm GET ratios', 'section not run', 'not measured');

  const total = (performance.now() - startedAt) / 1000;
  const head = await runCommand('git', ['rev-parse', '--short', 'HEAD'], { timeoutMs: 10_000 }).catch(() => undefined);
  const dirty = await runCommand('git', ['status', '--porcelain', '--', 'agent'], { timeoutMs: 10_000 }).catch(() => undefined);
  const settings = [
    `Agent code: git ${head?.stdout.trim() || 'unknown'}${dirty?.stdout.trim() ? ' with uncommitted changes under agent/' : ''}`,
    `Command: \`bash scripts/bench${argv.length > 0 ? ` ${argv.join(' ')}` : ''}\`${opts.quick ? ' (smoke run: small sizes, 1 run; numbers are indicative only)' : ''}`,
    `Blob sizes: ${opts.sizesMiB.map(sizeLabel).join(', ')}; runs per figure: ${opts.runs}${opts.bigRuns !== opts.runs ? `, ${opts.bigRuns} for blobs ≥ 1 GiB (reduced to fit the time budget)` : ''}`,
    `Total time ${seconds(total)} (${timings.join(', ')}, the rest is blob generation and set-up)`,
    `CPU used by other processes on the machine (cores, average per section; sampled from /proc each second): ${foreign.join(', ')}`,
  ];
  const out = resolve(process.cwd(), opts.out);
  const existing = await readFile(out, 'utf8').catch(() => undefined);
  if (peersRun) {
    // The peers section says when and how it was measured: a report can carry it over from an
    // earlier run (it is not in the default run, and `--only peers` keeps the rest of the report).
    const at = report.sections.findIndex((text) => text.startsWith(`## ${PEERS_TITLE}`));
    const provenance =
      `_Measured by \`bash scripts/bench${argv.length > 0 ? ` ${argv.join(' ')}` : ''}\` on ${machine.date}, agent code git ${head?.stdout.trim() || 'unknown'}` +
      `${dirty?.stdout.trim() ? ' with uncommitted changes under agent/' : ''}, in ${seconds(peersRun.seconds)}${opts.quick ? ' (smoke run: numbers are indicative only)' : ''}; ` +
      `other processes used ${peersRun.cores.toFixed(2)} cores meanwhile._`;
    if (at >= 0) report.sections[at] = [report.sections[at], '', provenance, ...(peersRun.notes.length > 0 ? ['', ...peersRun.notes.map((n) => `- ${n}`)] : [])].join('\n');
  }
  if (peersRun && opts.sections.size === 1) {
    // `--only peers` replaces the peers section (and its goals) of an existing report and keeps the rest.
    const section = report.sections[0] ?? '';
    const peerGoals = report.goals.filter((g) => g.goal.startsWith(PEERS_GOAL_PREFIX));
    const spliced = existing === undefined ? undefined : spliceReport(existing, section, peerGoals.map(goalRow));
    if (spliced !== undefined) {
      await writeFile(out, spliced);
      log(`replaced the peers section and goals of ${out} (other sections kept) in ${seconds(total)} total`);
      process.stdout.write(`\nGoals:\n${peerGoals.map((g) => `  ${g.verdict.padEnd(12)} ${g.goal}: ${g.measured}`).join('\n')}\n`);
      return 0;
    }
    log(`${out} is not a report of this script: writing a new one`);
  }
  // A run without the peers section keeps the peers section and goals of the report it replaces.
  const carried = !peersRun && existing !== undefined ? extractPeers(existing) : undefined;
  // What was tried and what it changed is kept by hand in scripts/bench-notes.md and appended.
  const notes = await readFile(new URL('./bench-notes.md', import.meta.url), 'utf8').catch(() => '');
  const written = `${renderReport(machine, settings, report).trimEnd()}\n\n${notes}`.trimEnd() + '\n';
  await writeFile(out, (carried && spliceReport(written, carried.section, carried.goalRows)) || written);
  if (carried) log(`kept the peers section of the previous ${out} (not measured in this run)`);
  log(`wrote ${out} in ${seconds(total)} total`);
  process.stdout.write(`\nGoals:\n${report.goals.map((g) => `  ${g.verdict.padEnd(12)} ${g.goal}: ${g.measured}`).join('\n')}\n`);
  return 0;
}

let interrupted = false;
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    interrupted = true;
    log(`${signal}: cleaning up`);
    void runCleanups().finally(() => process.exit(130));
  });
}

main(process.argv.slice(2))
  .then(async (code) => {
    await runCleanups();
    process.exit(code);
  })
  .catch(async (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    if (!interrupted) await runCleanups();
    process.exit(1);
  });
