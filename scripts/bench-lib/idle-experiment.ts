/**
 * Idle RSS of builds side by side, without and with `[kubernetes]` (the API double of the tests):
 * each build started `--runs` times, measured `--settle-ms` after /readyz.
 *   node_modules/.bin/node scripts/bench-lib/idle-experiment.ts [--runs 3] [--settle-ms 5000] [--builds this=dist/agent/main.js+--flag,…]
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startKubeApi } from '../../test/fixtures/kube-api.ts';
import { startRegistry } from '../../test/fixtures/registry.ts';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import { MiB } from './client.ts';
import { builds, option } from './experiment-args.ts';
import { idleUsage } from './services.ts';
import { median } from './stats.ts';

const settleMs = Number(option('--settle-ms') ?? 5_000);
const runs = Number(option('--runs') ?? 3);
const compared = builds();

const registry = await startRegistry();
const api = await startKubeApi();
const work = await makeTempDir('rpa-idle');
const kubeconfig = join(work, 'kubeconfig');
await writeFile(kubeconfig, api.kubeconfigYaml());
const results = new Map<string, { plain: number[]; kube: number[]; anonPlain: number[]; anonKube: number[] }>();
try {
  for (let run = 0; run < runs; run++) {
    for (const { name, main, nodeArgs } of compared) {
      const r = results.get(name) ?? { plain: [], kube: [], anonPlain: [], anonKube: [] };
      results.set(name, r);
      for (const kube of [false, true]) {
        const u = await idleUsage({ mirror: { upstream: registry.url }, main, nodeArgs, ...(kube ? { kubernetes: { kubeconfig, nodeName: 'idle-node' } } : {}) }, settleMs);
        (kube ? r.kube : r.plain).push(u.rssBytes);
        (kube ? r.anonKube : r.anonPlain).push(u.rssAnonBytes);
      }
    }
  }
} finally {
  await api.stop();
  await registry.stop();
  await removeTempDir(work);
}
const f = (v: number[]): string => `${(median(v) / MiB).toFixed(1)} MiB`;
for (const [name, r] of results) {
  process.stdout.write(`${name}: idle ${f(r.plain)} (anon ${f(r.anonPlain)}), with [kubernetes] ${f(r.kube)} (anon ${f(r.anonKube)})\n`);
}
