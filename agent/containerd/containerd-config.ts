/**
 * Reads the node's containerd config (never writes it) the way containerd loads it: the main file, then its
 * `imports` breadth first (relative to the importing file, `*` globs expanded), each file at most once.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { GlobPatternError, globPaths } from './glob.ts';
import { TomlTextError, isTomlTable, parseTomlLossless } from './toml-text.ts';
import type { TomlTable } from './toml-text.ts';

export interface ConfigFile {
  readonly path: string;
  readonly doc: TomlTable;
}

export type LoadedConfig =
  | { readonly kind: 'loaded'; readonly version: number; readonly files: readonly ConfigFile[]; readonly warnings: readonly string[] }
  | { readonly kind: 'missing'; readonly path: string }
  | { readonly kind: 'unreadable'; readonly path: string; readonly reason: string }
  | { readonly kind: 'invalid'; readonly path: string; readonly reason: string };

/** Far more than any real node has; stops runaway globs. */
const MAX_FILES = 64;

/**
 * Loads containerd's config and its imports. `hostRoot` is where the node's root file system is
 * mounted when the agent runs in a container ('' when it sees the node's paths directly): an
 * absolute import such as /etc/containerd/conf.d/*.toml is read under it.
 */
export async function loadContainerdConfig(configFile: string, hostRoot = ''): Promise<LoadedConfig> {
  const main = path.resolve(configFile);
  const first = await readConfigFile(main);
  if (first.kind !== 'loaded') return first;
  const version = configVersion(first.doc);
  if (version === undefined) {
    return { kind: 'invalid', path: main, reason: `unsupported config version ${String(first.doc['version'])} (expected 1, 2 or 3)` };
  }

  const files: ConfigFile[] = [];
  const warnings: string[] = [];
  const loaded = new Set<string>();
  const pending = [main];
  while (pending.length > 0) {
    const file = pending.shift() as string;
    if (loaded.has(file)) continue;
    if (files.length >= MAX_FILES) {
      warnings.push(`more than ${MAX_FILES} config files; ${file} and later imports were not read`);
      break;
    }
    const read = file === main ? first : await readConfigFile(file);
    if (read.kind === 'missing') return { kind: 'unreadable', path: file, reason: `imported file ${file} does not exist` };
    if (read.kind !== 'loaded') return read;
    files.push({ path: file, doc: read.doc });
    loaded.add(file);
    const imports = await resolveImports(file, read.doc['imports'], warnings, hostRoot);
    if (typeof imports === 'string') return { kind: 'invalid', path: file, reason: imports };
    pending.push(...imports);
  }
  return { kind: 'loaded', version, files, warnings };
}

type ReadResult = { readonly kind: 'loaded'; readonly doc: TomlTable } | Exclude<LoadedConfig, { kind: 'loaded' }>;

async function readConfigFile(file: string): Promise<ReadResult> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = typeof err === 'object' && err !== null && 'code' in err ? err.code : undefined;
    if (code === 'ENOENT') return { kind: 'missing', path: file };
    return { kind: 'unreadable', path: file, reason: err instanceof Error ? err.message : String(err) };
  }
  try {
    return { kind: 'loaded', doc: parseTomlLossless(text) };
  } catch (err) {
    if (err instanceof TomlTextError) return { kind: 'invalid', path: file, reason: err.message };
    throw err;
  }
}

/** containerd treats a file without `version` as version 1. */
function configVersion(doc: TomlTable): number | undefined {
  const version = doc['version'];
  if (version === undefined) return 1;
  if (version === 1n || version === 2n || version === 3n) return Number(version);
  return undefined;
}

/** The files `imports` names, or an error text when containerd itself would refuse the list. */
async function resolveImports(parent: string, imports: unknown, warnings: string[], hostRoot: string): Promise<string[] | string> {
  if (imports === undefined) return [];
  if (!Array.isArray(imports) || !imports.every((i) => typeof i === 'string')) return '"imports" must be an array of strings';
  const out: string[] = [];
  for (const entry of imports as string[]) {
    const resolved = path.isAbsolute(entry) && hostRoot !== '' ? path.join(hostRoot, entry) : path.resolve(path.dirname(parent), entry);
    if (!resolved.includes('*')) {
      out.push(resolved);
    } else if (resolved.includes('**')) {
      warnings.push(`import ${JSON.stringify(entry)} in ${parent} uses "**" and was not evaluated`);
    } else {
      try {
        out.push(...(await globPaths(resolved)));
      } catch (err) {
        if (!(err instanceof GlobPatternError)) throw err;
        return `import ${JSON.stringify(entry)}: ${err.message}`;
      }
    }
  }
  return out;
}

/**
 * The `plugins` table after merging every file in load order. containerd 2.x merges plugin tables key by
 * key (`deep`); containerd 1.x replaces a plugin's whole table with the later file's.
 */
export function mergedPlugins(files: readonly ConfigFile[], deep: boolean): TomlTable {
  let plugins: TomlTable = {};
  for (const file of files) {
    const next = file.doc['plugins'];
    if (!isTomlTable(next)) continue;
    plugins = deep ? deepMerge(plugins, next) : { ...plugins, ...next };
  }
  return plugins;
}

function deepMerge(base: TomlTable, over: TomlTable): TomlTable {
  const out: TomlTable = { ...base };
  for (const [key, value] of Object.entries(over)) {
    const prior = out[key];
    out[key] = isTomlTable(prior) && isTomlTable(value) ? deepMerge(prior, value) : value;
  }
  return out;
}

/** The value at `keys` below `table`, through nested tables only. */
export function valueAt(table: TomlTable, keys: readonly string[]): unknown {
  let node: unknown = table;
  for (const key of keys) {
    if (!isTomlTable(node)) return undefined;
    node = Object.hasOwn(node, key) ? node[key] : undefined;
  }
  return node;
}
