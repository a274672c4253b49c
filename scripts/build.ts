/**
 * Builds the agent as every node runs it: `agent/main.ts` and everything it imports, its npm
 * dependencies included, bundled by esbuild into `dist/agent/` (`main.js`, plus chunks for what is
 * loaded only on demand: the Kubernetes integration, `cleanup`, `import`), minified with names kept
 * (pino's error serializer logs `err.constructor.name`). The bundle needs no node_modules at run time.
 *
 * Why a bundle: the agent runs on every node, and what a module costs in memory is mostly its source
 * and compiled code. `@kubernetes/client-node` loads all of its ~60 API groups (23 MB of generated
 * JavaScript) from any of its entry points; bundled and marked side-effect free (below), only
 * KubeConfig and what it needs stay. Measured idle RSS (BENCHMARKS.md): 83 → 75 MiB, with `[kubernetes]`
 * 134 → ~90 MiB.
 *
 * Type checking is tsc's (`npm test`, `npm run typecheck`, the image's build stage); esbuild only
 * strips types.
 *   node scripts/build.ts
 */
import { copyFile, mkdir, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { createRequire, isBuiltin } from 'node:module';
import { join } from 'node:path';
import { type Metafile, type Plugin, build } from 'esbuild';

const root = new URL('..', import.meta.url).pathname;
// Optional add-ons that a dependency tries in a try/catch and does without (none is installed):
// debug's supports-color, ws's bufferutil and utf-8-validate.
const OPTIONAL = new Set(['supports-color', 'bufferutil', 'utf-8-validate']);

/**
 * `@kubernetes/client-node` declares no `sideEffects`, so a bundler must keep every module its entry
 * point imports: all ~60 API groups and ~900 models, used or not. None has a side effect the agent
 * needs: the one top-level statement is polyfill.js setting globalThis.File when missing, and Node 24
 * has it. Marked side-effect free, only what the agent calls stays (KubeConfig, Watch and what they
 * use; agent/kube/client.ts says why no generated API class).
 */
const clientNodeWithoutSideEffects: Plugin = {
  name: 'client-node-without-side-effects',
  setup(build) {
    build.onResolve({ filter: /.*/ }, async (args) => {
      if (args.pluginData === 'resolving') return undefined;
      const resolved = await build.resolve(args.path, { kind: args.kind, importer: args.importer, resolveDir: args.resolveDir, pluginData: 'resolving' });
      if (resolved.errors.length > 0 || !resolved.path.includes('/node_modules/@kubernetes/client-node/')) return undefined;
      return { path: resolved.path, sideEffects: false };
    });
  },
};

/**
 * `import … from 'node:http'` in an ES module makes Node build that module's ESM facade, which reads
 * every export, and node:http's WebSocket, CloseEvent and MessageEvent getters then load Node's own
 * copy of undici (~760 KB of source, compiled): 13 MiB more RSS in a bare Node 24 process than
 * `require('node:http')`, measured. So the bundle takes node:http through require(), re-exporting its
 * other exports; the agent's dependencies written as CommonJS already require() it.
 */
const HTTP_LAZY_WEB_CLASSES = new Set(['default', 'WebSocket', 'CloseEvent', 'MessageEvent']);
const httpWithoutEsmFacade: Plugin = {
  name: 'http-without-esm-facade',
  setup(build) {
    build.onResolve({ filter: /^(node:)?http$/ }, (args) => (args.kind === 'import-statement' ? { path: 'node:http', namespace: 'http-via-require' } : undefined));
    build.onLoad({ filter: /.*/, namespace: 'http-via-require' }, () => {
      const names = Object.keys(createRequire(import.meta.url)('node:http')).filter((name) => !HTTP_LAZY_WEB_CLASSES.has(name));
      const contents = ["const http = require('node:http');", 'export default http;', ...names.map((name) => `export const ${name} = http.${name};`)].join('\n');
      return { contents, loader: 'js' };
    });
  },
};

async function bundle(outdir: string): Promise<Metafile> {
  const result = await build({
    absWorkingDir: root,
    entryPoints: ['agent/main.ts'],
    outdir,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node24',
    minify: true,
    keepNames: true,
    // Dependencies written as CommonJS call require() for Node's builtins; an ES module has none.
    banner: { js: "import { createRequire as __agentRequire } from 'node:module'; const require = __agentRequire(import.meta.url);" },
    // The bundled packages' license files go to dist/licenses instead (collectLicenses).
    legalComments: 'none',
    metafile: true,
    logLevel: 'warning',
    plugins: [clientNodeWithoutSideEffects, httpWithoutEsmFacade],
  });
  return result.metafile;
}

/** Everything but Node's builtins is inside the bundle: the image has no node_modules to load it from. */
function checkSelfContained(meta: Metafile): void {
  const outside = Object.values(meta.outputs).flatMap((o) => o.imports.filter((i) => i.external && !isBuiltin(i.path) && !OPTIONAL.has(i.path)).map((i) => i.path));
  if (outside.length > 0) throw new Error(`the bundle would load from outside itself: ${[...new Set(outside)].join(', ')}`);
}

/** The license files of every npm package in the bundle, and a list of them (PACKAGES.txt). */
async function collectLicenses(meta: Metafile, licenses: string): Promise<void> {
  const packageRoots = new Set<string>();
  for (const input of Object.keys(meta.inputs)) {
    const match = /^(.*node_modules\/(?:@[^/]+\/)?[^/]+)\//.exec(input);
    if (match?.[1]) packageRoots.add(join(root, match[1]));
  }
  const index: string[] = [];
  for (const dir of [...packageRoots].sort()) {
    const pkg = JSON.parse(await readFile(join(dir, 'package.json'), 'utf8')) as { name: string; version: string; license?: string };
    const files = (await readdir(dir)).filter((f) => /^(licen[cs]e|copying|notice)/i.test(f));
    await mkdir(join(licenses, pkg.name), { recursive: true });
    for (const file of files) await copyFile(join(dir, file), join(licenses, pkg.name, file));
    index.push(`${pkg.name}@${pkg.version} ${pkg.license ?? 'see its files'}${files.length === 0 ? ' (no license file in the package)' : ''}`);
  }
  await writeFile(join(licenses, 'PACKAGES.txt'), `npm packages bundled into dist/agent:\n${index.join('\n')}\n`);
}

// Built beside dist/ and swapped in at the end: agents started from dist/ meanwhile (a test run
// rebuilding) find a whole build, old or new, never a half-written one.
const next = join(root, `dist.next-${process.pid}`);
const old = join(root, `dist.old-${process.pid}`);
try {
  const meta = await bundle(join(next, 'agent'));
  checkSelfContained(meta);
  await collectLicenses(meta, join(next, 'licenses'));
  await rename(join(root, 'dist'), old).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOENT') throw error;
  });
  await rename(next, join(root, 'dist'));
} finally {
  await rm(next, { recursive: true, force: true });
  await rm(old, { recursive: true, force: true });
}
