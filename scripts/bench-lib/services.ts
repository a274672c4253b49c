/** Things the benchmark starts besides the test fixtures: nginx, a registry in proxy mode, the agent as a child. */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { AGENT_NODE_FLAGS, type AgentSetup, agentEnv, type TestConnectivityProxy, type TestKubernetes, type TestMirror, startAgentProcess, writeAgentConfig } from '../../test/fixtures/agent.ts';
import { freePort } from '../../test/fixtures/net.ts';
import { pollUntil } from '../../test/fixtures/poll.ts';
import { type ManagedProcess, runCommand, startProcess, tailFile } from '../../test/fixtures/process.ts';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';

export interface Service {
  url: string;
  /** The process (for nginx the master; its worker is a child: see treeCpuSeconds). */
  pid: number;
  stop(): Promise<void>;
}

async function answers(url: string, ok: (status: number) => boolean): Promise<boolean> {
  const res = await request(url, { method: 'GET', headersTimeout: 2_000, bodyTimeout: 2_000 });
  await res.body.dump();
  return ok(res.statusCode);
}

async function waitFor(proc: ManagedProcess, url: string, what: string, logFile: string, ok: (status: number) => boolean): Promise<void> {
  try {
    await pollUntil(() => answers(url, ok), {
      what,
      timeoutMs: 20_000,
      intervalMs: 20,
      abort: () => (proc.exitInfo() === undefined ? undefined : 'process exited'),
    });
  } catch (err) {
    await proc.stop();
    throw new Error(`${(err as Error).message}\n--- ${logFile} ---\n${await tailFile(logFile)}`, { cause: err });
  }
}

/** nginx serving the files under `root` with sendfile on, as a child (`daemon off`). */
export async function startNginx(root: string, dir: string): Promise<Service> {
  await mkdir(join(dir, 'tmp'), { recursive: true });
  const port = await freePort();
  const conf = join(dir, 'nginx.conf');
  const tmp = join(dir, 'tmp');
  // As root, workers would run as nobody and could not read the 0700 temp dirs.
  const user = process.getuid?.() === 0 ? 'user root;\n' : '';
  await writeFile(
    conf,
    `${user}worker_processes 1;
pid ${join(dir, 'nginx.pid')};
error_log ${join(dir, 'error.log')} warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 30s;
  default_type application/octet-stream;
  client_body_temp_path ${tmp}; proxy_temp_path ${tmp}; fastcgi_temp_path ${tmp}; uwsgi_temp_path ${tmp}; scgi_temp_path ${tmp};
  server {
    listen 127.0.0.1:${port};
    root ${root};
    location / { }
  }
}
`,
  );
  const logFile = join(dir, 'nginx.out');
  const proc = await startProcess('nginx', ['-p', dir, '-e', join(dir, 'error.log'), '-c', conf, '-g', 'daemon off;'], { logFile });
  const url = `http://127.0.0.1:${port}`;
  await waitFor(proc, `${url}/`, `nginx on ${url}`, logFile, () => true);
  return { url, pid: proc.pid, stop: async () => void (await proc.stop()) };
}

/** The distribution registry as a pull-through cache of `remote` (its own storage, in a temp dir). */
export async function startProxyRegistry(remote: string): Promise<Service> {
  const dir = await makeTempDir('rpa-bench-proxy-registry');
  await mkdir(join(dir, 'data'));
  const port = await freePort();
  const config = {
    version: '0.1',
    log: { level: 'info', formatter: 'text', accesslog: { disabled: false } },
    storage: { filesystem: { rootdirectory: join(dir, 'data') }, maintenance: { uploadpurging: { enabled: false } } },
    http: { addr: `127.0.0.1:${port}`, secret: randomBytes(16).toString('hex') },
    proxy: { remoteurl: remote },
  };
  const configPath = join(dir, 'config.yml');
  await writeFile(configPath, JSON.stringify(config, null, 2));
  const logFile = join(dir, 'registry.log');
  const proc = await startProcess('/usr/bin/docker-registry', ['serve', configPath], { logFile });
  const url = `http://127.0.0.1:${port}`;
  await waitFor(proc, `${url}/v2/`, `proxy registry on ${url}`, logFile, (s) => s === 200 || s === 401);
  return {
    url,
    pid: proc.pid,
    async stop() {
      await proc.stop();
      await removeTempDir(dir);
    },
  };
}

