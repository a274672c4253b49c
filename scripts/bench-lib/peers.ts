/**
 * The peers section of scripts/bench: a rollout of one cold blob to all N nodes of a cluster lab at
 * once (test/fixtures/peer-lab.ts: one agent process per network namespace, the registry behind the
 * Connectivity Proxy double over a tc-shaped upstream link), with peer sharing on and off, against
 * one node pulling a cold blob of the same size alone over the same link, measured in the same lab.
 */
import { mkdir, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { rankOwners } from '../../agent/peers/rendezvous.ts';
import { type FileBlob, makeRandomBlobFile, pushBlob } from '../../test/fixtures/image.ts';
import { parseMetrics } from '../../test/fixtures/metrics-text.ts';
import { type Fetched, type PeerLab, startPeerLab } from '../../test/fixtures/peer-lab.ts';
import { type BenchOptions, PEER_ONE_RUN_FROM, peerRunsFor } from './args.ts';
import { GiB, MiB } from './client.ts';
import { type Goal, type Report, type Table, renderTable } from './report.ts';
import { median, num, ratio, seconds, sizeLabel, withSpread } from './stats.ts';

const REPO = 'bench/peers';
/** The upstream link (the tunnel), Mbit/s each way. */
const LINK_MBIT = 200;
const PEER_BYTES_RECEIVED = 'registry_proxy_peer_bytes_total{direction="received"}';
export const PEERS_TITLE = 'Peer sharing: a cold blob rolled out to N nodes at once';
/** Goals of this section start with this (a report spliced by `--only peers` replaces them). */
export const PEERS_GOAL_PREFIX = 'Peer rollout';

export interface PeersDeps {
  opts: BenchOptions;
  report: Report;
  /** A directory for the blob files (removed here when done). */
  work: string;
  log(message: string): void;
  /** Stops registered here run on SIGINT/SIGTERM of the bench (they are idempotent). */
  cleanups: Array<() => Promise<unknown>>;
}

/** One timed fetch of one blob by a set of nodes at once. */
interface Phase {
  seconds: number;
  /** Body bytes of blob GETs through the tunnel (counted on its far side). */
  tunnelBytes: number;
  tunnelGets: number;
  /** Bytes the nodes received from peers (sum of registry_proxy_peer_bytes_total{direction="received"}). */
  peerBytes: number;
  nodes: number;
  /** Nodes that got status 200, every byte, and bytes whose sha256 is the digest. */
  right: number;
  /** What went wrong on the others. */
  wrong: string[];
}

interface SizeResult {
  nodes: number;
  runs: number;
  ref: Phase[];
  copy: Phase[];
  on: Phase[];
  off: Phase[];
}

function once(fn: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined;
  return () => (done ??= fn());
}

async function peerBytesReceived(lab: PeerLab, indexes: readonly number[]): Promise<number> {
  const texts = await Promise.all(indexes.map((i) => lab.metrics(i)));
  return texts.reduce((sum, text) => sum + (parseMetrics(text).get(PEER_BYTES_RECEIVED) ?? 0), 0);
}

/** Every node in `indexes` GETs `blob` at once; wall time from starting the clients to the last answer. */
async function phase(lab: PeerLab, indexes: readonly number[], blob: FileBlob, timeoutMs: number): Promise<Phase> {
  const peerBefore = await peerBytesReceived(lab, indexes);
  await lab.resetTunnel();
  const started = performance.now();
  const answers = await Promise.all(
    indexes.map((i) => lab.getBlob(i, REPO, blob.digest, timeoutMs).catch((err: unknown): Fetched => ({ error: (err as Error).message.slice(0, 300), ms: 0 }))),
  );
  const took = (performance.now() - started) / 1000;
  const records = (await lab.tunnel()).filter((r) => r.method === 'GET' && r.path.includes(blob.digest));
  const peerAfter = await peerBytesReceived(lab, indexes);
  const wrong: string[] = [];
  answers.forEach((a, k) => {
    const ok = a.error === undefined && a.status === 200 && a.bytes === blob.size && a.digest === blob.digest;
    if (!ok) wrong.push(`node-${indexes[k]}: ${a.error ?? `status ${a.status}, ${a.bytes} bytes, ${a.digest}`}`);
  });
  return {
    seconds: took,
    tunnelBytes: records.reduce((sum, r) => sum + r.bytes, 0),
    tunnelGets: records.length,
    peerBytes: peerAfter - peerBefore,
    nodes: indexes.length,
    right: indexes.length - wrong.length,
    wrong,
  };
}

async function checkDisk(dir: string, need: number, what: string): Promise<void> {
  const fs = await statfs(dir);
  const free = fs.bavail * fs.bsize;
  if (free < need) throw new Error(`peers: not enough free disk under ${dir} for ${what}: ${num(free / GiB)} GiB free, need about ${num(need / GiB)} GiB`);
}

/**
 * A fresh lab of `nodes` agents (peers on or off) with the blobs pushed, for `use`; stopped after
 * (also on SIGINT of the bench).
 */
async function withLab<T>(deps: PeersDeps, nodes: number, peers: boolean, blobs: readonly FileBlob[], use: (lab: PeerLab) => Promise<T>): Promise<T> {
  const lab = await startPeerLab({ nodes, upstreamRateMbit: LINK_MBIT, peers });
  const stop = once(() => lab.stop());
  deps.cleanups.push(stop);
  try {
    for (const blob of blobs) await pushBlob(lab.registry.url, REPO, blob);
    const t0 = performance.now();
    await Promise.all(lab.agents.map((a) => lab.startAgent(a.index)));
    deps.log(`peers: ${nodes} agents (peers ${peers ? 'on' : 'off'}) up in ${seconds((performance.now() - t0) / 1000)}`);
    return await use(lab);
  } finally {
    await stop();
  }
}

function describe(p: Phase): string {
  return `${seconds(p.seconds)}, tunnel ${num(p.tunnelBytes / MiB)} MiB in ${p.tunnelGets} GET(s), peers ${num(p.peerBytes / MiB)} MiB, right bytes ${p.right}/${p.nodes}`;
}

/** Runs the section; adds its table and goals to the report and returns the section's text. */
export async function peersSection(deps: PeersDeps): Promise<string> {
  const { opts, report, log } = deps;
  if (process.getuid?.() !== 0) throw new Error('peers: the cluster lab (network namespaces, tc) needs root');
  const sizeMiB = opts.quick ? 64 : 256;
  const size = sizeMiB * MiB;
  const linkSeconds = (size * 8) / (LINK_MBIT * 1e6);
  const maxRuns = Math.max(...opts.peerNodes.map((n) => peerRunsFor(opts, n)));
  const dir = join(deps.work, 'peer-blobs');
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  // Per run: blob A (the rollout) and blob B (the reference and the copy); every lab is fresh, so
  // the same files are cold again in the next lab.
  await checkDisk(dir, 2 * maxRuns * size + GiB, 'the blob files');
  log(`peers: making ${2 * maxRuns} random ${sizeLabel(sizeMiB)} blobs`);
  const rollout: FileBlob[] = [];
  const alone: FileBlob[] = [];
  for (let run = 0; run < maxRuns; run++) {
    rollout.push(await makeRandomBlobFile(join(dir, `rollout-${run}`), size));
    alone.push(await makeRandomBlobFile(join(dir, `alone-${run}`), size));
  }
  const results: SizeResult[] = [];
  try {
    for (const nodes of opts.peerNodes) {
      const runs = peerRunsFor(opts, nodes);
      // Worst case: every node pulls alone through the link, one after the other; plus start-up slack.
      const timeoutMs = Math.max(120_000, Math.ceil(4 * nodes * linkSeconds * 1000) + 60_000);
      const result: SizeResult = { nodes, runs, ref: [], copy: [], on: [], off: [] };
      // Registry copy, every node's cache (A and B, each run), slack.
      await checkDisk(deps.work, (2 * runs + 2 * runs * nodes) * size + GiB, `${nodes} nodes`);
      const a = rollout.slice(0, runs);
      const b = alone.slice(0, runs);
      await withLab(deps, nodes, true, [...a, ...b], async (lab) => {
        const all = lab.agents.map((x) => x.index);
        for (let run = 0; run < runs; run++) {
          const blobA = a[run]!;
          const blobB = b[run]!;
          const ownerName = rankOwners(blobB.digest, lab.members)[0]!.name;
          const owner = lab.agents.findIndex((x) => x.name === ownerName);
          const what = `peers ${nodes} nodes run ${run + 1}`;
          const ref = await phase(lab, [owner], blobB, timeoutMs);
          log(`${what}: one node alone (node-${owner}, the owner) ${describe(ref)}`);
          const copy = await phase(lab, all.filter((i) => i !== owner), blobB, timeoutMs);
          log(`${what}: copy to the ${nodes - 1} others from the owner ${describe(copy)}`);
          const on = await phase(lab, all, blobA, timeoutMs);
          log(`${what}: rollout, peers on ${describe(on)}`);
          result.ref.push(ref);
          result.copy.push(copy);
          result.on.push(on);
        }
      });
      await withLab(deps, nodes, false, a, async (lab) => {
        const all = lab.agents.map((x) => x.index);
        for (let run = 0; run < runs; run++) {
          const off = await phase(lab, all, a[run]!, timeoutMs);
          log(`peers ${nodes} nodes run ${run + 1}: rollout, peers off ${describe(off)}`);
          result.off.push(off);
        }
      });
      results.push(result);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return addPeersReport(report, results, { sizeMiB, linkSeconds, runs: opts.runs });
}

function addPeersReport(report: Report, results: readonly SizeResult[], setup: { sizeMiB: number; linkSeconds: number; runs: number }): string {
  const med = (phases: readonly Phase[], pick: (p: Phase) => number): number => median(phases.map(pick));
  const times = (phases: readonly Phase[]): number[] => phases.map((p) => p.seconds);
  const right = (phases: readonly Phase[]): string => {
    const got = phases.reduce((n, p) => n + p.right, 0);
    const of = phases.reduce((n, p) => n + p.nodes, 0);
    return got === of ? `${got}/${of}` : `**${got}/${of}**`;
  };
  const wrong: string[] = [];
  const rows: string[][] = [];
  const timeGoal: string[] = [];
  const tunnelGoal: string[] = [];
  let timeMet = true;
  let tunnelMet = true;
  for (const r of results) {
    const size = setup.sizeMiB * MiB;
    const ref = median(times(r.ref));
    const copy = median(times(r.copy));
    const on = median(times(r.on));
    const off = median(times(r.off));
    const label = `${r.nodes}${r.runs !== setup.runs ? ` (${r.runs} run${r.runs === 1 ? '' : 's'})` : ''}`;
    const row = (what: string, phases: readonly Phase[], vsRef: string): string[] => [
      label,
      what,
      withSpread(times(phases), seconds),
      vsRef,
      `${num(med(phases, (p) => p.tunnelBytes) / size, 2)} (${[...new Set(phases.map((p) => p.tunnelGets))].join('/')} GET)`,
      num(med(phases, (p) => p.peerBytes) / size, 2),
      right(phases),
    ];
    rows.push(
      row('one node alone (reference: the link)', r.ref, '1.00×'),
      row(`all ${r.nodes}, peers on`, r.on, ratio(on / ref)),
      row(`all ${r.nodes}, peers off`, r.off, ratio(off / ref)),
      row(`copy: ${r.nodes - 1} node${r.nodes === 2 ? '' : 's'} from the owner (blob on its disk)`, r.copy, ratio(copy / ref)),
    );
    for (const [what, phases] of [['reference', r.ref], ['copy', r.copy], ['peers on', r.on], ['peers off', r.off]] as const) {
      for (const p of phases) for (const w of p.wrong) wrong.push(`${r.nodes} nodes, ${what}: ${w}`);
    }
    const allRight = [...r.ref, ...r.copy, ...r.on].every((p) => p.right === p.nodes);
    if (!(on <= ref + copy) || !allRight) timeMet = false;
    timeGoal.push(`${r.nodes} nodes ${ratio(on / ref)} (${seconds(on)} vs ${seconds(ref)} + ${seconds(copy)} copy)${allRight ? '' : ', WRONG BYTES'}`);
    const tunnel = med(r.on, (p) => p.tunnelBytes) / size;
    if (!(tunnel <= 1.05)) tunnelMet = false;
    tunnelGoal.push(`${r.nodes} nodes ${num(tunnel, 2)}× (peers off ${num(med(r.off, (p) => p.tunnelBytes) / size, 2)}×)`);
  }
  report.goal(`${PEERS_GOAL_PREFIX}: last node complete ≤ one node's cold pull + copying the blob over the cluster network`, timeGoal.join('; '), timeMet ? 'met' : 'NOT met');
  report.goal(`${PEERS_GOAL_PREFIX}: ≤ 1.05× the blob through the tunnel`, tunnelGoal.join('; '), tunnelMet ? 'met' : 'NOT met');
  const table: Table = {
    header: ['Nodes', 'Pull', 'Last node complete', "vs one node's cold pull", 'Tunnel bytes ÷ blob', 'Peer bytes ÷ blob', 'Right bytes'],
    rows,
  };
  const sizes = results.map((r) => r.nodes);
  return report.section(
    PEERS_TITLE,
    `One cold ${sizeLabel(setup.sizeMiB)} random blob pulled by every node of a cluster at once, N = ${sizes.join(', ')} ` +
      '(`test/fixtures/peer-lab.ts`): one agent process (`dist/agent/main.js`) per node, each in its own network namespace on a ' +
      'bridge (the cluster network, not shaped); the distribution registry in an upstream namespace behind the Connectivity Proxy ' +
      `double, reached over one veth pair shaped with tc tbf to ${LINK_MBIT} Mbit/s each way (the tunnel: ${seconds(setup.linkSeconds)} ` +
      `for the blob's bytes alone); a counting proxy on the tunnel's far side counts its bytes. Each N gets two fresh labs with empty ` +
      'caches. Peers on, per run: (1) **reference**: the owner of a second blob of the same size (rendezvous hashing) pulls it alone, ' +
      "cold: one node's cold pull over the link, with nothing else running; (2) **copy**: the other N−1 nodes pull that blob at once, " +
      'each from the owner (mutual TLS, from its disk): the time to copy the bytes over the cluster network; (3) **rollout**: all N ' +
      'nodes pull the first blob at once. Peers off (`[peers]` absent): the same rollout, every node through the tunnel. A node pulls ' +
      'with a `node` client inside its namespace (GET on its agent, hashing the body); "right bytes" counts answers with status 200, ' +
      'every byte and the sha256 of the digest. Times are wall clock from starting the N clients to the last one done. Peer bytes: ' +
      'the sum over the pulling nodes of `registry_proxy_peer_bytes_total{direction="received"}`. All agents share this machine\'s ' +
      `CPUs (TLS, hashing, writing), where a real cluster has a NIC and CPUs per node. From ${PEER_ONE_RUN_FROM} nodes on one run per ` +
      'N (a peers-off rollout of 20 nodes alone takes ~20 × the link time).',
    [table],
    wrong.length > 0 ? [`**Wrong or missing bytes:** ${wrong.slice(0, 10).join('; ')}${wrong.length > 10 ? ` (and ${wrong.length - 10} more)` : ''}`] : [],
  );
}

/** A goal as a row of the report's goals table (as renderReport writes it). */
export function goalRow(g: Goal): string {
  const table = renderTable({ header: ['Goal', 'Measured', 'Verdict'], rows: [[g.goal, g.measured, g.verdict === 'met' ? 'met' : `**${g.verdict}**`]] });
  return table.split('\n')[2] ?? '';
}

// ---- `--only peers`: replace the peers section of an existing report --------------------------

/** Where the goals table of a report is: [first row after the separator, end), or undefined. */
function goalRows(lines: readonly string[]): [number, number] | undefined {
  const goalsAt = lines.indexOf('## Goals');
  if (goalsAt < 0) return undefined;
  let first = goalsAt + 1;
  while (first < lines.length && !lines[first]!.startsWith('|')) first++;
  let end = first;
  while (end < lines.length && lines[end]!.startsWith('|')) end++;
  return end - first < 2 ? undefined : [first + 2, end];
}

/** The peers section of a report (heading to the next "## " heading): [start, end), or undefined. */
function sectionLines(lines: readonly string[]): [number, number] | undefined {
  const from = lines.indexOf(`## ${PEERS_TITLE}`);
  if (from < 0) return undefined;
  let to = from + 1;
  while (to < lines.length && !lines[to]!.startsWith('## ')) to++;
  return [from, to];
}

/** The peers section and goal rows of a report written by scripts/bench, if it has them. */
export function extractPeers(report: string): { section: string; goalRows: string[] } | undefined {
  const lines = report.split('\n');
  const at = sectionLines(lines);
  if (!report.startsWith('# Benchmarks\n') || !at) return undefined;
  const goals = goalRows(lines);
  return {
    section: lines.slice(at[0], at[1]).join('\n').trimEnd(),
    goalRows: goals ? lines.slice(goals[0], goals[1]).filter((l) => l.startsWith(`| ${PEERS_GOAL_PREFIX}`)) : [],
  };
}

/**
 * `existing` (a report written by scripts/bench) with its peers section and peers goal rows
 * replaced by `section` and `rows` (added when absent: the section before the hand-kept notes, the
 * rows at the end of the goals table). Undefined when `existing` is not such a report.
 */
export function spliceReport(existing: string, section: string, rows: readonly string[]): string | undefined {
  if (!existing.startsWith('# Benchmarks\n')) return undefined;
  const lines = existing.split('\n');
  const goals = goalRows(lines);
  if (!goals) return undefined;
  const kept = lines.slice(goals[0], goals[1]).filter((l) => !l.startsWith(`| ${PEERS_GOAL_PREFIX}`));
  lines.splice(goals[0], goals[1] - goals[0], ...kept, ...rows);
  const body = section.split('\n');
  const at = sectionLines(lines);
  if (at) {
    lines.splice(at[0], at[1] - at[0], ...body, '');
  } else {
    const notes = lines.indexOf('## What was tried, and what it changed');
    lines.splice(notes >= 0 ? notes : lines.length, 0, ...body, '');
  }
  return `${lines.join('\n').trimEnd()}\n`;
}
