// The Dockerfile, without a Docker engine: its instructions are checked, and then its file steps
// (COPY, RUN, WORKDIR, ENV) are performed in a temp dir, one directory per stage, and the image's
// ENTRYPOINT is run from the result with this Node 24. That proves the bundle contains everything the
// agent needs at run time (the image has no node_modules), and that no test is shipped.
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, posix, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HostsManager } from '../agent/containerd/hosts-manager.ts';
import { AGENT_ENV, AGENT_NODE_FLAGS } from './fixtures/agent.ts';
import { freePort } from './fixtures/net.ts';
import { pollUntil } from './fixtures/poll.ts';
import { startProcess, tailFile } from './fixtures/process.ts';

const run = promisify(execFile);
const ROOT = resolve(import.meta.dirname, '..');
const NODE_24_IMAGE = /^(docker\.io\/)?(library\/)?node:24([.-][\w.-]*)?(@sha256:[0-9a-f]{64})?$/;

interface Instruction {
  readonly keyword: string;
  readonly args: string;
  readonly line: number;
}

interface Stage {
  readonly image: string;
  readonly name: string | undefined;
  readonly instructions: Instruction[];
}

/** Instructions with continuation lines joined; comments and blank lines dropped. */
function parseDockerfile(text: string): Stage[] {
  const stages: Stage[] = [];
  let pending = '';
  let startLine = 0;
  text.split('\n').forEach((raw, index) => {
    const line = raw.trimEnd();
    if (pending === '' && (line.trim() === '' || line.trimStart().startsWith('#'))) return;
    if (pending !== '' && line.trimStart().startsWith('#')) return;
    if (pending === '') startLine = index + 1;
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1)} `;
      return;
    }
    const full = (pending + line).trim();
    pending = '';
    const keyword = full.split(/\s+/, 1)[0] ?? '';
    const instruction = { keyword: keyword.toUpperCase(), args: full.slice(keyword.length).trim(), line: startLine };
    if (instruction.keyword === 'FROM') {
      const [image = '', as, name] = instruction.args.split(/\s+/);
      stages.push({ image, name: as?.toUpperCase() === 'AS' ? name : undefined, instructions: [] });
    } else {
      const stage = stages.at(-1);
      if (!stage) throw new Error(`Dockerfile line ${startLine}: ${keyword} before FROM`);
      stage.instructions.push(instruction);
    }
  });
  return stages;
}

/** The exec form `["a", "b"]` of ENTRYPOINT/CMD/RUN. */
function execForm(args: string): string[] | undefined {
  if (!args.startsWith('[')) return undefined;
  const parsed: unknown = JSON.parse(args);
  if (!Array.isArray(parsed) || !parsed.every((a) => typeof a === 'string')) throw new Error(`not an exec form: ${args}`);
  return parsed;
}

const stages = parseDockerfile(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
const finalStage = (): Stage => {
  const stage = stages.at(-1);
  if (!stage) throw new Error('the Dockerfile has no FROM');
  return stage;
};
const instructions = (stage: Stage, keyword: string) => stage.instructions.filter((i) => i.keyword === keyword);
const runs = () => stages.flatMap((s) => instructions(s, 'RUN').map((i) => i.args));

describe('Dockerfile: instructions', () => {
  it('is multi-stage on Node 24 images', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    for (const stage of stages) expect(stage.image).toMatch(NODE_24_IMAGE);
  });

  it('installs from the lock file, and ships no node_modules: the agent is bundled with its dependencies', () => {
    const installs = runs().filter((r) => /\bnpm\s+(ci|install|i)\b/.test(r));
    expect(installs.length).toBeGreaterThan(0);
    for (const install of installs) expect(install).toMatch(/\bnpm ci\b/);
    expect(runs().some((r) => /\bnode scripts\/build\.ts\b/.test(r)), 'the build stage runs scripts/build.ts').toBe(true);
    for (const copy of instructions(finalStage(), 'COPY')) expect(copy.args).not.toContain('node_modules');
  });

  it('runs the bundled dist/agent/main.js with node as its ENTRYPOINT (exec form)', () => {
    const [entrypoint, ...more] = instructions(finalStage(), 'ENTRYPOINT');
    expect(more).toEqual([]);
    const argv = execForm(entrypoint?.args ?? '');
    expect(argv?.[0]).toBe('node');
    // The same Node flags as `npm start` and the child agents of tests and benchmarks.
    expect(argv?.slice(1, -1)).toEqual([...AGENT_NODE_FLAGS]);
    expect(argv?.at(-1)).toMatch(/(^|\/)dist\/agent\/main\.js$/);
    const start = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).scripts.start as string;
    expect(start).toContain(`node ${AGENT_NODE_FLAGS.join(' ')} dist/agent/main.js`);
  });

  it('sets the same environment for the agent as `npm start` and the child agents of tests and benchmarks', () => {
    const env = instructions(finalStage(), 'ENV').map((e) => e.args).join(' ');
    const start = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).scripts.start as string;
    for (const [name, value] of Object.entries(AGENT_ENV)) {
      expect(env).toMatch(new RegExp(`(^|\\s)${name}=${value}(\\s|$)`));
      expect(start).toContain(`${name}=${value} node `);
    }
  });

  it('the shipped stage takes sources only from stages where tests were deleted, and deletes nothing itself', () => {
    // A file deleted in a later layer is still shipped in the earlier one.
    for (const run of instructions(finalStage(), 'RUN')) expect(run.args).not.toMatch(/\brm\b|-delete\b/);
    const fromContext = instructions(finalStage(), 'COPY')
      .filter((c) => !c.args.includes('--from='))
      .flatMap((c) => c.args.split(/\s+/).filter((a) => !a.startsWith('--')).slice(0, -1));
    expect(fromContext.every((source) => ['package.json', 'package-lock.json'].includes(source)), fromContext.join(' ')).toBe(true);
    // Only the build's output comes from the build stage.
    const fromBuild = instructions(finalStage(), 'COPY').filter((c) => c.args.includes('--from=build'));
    for (const copy of fromBuild) expect(copy.args).toMatch(/\/app\/dist\b/);
  });
});

// ---------------------------------------------------------------------------------------------------
// Performing the build

interface Built {
  /** Where each stage's "/" is. */
  readonly roots: Map<string, string>;
  readonly root: string;
  readonly workdir: string;
  readonly env: Record<string, string>;
  readonly entrypoint: string[];
  /** The default arguments (CMD, exec form) appended to the ENTRYPOINT. */
  readonly cmd: string[];
}

/** The stage's path `p` (absolute inside the stage, or relative to its WORKDIR) on this machine. */
function hostPath(root: string, workdir: string, p: string): string {
  return join(root, posix.resolve(workdir, p));
}

function parseEnv(args: string): Record<string, string> {
  if (!args.includes('=')) {
    const [key = '', ...value] = args.split(/\s+/);
    return { [key]: value.join(' ') };
  }
  return Object.fromEntries(
    [...args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("([^"]*)"|\S*)/g)].map((m) => [m[1] ?? '', m[3] ?? m[2] ?? '']),
  );
}

/**
 * Performs the Dockerfile's file steps, each stage in its own directory. The base image's own content is
 * this machine's Node (checked to be 24). RUN commands run with `sh -c` in the stage's WORKDIR and
 * must use relative paths only: they run on this machine, not in a container. .dockerignore is not
 * applied (there is none); without it the build context is the repository.
 */
async function build(workRoot: string): Promise<Built> {
  const roots = new Map<string, string>();
  let last: Built | undefined;
  for (const [index, stage] of stages.entries()) {
    const root = join(workRoot, `stage-${index}`);
    mkdirSync(root, { recursive: true });
    roots.set(String(index), root);
    if (stage.name) roots.set(stage.name, root);
    let workdir = '/';
    const env: Record<string, string> = {};
    let entrypoint: string[] = [];
    let cmd: string[] = [];
    for (const { keyword, args, line } of stage.instructions) {
      const where = `Dockerfile line ${line}: ${keyword} ${args}`;
      switch (keyword) {
        case 'WORKDIR':
          workdir = posix.resolve(workdir, args);
          mkdirSync(hostPath(root, workdir, '.'), { recursive: true });
          break;
        case 'ENV':
          Object.assign(env, parseEnv(args));
          break;
        case 'COPY':
          copy(args, root, workdir, roots, where);
          break;
        case 'RUN':
          await runStep(args, hostPath(root, workdir, '.'), env, where);
          break;
        case 'ENTRYPOINT':
          entrypoint = execForm(args) ?? [];
          break;
        case 'CMD':
          cmd = execForm(args) ?? [];
          break;
        case 'LABEL':
        case 'EXPOSE':
        case 'USER':
          break;
        default:
          throw new Error(`${where}: not supported by test/dockerfile.test.ts; extend it`);
      }
    }
    last = { roots, root, workdir, env, entrypoint, cmd };
  }
  if (!last) throw new Error('the Dockerfile has no stage');
  return last;
}

function copy(args: string, root: string, workdir: string, roots: Map<string, string>, where: string): void {
  const words = args.split(/\s+/);
  const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
  const paths = words.filter((w) => !w.startsWith('--'));
  const dest = paths.pop();
  if (dest === undefined || paths.length === 0) throw new Error(`${where}: expected sources and a destination`);
  const sourceRoot = from === undefined ? ROOT : roots.get(from);
  if (sourceRoot === undefined) throw new Error(`${where}: unknown stage ${from}`);
  const intoDir = dest.endsWith('/') || paths.length > 1;
  for (const source of paths) {
    const src = from === undefined ? join(ROOT, source) : hostPath(sourceRoot, '/', source);
    if (!existsSync(src)) throw new Error(`${where}: ${source} does not exist`);
    const target = hostPath(root, workdir, dest);
    // Docker: a directory's contents go to dest; a file goes into dest/ or becomes dest.
    const isDir = readdirSafe(src) !== undefined;
    const to = isDir || !intoDir ? target : join(target, basename(source));
    mkdirSync(isDir ? to : dirname(to), { recursive: true });
    cpSync(src, to, { recursive: true });
  }
}

function readdirSafe(path: string): string[] | undefined {
  try {
    return readdirSync(path);
  } catch {
    return undefined;
  }
}

async function runStep(args: string, cwd: string, env: Record<string, string>, where: string): Promise<void> {
  const argv = execForm(args) ?? ['sh', '-c', args];
  if (argv.some((a) => /(^|[\s=:'"])\/[^\s]/.test(a))) {
    throw new Error(`${where}: uses an absolute path, which would act on this machine rather than in the image; use a path relative to WORKDIR`);
  }
  const [command = '', ...rest] = argv;
  try {
    await run(command, rest, { cwd, env: { ...buildEnvironment(), ...env }, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 });
  } catch (error) {
    const e = error as { stderr?: string; message: string };
    throw new Error(`${where} failed: ${e.stderr ?? e.message}`, { cause: error });
  }
}

/**
 * This machine's environment (network settings such as proxies and CA certificates included) without
 * what `npm run`/`npx` put there for this repository: npm_config_local_prefix alone would make a RUN
 * step's `npm ci` install into the repository instead of the stage.
 */
function buildEnvironment(): Record<string, string> {
  const inherited = Object.entries(process.env).filter(
    (entry): entry is [string, string] => entry[1] !== undefined && !/^(npm_|INIT_CWD$|NODE$|VITEST|TEST$)/i.test(entry[0]),
  );
  return { ...Object.fromEntries(inherited), PATH: nodeFirstPath() };
}

/** PATH with this Node 24 first, so that npm and `node` in RUN steps use it (the image's Node). */
function nodeFirstPath(): string {
  return [dirname(process.execPath), process.env['PATH'] ?? ''].join(':');
}

/** Every file under dir, relative to it. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() || e.isDirectory())
    .map((e) => relative(dir, join(e.parentPath, e.name)));
}

describe('Dockerfile: performed', () => {
  let work: string;
  let built: Built;

  beforeAll(async () => {
    expect(process.version, 'the image runs Node 24; so must this test').toMatch(/^v24\./);
    work = mkdtempSync(join(tmpdir(), 'rpa-image-'));
    built = await build(join(work, 'image'));
  }, 180_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /** The container's environment: the image's ENV, a PATH to this Node 24 and a HOME; nothing else of this machine's. */
  const containerEnv = (): NodeJS.ProcessEnv => ({ PATH: nodeFirstPath(), HOME: work, ...built.env });

  /** `node` and the ENTRYPOINT's arguments, absolute paths taken inside the image's root. */
  function entrypointArgv(): string[] {
    const [program, ...programArgs] = built.entrypoint;
    expect(program).toBe('node');
    return programArgs.map((a) => (a.startsWith('/') ? join(built.root, a) : a));
  }

  /** Runs the image's ENTRYPOINT with `args`, as the container would: WORKDIR, image ENV, no other environment. */
  async function entrypoint(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const argv = entrypointArgv();
    try {
      const { stdout, stderr } = await run(process.execPath, [...argv, ...args], {
        cwd: hostPath(built.root, built.workdir, '.'),
        env: containerEnv(),
        timeout: 30_000,
      });
      return { code: 0, stdout, stderr };
    } catch (error) {
      const e = error as { code?: number; stdout?: string; stderr?: string };
      return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
    }
  }

  it('ships the bundled agent and the licenses of what it bundles, and no node_modules, sources, tests or test data', () => {
    const app = hostPath(built.root, built.workdir, '.');
    expect(existsSync(join(app, 'dist/agent/main.js'))).toBe(true);
    expect(existsSync(join(app, 'package.json'))).toBe(true);
    expect(existsSync(join(app, 'agent'))).toBe(false);
    expect(existsSync(join(app, 'node_modules'))).toBe(false);
    const shipped = filesUnder(join(app, 'dist'));
    expect(shipped.filter((f) => /\.test\.(ts|js)$/.test(f) || f.split('/').includes('testdata') || f.endsWith('.ts'))).toEqual([]);
    expect(existsSync(join(app, 'test'))).toBe(false);
    // Every production dependency is in the bundle, with its license (the image has no node_modules to carry it).
    const bundled = readFileSync(join(app, 'dist/licenses/PACKAGES.txt'), 'utf8');
    const dependencies = Object.keys((JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }).dependencies);
    for (const dependency of dependencies) {
      expect(bundled, dependency).toMatch(new RegExp(`^${dependency.replace(/[/.]/g, '\\$&')}@\\S+ `, 'm'));
      expect(readdirSync(join(app, 'dist/licenses', dependency)).some((f) => /^licen[cs]e/i.test(f)), `${dependency}'s license file`).toBe(true);
    }
    for (const devOnly of ['vitest', 'typescript', 'ajv', 'yaml', 'esbuild']) expect(bundled, devOnly).not.toMatch(new RegExp(`^${devOnly}@`, 'm'));
  });

  it('`--help` exits 0', async () => {
    const result = await entrypoint('--help');
    expect(result.stderr).toBe('');
    expect(result).toMatchObject({ code: 0 });
    expect(result.stdout).toContain('usage: registry-proxy-agent');
  });

  it('`cleanup --config FILE` exits 0 and removes the hosts.toml the agent wrote', async () => {
    const hostsDir = join(work, 'certs.d');
    await new HostsManager({ hostsDir, agentUrl: 'http://127.0.0.1:5050' }).reconcile(['registry.corp.example:5000']);
    expect(existsSync(join(hostsDir, 'registry.corp.example:5000/hosts.toml'))).toBe(true);
    const config = join(work, 'config.toml');
    writeFileSync(
      config,
      [
        `hosts_dir = ${JSON.stringify(hostsDir)}`,
        `cache_dir = ${JSON.stringify(join(work, 'cache'))}`,
        'log_level = "info"',
        '[[mirror]]',
        'registry = "registry.corp.example:5000"',
        'upstream = "http://registry.corp.example:5000"',
        '',
      ].join('\n'),
    );
    const result = await entrypoint('cleanup', '--config', config);
    expect(result.stderr).toBe('');
    expect(result.code, result.stdout).toBe(0);
    expect(result.stdout).toContain('cleanup finished');
    expect(existsSync(join(hostsDir, 'registry.corp.example:5000'))).toBe(false);
  });

  it('the default command (ENTRYPOINT + CMD) starts the agent on its config path, serves /healthz, and exits 0 on SIGTERM', async () => {
    // CMD names the config file inside the image; a DaemonSet mounts it there. Here it is written into
    // the built root at that path, with every path the agent writes to inside this test's temp dir.
    const configIndex = built.cmd.indexOf('--config') + 1;
    const configInImage = built.cmd[configIndex] ?? '';
    expect(configIndex, `CMD ${JSON.stringify(built.cmd)} passes --config`).toBeGreaterThan(0);
    expect(configInImage).toMatch(/^\//);
    const configFile = join(built.root, configInImage);
    const data = join(work, 'default-command');
    const hostsDir = join(data, 'certs.d');
    const [port, healthPort] = await Promise.all([freePort(), freePort()]);
    mkdirSync(dirname(configFile), { recursive: true });
    mkdirSync(data);
    writeFileSync(
      configFile,
      [
        `listen = "127.0.0.1:${port}"`,
        `metrics_listen = "127.0.0.1:${healthPort}"`,
        `cache_dir = ${JSON.stringify(join(data, 'cache'))}`,
        `hosts_dir = ${JSON.stringify(hostsDir)}`,
        `containerd_config = ${JSON.stringify(join(data, 'containerd-config.toml'))}`,
        '[[mirror]]',
        'registry = "registry.corp.example:5000"',
        // Nothing listens there: starting, serving /healthz and stopping need no upstream.
        'upstream = "http://127.0.0.1:1"',
        '',
      ].join('\n'),
    );
    const argv = [...entrypointArgv(), ...built.cmd.map((a) => (a.startsWith('/') ? join(built.root, a) : a))];
    const logFile = join(data, 'agent.log');
    const child = await startProcess(process.execPath, argv, { logFile, cwd: hostPath(built.root, built.workdir, '.'), env: containerEnv() });
    try {
      await pollUntil(
        async () => {
          const response = await request(`http://127.0.0.1:${healthPort}/healthz`);
          await response.body.dump();
          return response.statusCode === 200;
        },
        { timeoutMs: 20_000, intervalMs: 50, what: '/healthz of the default command', abort: () => (child.exitInfo() ? 'the agent exited' : undefined) },
      );
      // The default command runs the mirror itself (not help or cleanup): it writes the hosts.toml
      // (right after the listeners are up, so /healthz may answer first).
      const hostsToml = join(hostsDir, 'registry.corp.example:5000', 'hosts.toml');
      await pollUntil(() => existsSync(hostsToml), { timeoutMs: 10_000, intervalMs: 20, what: 'hosts.toml written by the default command' });
      process.kill(child.pid, 'SIGTERM');
      expect(await child.exited, await tailFile(logFile)).toEqual({ code: 0, signal: null });
    } finally {
      await child.stop();
    }
    // It stopped because of the signal, not by failing ('stopped', the last line, can be lost at exit).
    expect(await tailFile(logFile)).toContain('"signal":"SIGTERM"');
  });
});