// ---- the agent as a child process ------------------------------------------------------------

let clockTicks: number | undefined;

export async function ticksPerSecond(): Promise<number> {
  if (clockTicks === undefined) {
    const res = await runCommand('getconf', ['CLK_TCK'], { timeoutMs: 5_000 });
    clockTicks = Number(res.stdout.trim()) || 100;
  }
  return clockTicks;
}

export interface ProcessUsage {
  /** Peak resident set (VmHWM), bytes. */
  peakRssBytes: number;
  rssBytes: number;
  /** The part of rssBytes that is anonymous memory (heap, stacks, buffers): the rest is mapped files, mostly the node binary. */
  rssAnonBytes: number;
  /** utime + stime, seconds. */
  cpuSeconds: number;
  /** stime alone (the kernel's work for the process: socket reads, page-cache writes), seconds. */
  systemSeconds: number;
}

/** Peak RSS and CPU time of a live process, from /proc. */
export async function processUsage(pid: number): Promise<ProcessUsage> {
  const [status, stat, hz] = await Promise.all([readFile(`/proc/${pid}/status`, 'utf8'), readFile(`/proc/${pid}/stat`, 'utf8'), ticksPerSecond()]);
  const kib = (key: string): number => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN) * 1024;
  // Fields after "(comm)": state is field 3, utime 14, stime 15 (1-based, as in proc(5)).
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return { peakRssBytes: kib('VmHWM'), rssBytes: kib('VmRSS'), rssAnonBytes: kib('RssAnon'), cpuSeconds: (utime + stime) / hz, systemSeconds: stime / hz };
}

/** CPU seconds (utime + stime) of a process and all its descendants (nginx's worker is the master's child). */
export async function treeCpuSeconds(pid: number): Promise<number> {
  let total = 0;
  try {
    total = (await processUsage(pid)).cpuSeconds;
    for (const task of await readdir(`/proc/${pid}/task`)) {
      const children = (await readFile(`/proc/${pid}/task/${task}/children`, 'utf8')).trim();
      for (const child of children ? children.split(' ') : []) total += await treeCpuSeconds(Number(child));
    }
  } catch {
    // gone meanwhile
  }
  return total;
}

/** The oldest process whose command line contains `pattern` (e.g. a fixture's config path). */
export async function pidOf(pattern: string): Promise<number> {
  const res = await runCommand('pgrep', ['-o', '-f', pattern], { timeoutMs: 5_000 });
  const pid = Number(res.stdout.trim());
  if (!Number.isInteger(pid) || pid <= 0) throw new Error(`no process matches ${pattern}`);
  return pid;
}

export const BENCH_REGISTRY = 'bench.registry.example:5000';

export interface AgentChildOptions {
  mirror: Omit<TestMirror, 'registry'>;
  connectivityProxy?: TestConnectivityProxy;
  /** Fills the cache dir before start (startup measurements). */
  prepareCache?: (cacheDir: string) => Promise<void>;
  /** Extra Node flags (e.g. --cpu-prof); the agent is then spawned here instead of by startAgentProcess. */
  nodeArgs?: readonly string[];
  /** Another build's main.js (A/B experiments); default this checkout's dist/agent/main.js. */
  main?: string;
  /** `[kubernetes]` enabled against this API (RegistryMirror informers, node report, leases). */
  kubernetes?: TestKubernetes;
}

export interface AgentChild {
  url: string;
  healthUrl: string;
  pid: number;
  dir: string;
  cacheDir: string;
  logFile: string;
  /** performance.now() at spawn, at the "mirror listening" line, at the first /readyz 200 (only with timing). */
  timing?: { spawnedAt: number; listeningAt: number; readyAt: number };
  usage(): Promise<ProcessUsage>;
  /** How the process ended, when it did (it should not before stop()). */
  exitInfo(): string | undefined;
  /** The last part of its log. */
  logTail(bytes?: number): Promise<string>;
  /** SIGTERM, wait for exit, remove the working dir. */
  stop(): Promise<void>;
}

