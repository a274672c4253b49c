/**
 * Idle RSS of builds side by side, without and with `[kubernetes]` (the API double of the tests):
 * each build started `--runs` times, measured IDLE_SETTLE_MS after /readyz.
 *   node_modules/.bin/node scripts/bench-lib/idle-experiment.ts [--runs 3] [--builds this=dist/agent/main.js,…]
 * A build may add Node flags after its path: `name=path+--flag+--flag`.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startKubeApi } from '../../test/fixtures/kube-api.ts';
import { startRegistry } from '../../test/fixtures/registry.ts';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import { MiB } from './client.ts';
import { startAgentChild } from './services.ts';
import { median } from './stats.ts';

const IDLE_SETTLE_MS = Number(process.env["IDLE_SETTLE_MS"] ?? 5_000);
const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const runs = Number(arg('--runs') ?? 3);
const builds = (arg('--builds') ?? `this=${new URL('../../dist/agent/main.js', import.meta.url).pathname}`).split(',').map((b) => {
  const [name = '', spec = ''] = b.split(/=(.*)/s);
  const [main = '', ...nodeArgs] = spec.split('+');
  return { name, main, nodeArgs };
});

const registry = await startRegistry();
const api = await startKubeApi();
const work = await makeTempDir('rpa-idle');
const kubeconfig = join(work, 'kubeconfig');
await writeFile(kubeconfig, api.kubeconfigYaml());
const results = new Map<string, { plain: number[]; kube: number[]; anonPlain: number[]; anonKube: number[] }>();
try {
  for (let run = 0; run < runs; run++) {
    for (const { name, main, nodeArgs } of builds) {
      const r = results.get(name) ?? { plain: [], kube: [], anonPlain: [], anonKube: [] };
      results.set(name, r);
      for (const kube of [false, true]) {
        const agent = await startAgentChild({ mirror: { upstream: registry.url }, main, nodeArgs, ...(kube ? { kubernetes: { kubeconfig, nodeName: 'idle-node' } } : {}) }, true);
        try {
          await new Promise((resolve) => setTimeout(resolve, IDLE_SETTLE_MS));
          const u = await agent.usage();
          (kube ? r.kube : r.plain).push(u.rssBytes);
          (kube ? r.anonKube : r.anonPlain).push(u.rssAnonBytes);
        } finally {
          await agent.stop();
        }
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
