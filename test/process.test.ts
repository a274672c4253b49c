// The agent as operators run it: a child process started from dist/ (the production artifact), with
// a config file, signals and exit codes. Everything is observed from outside: exit code, stderr, log
// file, the files it leaves on disk, and its HTTP listeners.
import { linkSync, mkdirSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type AgentProcess, agentMain, startAgentProcess, writeAgentConfig } from './fixtures/agent.ts';
import { freePort } from './fixtures/net.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type ManagedProcess, runCommand, startProcess, tailFile } from './fixtures/process.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const A = 'a.corp.example:5000';
const B = 'b.corp.example';
// Nothing listens there: these tests need no upstream, and the agent must not need one to start,
// stop or become ready (readiness deliberately ignores upstream reachability).
const NO_UPSTREAM = 'http://127.0.0.1:1';

let dir: string;
let running: AgentProcess | undefined;

beforeAll(async () => {
  dir = await makeTempDir('rpa-process');
});

afterEach(async () => {
  await running?.process.stop();
  running = undefined;
});

afterAll(async () => {
  if (dir) await removeTempDir(dir);
});

/** A fresh directory for one test's config, cache and hosts dir. */
async function testDir(name: string): Promise<string> {
  const path = join(dir, name);
  await mkdir(path);
  return path;
}

/** Runs the agent to completion (it is expected to refuse to start) and captures its output. */
function runAgent(configFile: string) {
  return runCommand(process.execPath, [agentMain(), '--config', configFile], { timeoutMs: 20_000 });
}

/**
 * A minimal config in `work` (listeners, cache and hosts dir there, one mirror without an upstream),
 * with `top` as its first lines; returns its path.
 */
async function writeConfig(work: string, top: string[]): Promise<string> {
  const file = join(work, 'agent.toml');
  const lines = [
    ...top,
    ...(top.some((line) => line.startsWith('metrics_listen')) ? [] : ['metrics_listen = "127.0.0.1:0"']),
    'cache_dir = "cache"',
    'hosts_dir = "certs.d"',
    'manage_hosts = false',
    `containerd_config = "${join(work, 'containerd-config.toml')}"`,
    '[[mirror]]',
    `registry = "${A}"`,
    `upstream = "${NO_UPSTREAM}"`,
  ];
  await writeFile(file, `${lines.join('\n')}\n`);
  return file;
}