function listeningLine(log: string): { listen: string; health: string } | undefined {
  for (const line of log.split('\n')) {
    if (!line.includes('"mirror listening"')) continue;
    try {
      const parsed = JSON.parse(line) as { listen?: unknown; health?: unknown };
      if (typeof parsed.listen === 'string' && typeof parsed.health === 'string') return { listen: parsed.listen, health: parsed.health };
    } catch {
      // a partial line: not yet
    }
  }
  return undefined;
}

/** Usage of a fresh agent child `settleMs` after it is ready, nothing asked of it meanwhile; stopped after. */
export async function idleUsage(opts: AgentChildOptions, settleMs: number): Promise<ProcessUsage> {
  const agent = await startAgentChild(opts, true);
  try {
    await new Promise((resolve) => setTimeout(resolve, settleMs));
    return await agent.usage();
  } finally {
    await agent.stop();
  }
}

/**
 * Starts `agent/main.ts --config FILE` as a child with one mirror for BENCH_REGISTRY in a fresh
 * working dir (so a fresh cache). With `nodeArgs` or `timed`, the child is spawned here with a
 * 2 ms log poll, and the times to listening and to /readyz 200 are recorded.
 */
export async function startAgentChild(opts: AgentChildOptions, timed = false): Promise<AgentChild> {
  const dir = await makeTempDir('rpa-bench-agent');
  const port = await freePort();
  const setup: AgentSetup = { dir, port, mirrors: [{ registry: BENCH_REGISTRY, ...opts.mirror }], cacheMaxBytes: '50GiB' };
  if (opts.kubernetes) setup.kubernetes = opts.kubernetes;
  if (opts.connectivityProxy) setup.connectivityProxy = opts.connectivityProxy;
  const configFile = await writeAgentConfig(setup);
  const cacheDir = join(dir, 'cache');
  if (opts.prepareCache) await opts.prepareCache(cacheDir);
  const logFile = join(dir, 'agent.log');
  let proc: ManagedProcess;
  let timing: AgentChild['timing'];
  try {
    if (opts.nodeArgs === undefined && !timed) {
      proc = (await startAgentProcess(configFile, logFile, port)).process;
    } else {
      // The production artifact (scripts/bench builds it first), as the image runs it.
      const main = opts.main ?? new URL('../../dist/agent/main.js', import.meta.url).pathname;
      const spawnedAt = performance.now();
      proc = await startProcess(process.execPath, [...AGENT_NODE_FLAGS, ...(opts.nodeArgs ?? []), main, '--config', configFile], { logFile, env: agentEnv() });
      let listeningAt = 0;
      let health = '';
      await pollUntil(
        async () => {
          const found = listeningLine(await tailFile(logFile, 256 * 1024));
          if (!found) return false;
          listeningAt = performance.now();
          health = found.health;
          return true;
        },
        { what: 'agent listening', timeoutMs: 30_000, intervalMs: 2, abort: () => (proc.exitInfo() ? 'agent exited (see its log)' : undefined) },
      );
      await pollUntil(() => answers(`${health}/readyz`, (s) => s === 200), { what: 'agent ready', timeoutMs: 60_000, intervalMs: 2 });
      timing = { spawnedAt, listeningAt, readyAt: performance.now() };
    }
  } catch (err) {
    const log = await tailFile(logFile);
    await removeTempDir(dir);
    throw new Error(`${(err as Error).message}\n--- agent.log ---\n${log}`, { cause: err });
  }
  const found = listeningLine(await tailFile(logFile, 256 * 1024));
  if (!found) throw new Error('agent: no "mirror listening" line');
  const child = proc;
  return {
    url: found.listen,
    healthUrl: found.health,
    pid: child.pid,
    dir,
    cacheDir,
    logFile,
    ...(timing ? { timing } : {}),
    usage: () => processUsage(child.pid),
    exitInfo() {
      const info = child.exitInfo();
      return info === undefined ? undefined : `exit code ${String(info.code)}, signal ${String(info.signal)}`;
    },
    logTail: (bytes = 4_096) => tailFile(logFile, bytes),
    async stop() {
      await child.stop(10_000);
      await removeTempDir(dir);
    },
  };
}
