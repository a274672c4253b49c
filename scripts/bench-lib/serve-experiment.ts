/**
 * Experiment behind the suggestions in the benchmark report: how fast can node:http serve a cached
 * file with the agent's read loop, with other chunk sizes, with reused buffers, with a read stream?
 * Not part of the agent. Each variant runs in its own child process (like the agent), the client
 * is curl, the file is in page cache.
 *
 *   node_modules/.bin/node scripts/bench-lib/serve-experiment.ts [--size-mib 256] [--runs 5]
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, readFile, writeFile } from 'node:fs/promises';
import { createServer, type ServerResponse } from 'node:http';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import { curlClient, getExact, mibPerSecond, MiB, GiB } from './client.ts';
import { option } from './experiment-args.ts';
import { processUsage } from './services.ts';
import { median } from './stats.ts';

type Variant = 'alloc' | 'alloc-hash' | 'reuse' | 'stream';

function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      res.off('close', onClose);
      resolve();
    };
    const onClose = (): void => {
      res.off('drain', onDrain);
      reject(new Error('client gone'));
    };
    res.once('drain', onDrain);
    res.once('close', onClose);
  });
}

/** The agent's loop today (FileBlob.read + writeAll): a fresh buffer per chunk, wait for drain after each. */
async function serveAlloc(res: ServerResponse, path: string, size: number, chunk: number, hash: boolean): Promise<void> {
  const handle = await open(path, 'r');
  const h = hash ? createHash('sha256') : undefined;
  try {
    for (let position = 0; position < size; ) {
      const length = Math.min(chunk, size - position);
      const buffer = Buffer.allocUnsafe(length);
      const { bytesRead } = await handle.read(buffer, 0, length, position);
      position += bytesRead;
      const out = bytesRead === length ? buffer : buffer.subarray(0, bytesRead);
      h?.update(out);
      if (!res.write(out)) await drained(res);
    }
  } finally {
    await handle.close();
  }
}

/** A few buffers reused round-robin; the next read overlaps the socket write of the previous chunk. */
async function serveReuse(res: ServerResponse, path: string, size: number, chunk: number): Promise<void> {
  const handle = await open(path, 'r');
  const ring = [Buffer.allocUnsafe(chunk), Buffer.allocUnsafe(chunk), Buffer.allocUnsafe(chunk)];
  const free: Array<Promise<void>> = ring.map(() => Promise.resolve());
  try {
    let i = 0;
    for (let position = 0; position < size; i = (i + 1) % ring.length) {
      await free[i]; // written out: safe to overwrite
      const buffer = ring[i] as Buffer;
      const length = Math.min(chunk, size - position);
      const { bytesRead } = await handle.read(buffer, 0, length, position);
      position += bytesRead;
      const out = buffer.subarray(0, bytesRead);
      free[i] = new Promise<void>((resolve) => res.write(out, () => resolve()));
      if (res.writableNeedDrain) await drained(res);
    }
    await Promise.all(free);
  } finally {
    await handle.close();
  }
}

async function serveStream(res: ServerResponse, path: string, chunk: number): Promise<void> {
  await pipeline(createReadStream(path, { highWaterMark: chunk }), res);
}

/** Child: serve `path` on a random port with one variant; prints the port. */
async function server(variant: Variant, chunk: number, path: string): Promise<void> {
  const size = (await open(path, 'r').then(async (h) => {
    const s = (await h.stat()).size;
    await h.close();
    return s;
  })) as number;
  const srv = createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(size) });
    const done =
      variant === 'stream'
        ? serveStream(res, path, chunk)
        : variant === 'reuse'
          ? serveReuse(res, path, size, chunk).then(() => void res.end())
          : serveAlloc(res, path, size, chunk, variant === 'alloc-hash').then(() => void res.end());
    done.catch(() => res.destroy());
  });
  srv.listen(0, '127.0.0.1', () => {
    const address = srv.address();
    process.stdout.write(`${typeof address === 'object' && address ? address.port : 0}\n`);
  });
}

async function measure(variant: Variant, chunk: number, path: string, size: number, runs: number): Promise<{ rate: number; cpuPerGiB: number; peakMiB: number }> {
  const child = spawn(process.execPath, [new URL(import.meta.url).pathname, 'serve', variant, String(chunk), path], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      child.stdout.setEncoding('utf8').once('data', (d: string) => resolve(Number(d.trim())));
      child.once('exit', () => reject(new Error('server exited')));
    });
    const url = `http://127.0.0.1:${port}/blob`;
    for (let i = 0; i < 2; i++) await getExact(curlClient, url, size); // JIT and page cache
    const pid = child.pid ?? 0;
    const before = await processUsage(pid);
    const rates: number[] = [];
    for (let i = 0; i < runs; i++) rates.push(mibPerSecond(await getExact(curlClient, url, size)));
    const after = await processUsage(pid);
    return { rate: median(rates), cpuPerGiB: (after.cpuSeconds - before.cpuSeconds) / ((runs * size) / GiB), peakMiB: after.peakRssBytes / MiB };
  } finally {
    child.kill('SIGKILL');
  }
}

async function main(argv: string[]): Promise<void> {
  if (argv[0] === 'serve') {
    await server(argv[1] as Variant, Number(argv[2]), argv[3] ?? '');
    return;
  }
  const sizeMiB = Number(option('--size-mib') ?? 256);
  const runs = Number(option('--runs') ?? 5);
  const dir = await makeTempDir('rpa-serve-experiment');
  try {
    const path = join(dir, 'blob');
    const size = sizeMiB * MiB;
    const parts: Buffer[] = [];
    for (let left = size; left > 0; left -= 64 * MiB) parts.push(randomBytes(Math.min(64 * MiB, left)));
    await writeFile(path, Buffer.concat(parts));
    await readFile(path); // page cache
    const cases: Array<[Variant, number]> = [
      ['alloc', 64 * 1024],
      ['alloc', 256 * 1024],
      ['alloc', 1 * MiB],
      ['alloc', 4 * MiB],
      ['alloc-hash', 1 * MiB],
      ['reuse', 256 * 1024],
      ['reuse', 1 * MiB],
      ['stream', 64 * 1024],
      ['stream', 1 * MiB],
    ];
    process.stdout.write(`| Variant | Chunk | MiB/s (median of ${runs}) | Server CPU s per GiB | Server peak RSS |\n| --- | --- | --- | --- | --- |\n`);
    for (const [variant, chunk] of cases) {
      const r = await measure(variant, chunk, path, size, runs);
      process.stdout.write(`| ${variant} | ${chunk / 1024} KiB | ${r.rate.toFixed(0)} | ${r.cpuPerGiB.toFixed(2)} | ${r.peakMiB.toFixed(0)} MiB |\n`);
    }
  } finally {
    await removeTempDir(dir);
  }
}

await main(process.argv.slice(2));
