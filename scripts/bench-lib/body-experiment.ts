/**
 * Experiment behind the cold path's upstream reading: what does each way of reading an upstream
 * blob body cost (throughput and CPU seconds per GiB of this process, every thread), with and
 * without SHA-256? (A hashing thread was measured with it too: see BENCHMARKS.md.)
 * Not part of the agent. The registry (docker-registry) serves a page-cached blob; curl is the
 * reference client.
 *
 *   node_modules/.bin/node scripts/bench-lib/body-experiment.ts [--size-mib 256] [--runs 5]
 */
import { createHash } from 'node:crypto';
import { get } from 'node:http';
import { join } from 'node:path';
import { Agent, type Dispatcher } from 'undici';
import { makeRandomBlobFile, pushBlob } from '../../test/fixtures/image.ts';
import { startRegistry } from '../../test/fixtures/registry.ts';
import { runCommand } from '../../test/fixtures/process.ts';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import { MiB } from './client.ts';
import { option } from './experiment-args.ts';
import { median } from './stats.ts';

type Sink = (chunk: Buffer) => void;
type Reader = (url: URL, sink: Sink) => Promise<void>;

const agent = new Agent({ keepAliveTimeout: 30_000 });

const readers: Record<string, Reader> = {
  'undici request, for await (hwm 256 KiB)': async (url, sink) => {
    const res = await agent.request({ origin: url.origin, path: url.pathname, method: 'GET', highWaterMark: 256 * 1024 });
    for await (const chunk of res.body) sink(chunk as Buffer);
  },
  'undici request, on data': async (url, sink) => {
    const res = await agent.request({ origin: url.origin, path: url.pathname, method: 'GET', highWaterMark: 256 * 1024 });
    await new Promise<void>((resolve, reject) => {
      res.body.on('data', sink).on('end', resolve).on('error', reject);
    });
  },
  'undici dispatch handler': (url, sink) =>
    new Promise<void>((resolve, reject) => {
      const handler: Dispatcher.DispatchHandler = {
        onRequestStart: () => undefined,
        onResponseStart: () => undefined,
        onResponseData: (_c, chunk) => sink(chunk),
        onResponseEnd: () => resolve(),
        onResponseError: (_c, error) => reject(error),
      };
      agent.dispatch({ origin: url.origin, path: url.pathname, method: 'GET' }, handler);
    }),
  'node:http get, on data': (url, sink) =>
    new Promise<void>((resolve, reject) => {
      get(url, (res) => {
        res.on('data', sink).on('end', resolve).on('error', reject);
      }).on('error', reject);
    }),
};

async function measure(reader: Reader, url: URL, hash: boolean): Promise<{ mibs: number; cpu: number; chunks: number }> {
  const h = hash ? createHash('sha256') : undefined;
  let bytes = 0;
  let chunks = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await reader(url, (chunk) => {
    bytes += chunk.length;
    chunks += 1;
    h?.update(chunk);
  });
  h?.digest('hex');
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const gib = bytes / (1024 * MiB);
  return { mibs: bytes / MiB / seconds, cpu: (cpu.user + cpu.system) / 1e6 / gib, chunks };
}

async function main(): Promise<void> {
  const sizeMiB = Number(option('--size-mib') ?? 256);
  const runs = Number(option('--runs') ?? 5);
  const dir = await makeTempDir('body-experiment');
  const registry = await startRegistry();
  try {
    const blob = await makeRandomBlobFile(join(dir, 'blob'), sizeMiB * MiB);
    await pushBlob(registry.url, 'x/y', blob);
    const url = new URL(`${registry.url}/v2/x/y/blobs/${blob.digest}`);
    const curl: number[] = [];
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await runCommand('curl', ['-sf', '-o', '/dev/null', url.href]);
      curl.push((sizeMiB / (performance.now() - t0)) * 1000);
    }
    process.stdout.write(`| reading a ${sizeMiB} MiB body (median of ${runs}) | MiB/s | CPU s/GiB | MiB/s with SHA-256 | CPU s/GiB with SHA-256 | chunks |\n| --- | --- | --- | --- | --- | --- |\n`);
    process.stdout.write(`| curl -o /dev/null (reference) | ${median(curl).toFixed(0)} | | | | |\n`);
    for (const [name, reader] of Object.entries(readers)) {
      await measure(reader, url, false);
      const plain = [];
      const hashed = [];
      for (let i = 0; i < runs; i++) {
        plain.push(await measure(reader, url, false));
        hashed.push(await measure(reader, url, true));
      }
      const m = (xs: { mibs: number; cpu: number }[], k: 'mibs' | 'cpu'): number => median(xs.map((x) => x[k]));
      process.stdout.write(
        `| ${name} | ${m(plain, 'mibs').toFixed(0)} | ${m(plain, 'cpu').toFixed(2)} | ${m(hashed, 'mibs').toFixed(0)} | ${m(hashed, 'cpu').toFixed(2)} | ${plain.at(-1)?.chunks} |\n`,
      );
    }
  } finally {
    await agent.close();
    await registry.stop();
    await removeTempDir(dir);
  }
}

await main();
