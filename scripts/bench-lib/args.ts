/** Command line of scripts/bench. */

export const SECTIONS = ['warm', 'cold', 'budget', 'concurrent', 'containerd', 'startup', 'peers', 'profile'] as const;
export type Section = (typeof SECTIONS)[number];

export interface BenchOptions {
  quick: boolean;
  /** Runs per measurement (medians are taken over these). */
  runs: number;
  /** Runs for blobs of 1 GiB and more (default: `runs`). */
  bigRuns: number;
  /** Blob sizes in MiB. */
  sizesMiB: number[];
  /** Size in MiB of the random file inside each of the 5 image layers. */
  layerMiB: number;
  layers: number;
  /** Cluster sizes (nodes) of the peers section, ascending. */
  peerNodes: number[];
  sections: Set<Section>;
  /** Markdown output (relative to the repository root). */
  out: string;
  /** Keep the temp dir (blobs, logs, profiles) for inspection. */
  keep: boolean;
  /** Before measuring, wait (at most this many minutes) until other processes leave the CPUs alone. */
  waitIdleMinutes: number;
}

/** Largest node count of the cluster lab (addresses .10 … .253 of one /24). */
const MAX_PEER_NODES = 244;
/** From this many nodes on the peers section measures one run per size (runtime: see USAGE). */
export const PEER_ONE_RUN_FROM = 10;

export const USAGE = `usage: bash scripts/bench [options]

Starts nginx, the distribution registry (plain and in proxy mode), a Connectivity Proxy double, a
counting proxy, containerd and the agent (as child processes) on loopback, measures, and writes a
Markdown report (default BENCHMARKS.md). Figures are medians of --runs runs; ratios are against
references measured in the same run. The peers section (root: network namespaces, tc) runs N agents
in a cluster lab; it takes ~15-20 min for 5,10,20 nodes, so it runs only when named in --only, and a
report written without it keeps the peers section of the report it replaces.

  --quick            smoke run: sizes 16,64 MiB, 1 run, 5 x 8 MiB image layers; peers: 5 nodes, 64 MiB
  --runs N           runs per measurement (default 3; --quick: 1)
  --big-runs N       runs for blobs >= 1 GiB (default: --runs)
  --sizes A,B,...    blob sizes in MiB (default 16,256,512,1024)
  --layer-mib N      MiB of random data per image layer (default 100; --quick: 8)
  --only S,...       sections: ${SECTIONS.join(',')} (default: all but peers and profile);
                     --only peers replaces just the peers section of an existing report
  --peer-nodes A,... cluster sizes for the peers section (default 5,10,20; --quick: 5); a 256 MiB
                     blob (--quick: 64 MiB) over a 200 Mbit/s link; --runs runs below ${PEER_ONE_RUN_FROM} nodes,
                     1 run from ${PEER_ONE_RUN_FROM} on (a peers-off rollout of 20 nodes alone takes ~4 min)
  --profile          also run the profile section (agent with --cpu-prof, warm GETs)
  --out FILE         report file (default BENCHMARKS.md)
  --keep             keep the temp dir
  --wait-idle[=MIN]  before measuring, wait up to MIN minutes (default 15) until other processes
                     use < 0.1 cores (each section reports what other processes used anyway)
  --help
`;

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

function positiveInt(flag: string, value: string | undefined): number {
  const n = Number(value);
  if (value === undefined || !Number.isInteger(n) || n < 1) throw new UsageError(`${flag} needs a positive integer, got ${String(value)}`);
  return n;
}

export function parseArgs(argv: readonly string[]): BenchOptions | 'help' {
  let quick = false;
  let runs: number | undefined;
  let bigRuns: number | undefined;
  let sizes: number[] | undefined;
  let layerMiB: number | undefined;
  let peerNodes: number[] | undefined;
  let only: Section[] | undefined;
  let profile = false;
  let out = 'BENCHMARKS.md';
  let keep = false;
  let waitIdleMinutes = 0;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] ?? '';
    const [flag, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const value = (): string | undefined => inline ?? argv[++i];
    switch (flag) {
      case '--help':
      case '-h':
        return 'help';
      case '--quick':
        quick = true;
        break;
      case '--runs':
        runs = positiveInt(flag, value());
        break;
      case '--big-runs':
        bigRuns = positiveInt(flag, value());
        break;
      case '--sizes':
        sizes = (value() ?? '').split(',').map((s) => positiveInt(flag, s.trim()));
        break;
      case '--layer-mib':
        layerMiB = positiveInt(flag, value());
        break;
      case '--peer-nodes':
        peerNodes = (value() ?? '').split(',').map((s) => positiveInt(flag, s.trim()));
        for (const n of peerNodes) if (n < 2 || n > MAX_PEER_NODES) throw new UsageError(`--peer-nodes: ${n} is not in 2…${MAX_PEER_NODES}`);
        break;
      case '--only': {
        const names = (value() ?? '').split(',').map((s) => s.trim());
        for (const name of names) if (!(SECTIONS as readonly string[]).includes(name)) throw new UsageError(`--only: unknown section ${name}`);
        only = names as Section[];
        break;
      }
      case '--profile':
        profile = true;
        break;
      case '--out':
        out = value() ?? '';
        if (!out) throw new UsageError('--out needs a file name');
        break;
      case '--keep':
        keep = true;
        break;
      case '--wait-idle':
        waitIdleMinutes = inline === undefined ? 15 : positiveInt(flag, inline);
        break;
      default:
        throw new UsageError(`unknown option ${arg}`);
    }
  }
  const sizesMiB = [...new Set(sizes ?? (quick ? [16, 64] : [16, 256, 512, 1024]))].sort((a, b) => a - b);
  const sections = new Set<Section>(only ?? SECTIONS.filter((s) => s !== 'profile' && s !== 'peers'));
  if (profile) sections.add('profile');
  const r = runs ?? (quick ? 1 : 3);
  return {
    quick,
    runs: r,
    bigRuns: bigRuns ?? r,
    sizesMiB,
    layerMiB: layerMiB ?? (quick ? 8 : 100),
    layers: 5,
    peerNodes: [...new Set(peerNodes ?? (quick ? [5] : [5, 10, 20]))].sort((a, b) => a - b),
    sections,
    out,
    keep,
    waitIdleMinutes,
  };
}

export function runsFor(opts: BenchOptions, sizeMiB: number): number {
  return sizeMiB >= 1024 ? opts.bigRuns : opts.runs;
}

/** Runs per cluster size in the peers section: --runs below PEER_ONE_RUN_FROM nodes, then 1. */
export function peerRunsFor(opts: BenchOptions, nodes: number): number {
  return nodes >= PEER_ONE_RUN_FROM ? 1 : opts.runs;
}
