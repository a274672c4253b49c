/**
 * Experiment behind the cold path: one cold GET of a blob through a fresh agent child
 * (dist/agent/main.js, JIT-warm from an unrelated 8 MiB blob), against the same GET straight from
 * the registry, with the agent's Node flags as given. Not part of the agent; `scripts/bench` builds
 * dist first, this script does not.
 *
 *   node_modules/.bin/node scripts/bench-lib/cold-experiment.ts [--size-mib 256] [--runs 3] [--node-args "--max-semi-space-size=2"]
 */
import { spawn } from 'node:child_process';
import { copyFile, readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { makeRandomBlobFile, pushBlob } from '../../test/fixtures/image.ts';
import { runCommand } from '../../test/fixtures/process.ts';
import { startRegistry } from '../../test/fixtures/registry.ts';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import { GiB, MiB, curlClient, getExact, mibPerSecond } from './client.ts';
import { builds, flag, option } from './experiment-args.ts';
import { startAgentChild } from './services.ts';
import { median, num } from './stats.ts';

const sizeMiB = Number(option('--size-mib') ?? 256);
const runs = Number(option('--runs') ?? 3);
/** Node flags for every build (a build's own go after its path, see experiment-args.ts). */
const nodeArgs = (option('--node-args') ?? '').split(' ').filter(Boolean);
/** A command attached to the agent for the measured GET only ({pid} is replaced), e.g. "strace -c -f -p {pid}"; stopped with SIGINT. */
const attach = option('--attach');
const compared = builds();

/** CPU seconds (user + system) per thread name of a process, summed over threads of the same name. */
async function threadCpu(pid: number): Promise<Map<string, number>> {
  const hz = 100;
  const result = new Map<string, number>();
  for (const tid of await readdir(`/proc/${pid}/task`)) {
    try {
      const stat = await readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      result.set(name, (result.get(name) ?? 0) + (Number(fields[11]) + Number(fields[12])) / hz);
    } catch {
      // the thread ended
    }
  }
  return result;
}

const dir = await makeTempDir('cold-experiment');
const registry = await startRegistry();
try {
  const blob = await makeRandomBlobFile(join(dir, 'blob'), sizeMiB * MiB);
  const warm = await makeRandomBlobFile(join(dir, 'warm'), 8 * MiB);
  await pushBlob(registry.url, 'x/y', blob);
  /** With --parallel N: N different blobs of the size, fetched at once (the rate is their aggregate). */
  const parallel = Number(option('--parallel') ?? 1);
  const others = [];
  for (let i = 1; i < parallel; i++) {
    const other = await makeRandomBlobFile(join(dir, `blob-${i}`), sizeMiB * MiB);
    await pushBlob(registry.url, 'x/y', other);
    others.push(other);
  }
  await pushBlob(registry.url, 'x/y', warm);
  const url = (base: string, digest: string): string => `${base}/v2/x/y/blobs/${digest}`;
  await getExact(curlClient, url(registry.url, blob.digest), blob.size);
  interface Figures {
    readonly agent: number[];
    readonly cpu: number[];
    readonly rss: number[];
    readonly perThread: Map<string, number[]>;
  }
  const direct: number[] = [];
  const figures = new Map<string, Figures>(compared.map(({ name }) => [name, { agent: [], cpu: [], rss: [], perThread: new Map() }]));
  for (let run = 0; run < runs; run++) {
    direct.push(mibPerSecond(await getExact(curlClient, url(registry.url, blob.digest), blob.size)));
    for (const build of compared) {
      const { name, main } = build;
      const f = figures.get(name)!;
      const child = await startAgentChild({ mirror: { upstream: registry.url }, nodeArgs: [...nodeArgs, ...build.nodeArgs], main });
      try {
        for (let i = 0; i < 2; i++) await getExact(curlClient, url(child.url, warm.digest), warm.size);
        const watcher = attach ? spawn('sh', ['-c', attach.replaceAll('{pid}', String(child.pid))], { stdio: 'inherit' }) : undefined;
        if (watcher) await new Promise((resolve) => setTimeout(resolve, 1000));
        if (flag('--prefault')) {
          // This VM returns freed memory to its host (virtio-balloon free page reporting): new page
          // cache pages fault on the host at ~420 MB/s. Pages freed a moment ago are still the guest's.
          await runCommand('dd', ['if=/dev/zero', `of=${join(child.dir, 'ballast')}`, 'bs=1M', `count=${sizeMiB * 2}`]);
          await rm(join(child.dir, 'ballast'));
        }
        const threadsBefore = await threadCpu(child.pid);
        const before = await child.usage();
        if (flag('--fill-only')) {
          // A one-byte Range answers once the whole blob is verified: the fill's time, without serving it.
          const t0 = performance.now();
          await runCommand('curl', ['-sSf', '-r', '0-0', '-o', '/dev/null', url(child.url, blob.digest)]);
          f.agent.push(sizeMiB / ((performance.now() - t0) / 1000));
        } else if (parallel > 1) {
          const t0 = performance.now();
          await Promise.all([blob, ...others].map((b) => getExact(curlClient, url(child.url, b.digest), b.size)));
          f.agent.push((parallel * sizeMiB) / ((performance.now() - t0) / 1000));
        } else {
          f.agent.push(mibPerSecond(await getExact(curlClient, url(child.url, blob.digest), blob.size)));
        }
        const after = await child.usage();
        const threadsAfter = await threadCpu(child.pid);
        for (const [thread, seconds] of threadsAfter) {
          const spent = seconds - (threadsBefore.get(thread) ?? 0);
          if (spent > 0) f.perThread.set(thread, [...(f.perThread.get(thread) ?? []), spent / (blob.size / GiB)]);
        }
        if (watcher) {
          watcher.kill('SIGINT');
          await new Promise((resolve) => watcher.once('exit', resolve));
        }
        f.cpu.push((after.cpuSeconds - before.cpuSeconds) / (blob.size / GiB));
        f.rss.push(after.peakRssBytes / MiB);
      } finally {
        if (flag('--keep-log')) await copyFile(child.logFile, `/tmp/cold-experiment-agent-${name}-${run + 1}.log`);
        await child.stop();
      }
    }
  }
  process.stdout.write(`${sizeMiB} MiB cold, ${runs} runs, flags [${nodeArgs.join(' ')}]: direct ${num(median(direct))} MiB/s\n`);
  for (const [name, f] of figures) {
    process.stdout.write(
      `  ${name}: agent ${num(median(f.agent))} MiB/s (${f.agent.map((a) => num(a)).join(', ')}), ratio ${(median(f.agent) / median(direct)).toFixed(2)}×, ` +
        `CPU ${num(median(f.cpu), 2)} s/GiB (${[...f.perThread].map(([thread, values]) => `${thread} ${num(median(values), 2)}`).join(', ')}), peak RSS ${num(median(f.rss))} MiB\n`,
    );
  }
} finally {
  await registry.stop();
  await removeTempDir(dir);
}
