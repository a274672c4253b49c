/**
 * Experiment behind the warm path's cost per request: many warm GETs of one small cached blob
 * through an agent child, with the agent's CPU seconds, minor page faults and context switches
 * per GET. Not part of the agent; `scripts/bench` builds dist first, this script does not.
 *
 *   node_modules/.bin/node scripts/bench-lib/warm-small-experiment.ts [--size-mib 16] [--gets 64] [--builds this=dist/agent/main.js,…]
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeRandomBlobFile, pushBlob } from '../../test/fixtures/image.ts';
import { startRegistry } from '../../test/fixtures/registry.ts';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import { GiB, MiB, curlClient, getExact } from './client.ts';
import { builds, option } from './experiment-args.ts';
import { startAgentChild } from './services.ts';
import { median, num } from './stats.ts';

const sizeMiB = Number(option('--size-mib') ?? 16);
const gets = Number(option('--gets') ?? 64);
const rounds = Number(option('--rounds') ?? 3);
const compared = builds();

/** utime+stime (s), minor faults and voluntary context switches of a process, from /proc. */
async function counters(pid: number): Promise<{ cpu: number; minflt: number }> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // proc(5), 1-based: minflt 10, utime 14, stime 15.
  return { cpu: (Number(fields[11]) + Number(fields[12])) / 100, minflt: Number(fields[7]) };
}

const dir = await makeTempDir('warm-small-experiment');
const registry = await startRegistry();
try {
  const blob = await makeRandomBlobFile(join(dir, 'blob'), sizeMiB * MiB);
  await pushBlob(registry.url, 'x/y', blob);
  const results = new Map<string, { cpu: number[]; faults: number[] }>(compared.map(({ name }) => [name, { cpu: [], faults: [] }]));
  for (let round = 0; round < rounds; round++) {
    for (const { name, main, nodeArgs } of compared) {
      const child = await startAgentChild({ mirror: { upstream: registry.url }, main, nodeArgs });
      try {
        const url = `${child.url}/v2/x/y/blobs/${blob.digest}`;
        for (let i = 0; i < 8; i++) await getExact(curlClient, url, blob.size);
        const before = await counters(child.pid);
        for (let i = 0; i < gets; i++) await getExact(curlClient, url, blob.size);
        const after = await counters(child.pid);
        const r = results.get(name)!;
        r.cpu.push((after.cpu - before.cpu) / ((gets * blob.size) / GiB));
        r.faults.push((after.minflt - before.minflt) / gets);
      } finally {
        await child.stop();
      }
    }
  }
  process.stdout.write(`| Build | CPU s per GiB (${gets} GETs of ${sizeMiB} MiB, median of ${rounds}) | Minor faults per GET |\n| --- | --- | --- |\n`);
  for (const [name, r] of results) process.stdout.write(`| ${name} | ${num(median(r.cpu), 2)} | ${num(median(r.faults))} |\n`);
} finally {
  await registry.stop();
  await removeTempDir(dir);
}