/** The JSON log lines of a child's log file. */
async function logLines(agent: AgentProcess): Promise<Array<Record<string, unknown>>> {
  return (await agent.logs())
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe('a bad config file', () => {
  const mirror = ['[[mirror]]', `registry = "${A}"`];
  const cases: Array<{ what: string; toml: string[]; key: string; problem: string; secret?: string }> = [
    {
      what: 'unknown key',
      toml: ['cach_max_bytes = "1GiB"', ...mirror, `upstream = "${NO_UPSTREAM}"`],
      key: 'cach_max_bytes',
      problem: 'unknown key (did you mean cache_max_bytes?)',
    },
    {
      what: 'invalid URL',
      toml: [...mirror, 'upstream = "ftp://registry.corp.example"'],
      key: 'mirror[0].upstream',
      problem: 'scheme must be http or https',
    },
    {
      what: 'wrong type',
      toml: ['manage_hosts = "yes"', ...mirror, `upstream = "${NO_UPSTREAM}"`],
      key: 'manage_hosts',
      problem: 'expected a boolean',
    },
    {
      // An admin who puts the password inline: refused, and the value is never echoed.
      what: 'inline secret',
      toml: [...mirror, `upstream = "${NO_UPSTREAM}"`, 'username = "alice"', 'password = "hunter2-do-not-print"'],
      key: 'mirror[0].password',
      problem: 'unknown key',
      secret: 'hunter2-do-not-print',
    },
  ];

  it.each(cases)('($what) exits 2 with one stderr line naming file, key and problem', async ({ what, toml, key, problem, secret }) => {
    const file = join(await testDir(`bad-${what.replace(/\W+/g, '-')}`), 'agent.toml');
    await writeFile(file, `${toml.join('\n')}\n`);
    const result = await runAgent(file);
    expect(result.code, result.stderr).toBe(2);
    const lines = result.stderr.split('\n').filter((line) => line !== '');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(`${file}: ${key}: ${problem}`);
    expect(result.stdout).toBe('');
    if (secret) expect(result.stdout + result.stderr).not.toContain(secret);
  });
});

describe('SIGTERM', () => {
  it('exits 0 and leaves every hosts.toml it wrote in place, the admin backup included', async () => {
    const work = await testDir('sigterm');
    const hostsDir = join(work, 'certs.d');
    // A's directory holds an admin file the agent merges into; B's is created by the agent.
    const adminFile = `server = "https://${A}"\n\n[host."https://admin-mirror.corp.example"]\n  capabilities = ["pull", "resolve"]\n`;
    await mkdir(join(hostsDir, A), { recursive: true });
    await writeFile(join(hostsDir, A, 'hosts.toml'), adminFile);
    const port = await freePort();
    const config = await writeAgentConfig({
      dir: work,
      port,
      manageHosts: true,
      mirrors: [
        { registry: A, upstream: NO_UPSTREAM },
        { registry: B, upstream: NO_UPSTREAM },
      ],
    });
    running = await startAgentProcess(config, join(work, 'agent.log'), port);
    // 'serving mirror' is logged once the hosts.toml files are written.
    await pollUntil(async () => (await running!.logs()).includes('"msg":"serving mirror"'), { timeoutMs: 10_000, what: 'hosts.toml written' });

    const snapshot = async () => {
      const files: Record<string, string> = {};
      for (const registry of await readdir(hostsDir)) {
        for (const name of await readdir(join(hostsDir, registry))) {
          files[`${registry}/${name}`] = await readFile(join(hostsDir, registry, name), 'utf8');
        }
      }
      return files;
    };
    const written = await snapshot();
    expect(Object.keys(written).sort()).toEqual([`${A}/hosts.toml`, `${A}/hosts.toml.registry-proxy-agent.orig`, `${B}/hosts.toml`].sort());
    for (const registry of [A, B]) expect(written[`${registry}/hosts.toml`]).toContain(`[host."http://127.0.0.1:${port}"]`);
    expect(written[`${A}/hosts.toml`]).toContain('https://admin-mirror.corp.example');

    process.kill(running.process.pid, 'SIGTERM');
    expect(await running.process.exited).toEqual({ code: 0, signal: null });
    // Kept on purpose: while the agent is down containerd falls back to the next host by itself,
    // whereas removing the entries would send pulls to a registry that is unreachable without it.
    expect(await snapshot()).toEqual(written);
    // The final 'stopped' line is not checked: pino writes asynchronously and process.exit can drop it.
    const messages = (await logLines(running)).map((line) => line['msg']);
    expect(messages).toContain('stopping: finishing in-flight responses; hosts.toml entries are kept');
  });
});

describe('listen on a non-loopback address', () => {
  const config = (work: string, port: number, allow: boolean): Promise<string> =>
    writeConfig(work, [`listen = "0.0.0.0:${port}"`, `allow_non_loopback_listen = ${allow}`]);

  it('with allow_non_loopback_listen = true: starts, serves, and warns that the port is reachable from the network', async () => {
    const work = await testDir('non-loopback-allowed');
    const port = await freePort();
    running = await startAgentProcess(await config(work, port, true), join(work, 'agent.log'), port);
    const warning = (await logLines(running)).find((line) => String(line['msg']).startsWith('the mirror port is reachable from the network'));
    expect(warning).toMatchObject({ level: 'warn', listen: `http://0.0.0.0:${port}` });
    // Bound on every address, so loopback reaches it too (only loopback is used here).
    const refused = await request(`${running.url}/v2/team/app/manifests/v1?ns=not-mirrored.example`);
    expect(refused.statusCode).toBe(404);
    expect(((await refused.body.json()) as { errors: Array<{ code: string }> }).errors[0]?.code).toBe('NAME_UNKNOWN');
  });

  it('without it: refuses to start, exit 2, saying why and how to override', async () => {
    const work = await testDir('non-loopback-refused');
    const port = await freePort();
    const file = await config(work, port, false);
    const result = await runAgent(file);
    expect(result.code, result.stderr).toBe(2);
    const lines = result.stderr.split('\n').filter((line) => line !== '');
    expect(lines).toEqual([
      `registry-proxy-agent: ${file}: listen: 0.0.0.0 is not a loopback address; the mirror port must not be reachable ` +
        'from the network (set allow_non_loopback_listen = true to override)',
    ]);
  });
});

describe('/healthz and /readyz', () => {
  // Empty blob files are enough for the start-up index rebuild, which only lists and stats them; this
  // many takes the scan long enough (about a second here) that /readyz is seen answering 503 first.
  // Hard links to one file are created about three times faster than new files.
  const PREFILLED = 20_000;
  let child: ManagedProcess | undefined;

  afterAll(async () => {
    await child?.stop();
  });

  it('/readyz answers 503 while the cache index is rebuilt, then 200; /healthz answers 200 throughout', async () => {
    const work = await testDir('readiness');
    const blobs = join(work, 'cache', 'blobs', 'sha256');
    mkdirSync(blobs, { recursive: true });
    const template = join(work, 'empty');
    writeFileSync(template, '');
    for (let i = 0; i < PREFILLED; i++) linkSync(template, join(blobs, i.toString(16).padStart(64, '0')));

    const [port, healthPort] = await Promise.all([freePort(), freePort()]);
    const config = await writeConfig(work, [`listen = "127.0.0.1:${port}"`, `metrics_listen = "127.0.0.1:${healthPort}"`]);
    const logFile = join(work, 'agent.log');
    child = await startProcess(process.execPath, [agentMain(), '--config', config], { logFile });
    const proc = child;

    const health = `http://127.0.0.1:${healthPort}`;
    const seen: number[] = [];
    let healthzWhileNotReady: number | undefined;
    let reason = '';
    // From the moment the process starts: refused until the health listener is up, then what it says.
    await pollUntil(
      async () => {
        const response = await request(`${health}/readyz`);
        const body = await response.body.text();
        seen.push(response.statusCode);
        if (response.statusCode === 503 && healthzWhileNotReady === undefined) {
          reason = body;
          const healthz = await request(`${health}/healthz`);
          await healthz.body.dump();
          healthzWhileNotReady = healthz.statusCode;
        }
        return response.statusCode === 200;
      },
      { timeoutMs: 30_000, intervalMs: 10, what: '/readyz 200', abort: () => (proc.exitInfo() ? 'agent exited' : undefined) },
    );

    expect(seen[0], 'the first answer of /readyz').toBe(503);
    expect(reason).toBe('not ready: cache index is being rebuilt\n');
    expect(healthzWhileNotReady).toBe(200);
    // Not ready, then ready: no other answer in between.
    expect(seen.slice(0, -1).every((status) => status === 503), seen.join(' ')).toBe(true);
    const again = await request(`${health}/readyz`);
    expect(again.statusCode).toBe(200);
    expect(await again.body.text()).toBe('ready\n');
    const healthz = await request(`${health}/healthz`);
    expect(healthz.statusCode).toBe(200);
    expect(await healthz.body.text()).toBe('ok\n');
    // Ready meant: the whole pre-filled cache was indexed.
    const rebuilt = (await tailFile(logFile, 64 * 1024)).split('\n').find((line) => line.includes('"msg":"cache index rebuilt"'));
    expect(JSON.parse(rebuilt ?? '{}')).toMatchObject({ found: PREFILLED, entries: PREFILLED });

    child = undefined;
    expect(await proc.stop()).toEqual({ code: 0, signal: null });
  });
});
