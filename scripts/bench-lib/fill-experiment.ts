/**
 * Experiment behind the cold-path suggestions in the benchmark report: what does consuming an
 * upstream blob body with undici cost per step (hash, awaited file write per chunk, batched
 * writes)? Not part of the agent. The registry (docker-registry) serves a page-cached blob.
 *
 *   node_modules/.bin/node scripts/bench-lib/fill-experiment.ts [--size-mib 256] [--runs 5]
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { Pool } from 'undici';
import { makeRandomBlobFile, pushBlob } from '../../test/fixtures/image.ts';
import { startRegistry } from '../../test/fixtures/registry.ts';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import { MiB } from './client.ts';
import { option } from './experiment-args.ts';
import { median } from './stats.ts';

type Mode = 'consume' | 'hash' | 'hash+write per chunk' | 'hash+write 1 MiB batches' | 'hash+write unawaited (queue of 4 MiB)';

interface Result {
  mibPerSecond: number;
  chunks: number;
  medianChunkKiB: number;
}

async function fetchInto(pool: Pool, path: string, mode: Mode, file: string): Promise<Result> {
  const handle = mode.includes('write') ? await open(file, 'w') : undefined;
  const started = performance.now();
  const res = await pool.request({ method: 'GET', path });
  const hash = mode === 'consume' ? undefined : createHash('sha256');
  const sizes: number[] = [];
  let position = 0;
  let batch: Buffer[] = [];
  let batchBytes = 0;
  const pending = new Set<Promise<unknown>>();
  let pendingBytes = 0;
  const flush = async (): Promise<void> => {
    if (!handle || batchBytes === 0) return;
    await handle.writev(batch, position);
    position += batchBytes;
    batch = [];
    batchBytes = 0;
  };
  for await (const raw of res.body) {
    const chunk = raw as Buffer;
    sizes.push(chunk.length);
    hash?.update(chunk);
    if (!handle) continue;
    if (mode === 'hash+write per chunk') {
      await handle.write(chunk, 0, chunk.length, position);
      position += chunk.length;
    } else if (mode === 'hash+write 1 MiB batches') {
      batch.push(chunk);
      batchBytes += chunk.length;
      if (batchBytes >= MiB) await flush();
    } else {
      const at = position;
      position += chunk.length;
      pendingBytes += chunk.length;
      const p: Promise<unknown> = handle.write(chunk, 0, chunk.length, at).finally(() => {
        pending.delete(p);
        pendingBytes -= chunk.length;
      });
      pending.add(p);
      while (pendingBytes > 4 * MiB) await Promise.race(pending);
    }
  }
  await flush();
  await Promise.all(pending);
  hash?.digest('hex');
  await handle?.close();
  const seconds = (performance.now() - started) / 1000;
  const bytes = sizes.reduce((a, b) => a + b, 0);
  return { mibPerSecond: bytes / MiB / seconds, chunks: sizes.length, medianChunkKiB: median(sizes) / 1024 };
}

async function main(): Promise<void> {
  const sizeMiB = Number(option('--size-mib') ?? 256);
  const runs = Number(option('--runs') ?? 5);
  const dir = await makeTempDir('rpa-fill-experiment');
  const registry = await startRegistry();
  try {
    const blob = await makeRandomBlobFile(join(dir, 'blob'), sizeMiB * MiB);
    await pushBlob(registry.url, 'x/y', blob);
    const pool = new Pool(registry.url);
    const path = `/v2/x/y/blobs/${blob.digest}`;
    const modes: Mode[] = ['consume', 'hash', 'hash+write per chunk', 'hash+write 1 MiB batches', 'hash+write unawaited (queue of 4 MiB)'];
    process.stdout.write(`| undici body of a ${sizeMiB} MiB blob | MiB/s (median of ${runs}) | chunks | median chunk |\n| --- | --- | --- | --- |\n`);
    for (const mode of modes) {
      await fetchInto(pool, path, mode, join(dir, 'out'));
      const results: Result[] = [];
      for (let i = 0; i < runs; i++) results.push(await fetchInto(pool, path, mode, join(dir, 'out')));
      const m = median(results.map((r) => r.mibPerSecond));
      const last = results.at(-1);
      process.stdout.write(`| ${mode} | ${m.toFixed(0)} | ${last?.chunks ?? 0} | ${(last?.medianChunkKiB ?? 0).toFixed(0)} KiB |\n`);
    }
    await pool.close();
  } finally {
    await registry.stop();
    await removeTempDir(dir);
  }
}

await main();
