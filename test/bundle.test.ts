// The bundle `npm test` builds first (scripts/build.ts), as the image runs it: what it makes Node load.
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AGENT_NODE_FLAGS, agentMain } from './fixtures/agent.ts';
import { runCommand } from './fixtures/process.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const DIST = new URL('../dist/agent/', import.meta.url).pathname;

let dir: string;
let probe: string;

beforeAll(async () => {
  dir = await makeTempDir('rpa-bundle');
  // Loaded with --import before the entry point: on exit, tells whether Node loaded its own undici.
  probe = join(dir, 'probe.mjs');
  await writeFile(
    probe,
    "import { writeSync } from 'node:fs';\nprocess.on('exit', () => writeSync(2, `\\nnode-internal-undici=${process.moduleLoadList.some((m) => m.endsWith('internal/deps/undici/undici'))}\\n`));\n",
  );
});

afterAll(async () => {
  if (dir) await removeTempDir(dir);
});

async function internalUndiciLoaded(main: string, ...args: string[]): Promise<boolean> {
  const result = await runCommand(process.execPath, [...AGENT_NODE_FLAGS, `--import=${probe}`, main, ...args], { timeoutMs: 30_000 });
  const verdict = /node-internal-undici=(true|false)/.exec(result.stderr)?.[1];
  if (verdict === undefined) throw new Error(`no verdict from the probe: ${result.stderr}`);
  return verdict === 'true';
}

describe('the bundle (dist/agent)', () => {
  it('imports node:http through require(): no ESM facade, so Node never loads its own copy of undici (13 MiB in a bare process)', async () => {
    expect(agentMain()).toBe(join(DIST, 'main.js'));
    for (const file of (await readdir(DIST)).filter((f) => f.endsWith('.js'))) {
      expect(await readFile(join(DIST, file), 'utf8'), file).not.toMatch(/from\s*"(node:)?http"/);
    }
    // The whole module graph is evaluated before --help is answered.
    expect(await internalUndiciLoaded(agentMain(), '--help')).toBe(false);
    // The probe can tell: an ES module importing node:http makes Node load it.
    const esm = join(dir, 'esm-http.mjs');
    await writeFile(esm, "import { createServer } from 'node:http';\nconsole.log(typeof createServer);\n");
    expect(await internalUndiciLoaded(esm)).toBe(true);
  });

  it('keeps @kubernetes/client-node to its KubeConfig: no generated API class or model serializer in the Kubernetes chunk', async () => {
    const chunks = (await readdir(DIST)).filter((f) => f.startsWith('kubernetes-') && f.endsWith('.js'));
    expect(chunks).toHaveLength(1);
    const text = await readFile(join(DIST, chunks[0]!), 'utf8');
    expect(text.length).toBeLessThan(400_000);
    for (const generated of ['CoreV1Api', 'ObjectSerializer', 'V1PodSpec', 'ListWatch']) expect(text, generated).not.toContain(generated);
    expect(text).toContain('loadFromCluster');
  });
});
