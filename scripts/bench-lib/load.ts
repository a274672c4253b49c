/**
 * CPU used on this machine by processes that are not the benchmark or its children (another test
 * run, a build...). Sampled from /proc once a second; kernel threads are left out. Processes that
 * live less than a sampling interval are missed, so this is a lower bound.
 */
import { readdir, readFile } from 'node:fs/promises';

interface ProcStat {
  ppid: number;
  ticks: number;
  comm: string;
}

async function readStats(): Promise<Map<number, ProcStat>> {
  const stats = new Map<number, ProcStat>();
  const entries = await readdir('/proc');
  await Promise.all(
    entries
      .filter((e) => /^\d+$/.test(e))
      .map(async (e) => {
        try {
          const text = await readFile(`/proc/${e}/stat`, 'utf8');
          const close = text.lastIndexOf(')');
          const comm = text.slice(text.indexOf('(') + 1, close);
          const fields = text.slice(close + 2).split(' ');
          stats.set(Number(e), { ppid: Number(fields[1]), ticks: Number(fields[11]) + Number(fields[12]), comm });
        } catch {
          // gone
        }
      }),
  );
  return stats;
}

/** `vitest/dist/workers/forks.js` rather than `MainThread` (node renames its main thread). */
async function label(pid: number, comm: string): Promise<string> {
  try {
    const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0').filter((a) => a !== '');
    const script = argv.slice(1).find((a) => !a.startsWith('-') && /[/.]/.test(a));
    const base = (path: string): string => path.split('/').slice(-3).join('/');
    return argv[0] ? `${base(argv[0]).split('/').pop() ?? ''}${script ? ` ${base(script)}` : ''}` : comm;
  } catch {
    return comm;
  }
}

function ours(pid: number, stats: Map<number, ProcStat>): boolean {
  for (let p: number | undefined = pid, depth = 0; p !== undefined && p > 1 && depth < 64; depth++) {
    if (p === process.pid) return true;
    p = stats.get(p)?.ppid;
  }
  return false;
}

function kernelThread(pid: number, stats: Map<number, ProcStat>): boolean {
  return pid === 2 || stats.get(pid)?.ppid === 2;
}

export interface ForeignCpu {
  /** Core-seconds used by other processes. */
  cpuSeconds: number;
  wallSeconds: number;
  /** The busiest other processes (command names). */
  top: string[];
}

export class LoadMonitor {
  readonly #hz: number;
  readonly #first = new Map<number, number>();
  readonly #last = new Map<number, number>();
  readonly #names = new Map<number, string>();
  readonly #comms = new Map<number, string>();
  #timer: NodeJS.Timeout | undefined;
  #started = 0;
  #sampling: Promise<void> = Promise.resolve();

  constructor(ticksPerSecond: number) {
    this.#hz = ticksPerSecond;
  }

  async #sample(initial: boolean): Promise<void> {
    const stats = await readStats();
    for (const [pid, s] of stats) {
      if (kernelThread(pid, stats) || ours(pid, stats)) continue;
      // A process first seen after the start counts from zero: all its CPU happened during the window.
      if (!this.#first.has(pid)) this.#first.set(pid, initial ? s.ticks : 0);
      this.#last.set(pid, s.ticks);
      // Re-labelled when the command changes (sh -c … exec node …).
      if (this.#comms.get(pid) !== s.comm) {
        this.#comms.set(pid, s.comm);
        this.#names.set(pid, await label(pid, s.comm));
      }
    }
  }

  async start(): Promise<void> {
    this.#started = performance.now();
    await this.#sample(true);
    this.#timer = setInterval(() => {
      this.#sampling = this.#sampling.then(() => this.#sample(false)).catch(() => undefined);
    }, 1_000);
    this.#timer.unref();
  }

  /** Foreign CPU since start (or since the last `take`), and restarts the window. */
  async take(): Promise<ForeignCpu> {
    await this.#sampling;
    await this.#sample(false);
    const byName = new Map<string, number>();
    let ticks = 0;
    for (const [pid, last] of this.#last) {
      const used = last - (this.#first.get(pid) ?? last);
      if (used <= 0) continue;
      ticks += used;
      const name = this.#names.get(pid) ?? String(pid);
      byName.set(name, (byName.get(name) ?? 0) + used);
    }
    const now = performance.now();
    const result: ForeignCpu = {
      cpuSeconds: ticks / this.#hz,
      wallSeconds: (now - this.#started) / 1000,
      top: [...byName.entries()]
        .sort((a, b) => b[1] - a[1])
        .slice(0, 3)
        .map(([name, t]) => `${name} ${(t / this.#hz).toFixed(1)} s`),
    };
    // New window: what each process has used so far is the new baseline.
    for (const [pid, last] of this.#last) this.#first.set(pid, last);
    this.#started = now;
    return result;
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
  }
}
