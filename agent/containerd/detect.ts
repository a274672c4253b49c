/**
 * Does containerd read hosts.toml files from the agent's hosts dir? Answered from the node's containerd
 * config (read only, imports included) with one line telling the admin exactly what to change.
 */
import path from 'node:path';
import { loadContainerdConfig, mergedPlugins, valueAt } from './containerd-config.ts';
import type { ConfigFile } from './containerd-config.ts';
import { isTomlTable } from './toml-text.ts';
import type { TomlTable } from './toml-text.ts';

export type ContainerdState =
  | 'ok'
  | 'config_path_unset'
  | 'config_path_mismatch'
  | 'config_path_list'
  | 'legacy_mirrors_conflict'
  | 'config_not_found'
  | 'config_unreadable'
  | 'config_invalid';

export interface ContainerdVerdict {
  readonly state: ContainerdState;
  /** Only `ok` is true: pulls for mirrored registries go through the agent. */
  readonly ok: boolean;
  /** Inferred from the config version (3 → 2, else 1); containerd 2.x also reads version 2 files. */
  readonly containerdMajor?: 1 | 2;
  readonly configVersion?: number;
  /** The registry `config_path` value in effect, as written. */
  readonly configPath?: string;
  /** One line for the admin: what is wrong and exactly what to set where. */
  readonly message: string;
  /** Config files read, in merge order (main file first). */
  readonly configFiles: readonly string[];
  /** Things that did not change the verdict but may surprise (skipped imports, merge differences). */
  readonly warnings: readonly string[];
}

interface Layout {
  readonly version: number;
  readonly major: 1 | 2;
  /** Plugin id holding `registry` in this config version. */
  readonly plugin: string;
}

const LAYOUTS: readonly Layout[] = [
  { version: 1, major: 1, plugin: 'cri' },
  { version: 2, major: 1, plugin: 'io.containerd.grpc.v1.cri' },
  { version: 3, major: 2, plugin: 'io.containerd.cri.v1.images' },
];

const NEVER_EDITS = 'and restart containerd (the agent never edits it)';

/** containerd 2.x's built-in default, used when no config file exists. */
const CONTAINERD2_DEFAULT_CONFIG_PATH = '/etc/containerd/certs.d:/etc/docker/certs.d';

export async function detectContainerd(configPath: string, hostsDir: string, hostRoot = ''): Promise<ContainerdVerdict> {
  const configFile = path.resolve(configPath);
  const loaded = await loadContainerdConfig(configFile, hostRoot);
  switch (loaded.kind) {
    case 'missing':
      return {
        state: 'config_not_found',
        ok: false,
        configFiles: [],
        warnings: [],
        message:
          `no containerd config at ${configFile}: containerd runs on built-in defaults, where config_path is unset ` +
          `(containerd 1.x) or "${CONTAINERD2_DEFAULT_CONFIG_PATH}", a list that transfer-service pulls ignore ` +
          `(containerd 2.x); create ${configFile} with version = 3 and ${settingPath(layoutFor(3))} = "${hostsDir}" ` +
          `(version = 2 and ${settingPath(layoutFor(2))} for containerd 1.x) ${NEVER_EDITS}`,
      };
    case 'unreadable':
      return failure('config_unreadable', `cannot read containerd config ${loaded.path}: ${loaded.reason}`);
    case 'invalid':
      return failure('config_invalid', `containerd config ${loaded.path} is invalid (${loaded.reason}); containerd cannot start with it either`);
    case 'loaded':
      return judge(layoutFor(loaded.version), loaded.files, loaded.warnings, configFile, hostsDir);
  }
}

function failure(state: ContainerdState, message: string): ContainerdVerdict {
  return { state, ok: false, message, configFiles: [], warnings: [] };
}

function layoutFor(version: number): Layout {
  return LAYOUTS.find((l) => l.version === version) ?? (LAYOUTS[0] as Layout);
}

function settingPath(layout: Layout): string {
  return `plugins.${pluginKey(layout.plugin)}.registry.config_path`;
}

function pluginKey(id: string): string {
  return /^[A-Za-z0-9_-]+$/.test(id) ? id : `"${id}"`;
}

function judge(
  layout: Layout,
  files: readonly ConfigFile[],
  loadWarnings: readonly string[],
  configFile: string,
  hostsDir: string,
): ContainerdVerdict {
  const warnings = [...loadWarnings];
  const plugins = mergedPlugins(files, layout.major === 2);
  const registry = valueAt(plugins, [layout.plugin, 'registry']);
  const raw = isTomlTable(registry) ? registry['config_path'] : undefined;
  const base = {
    containerdMajor: layout.major,
    configVersion: layout.version,
    configFiles: files.map((f) => f.path),
    warnings,
  };
  if (raw !== undefined && typeof raw !== 'string') {
    return { ...base, state: 'config_invalid', ok: false, message: `${settingPath(layout)} must be a string in ${configFile}` };
  }
  if (layout.major === 1) warnings.push(...mergeDifference(layout, files, raw));

  const setting = settingPath(layout);
  const where = fileSetting(files, layout) ?? configFile;
  const set = `set ${setting} = "${hostsDir}" in ${where} ${NEVER_EDITS}`;
  const old = layout.version === 1 ? 'old config version 1 (containerd 1.x); ' : '';
  const legacy = isTomlTable(registry) ? legacyTables(registry, layout) : [];
  const configPath = raw ?? '';

  if (configPath === '') {
    const legacyNote = legacy.length > 0 ? `; also remove ${legacy.join(' and ')}, which containerd refuses together with config_path` : '';
    return {
      ...base,
      state: 'config_path_unset',
      ok: false,
      message: `${old}${setting} is not set, so containerd ignores ${hostsDir}${misplacedHint(plugins, layout)}: ${set}${legacyNote}`,
    };
  }
  if (legacy.length > 0) {
    return {
      ...base,
      configPath,
      state: 'legacy_mirrors_conflict',
      ok: false,
      message:
        `${old}${setting} is set together with the deprecated ${legacy.join(' and ')} in ${where}: containerd refuses ` +
        `this combination and does not load its CRI plugin; remove the deprecated tables (mirrors belong in hosts.toml) ${NEVER_EDITS}`,
    };
  }
  if (configPath.includes(':')) {
    return { ...base, configPath, state: 'config_path_list', ok: false, message: listMessage(old, setting, configPath, where, hostsDir) };
  }
  if (normalizeDir(configPath) !== normalizeDir(hostsDir)) {
    return {
      ...base,
      configPath,
      state: 'config_path_mismatch',
      ok: false,
      message:
        `${old}${setting} = "${configPath}" in ${where}, not the agent's hosts dir ${hostsDir}: ` +
        `${set}, or set the agent's hosts dir to "${configPath}"`,
    };
  }
  return {
    ...base,
    configPath,
    state: 'ok',
    ok: true,
    message: `${old}containerd reads hosts.toml files from ${hostsDir} (${setting} in ${where})`,
  };
}

// containerd 2.1+ pulls through the transfer service, which takes config_path as one literal directory:
// a list then matches nothing and every hosts.toml is silently ignored. containerd 1.x searches each
// element. The agent cannot tell which one runs, so a list is never `ok`.
function listMessage(old: string, setting: string, configPath: string, where: string, hostsDir: string): string {
  const dirs = configPath.split(':').filter((d) => d !== '');
  const index = dirs.findIndex((d) => normalizeDir(d) === normalizeDir(hostsDir));
  const position = index === -1 ? `does not include ${hostsDir}` : index === 0 ? `lists ${hostsDir} first` : `lists ${hostsDir} but not first`;
  return (
    `${old}${setting} = "${configPath}" in ${where} is a list and ${position}; containerd 1.x searches each directory, ` +
    `but containerd 2.x transfer-service pulls take the whole value as one directory and silently ignore every ` +
    `hosts.toml: set ${setting} = "${hostsDir}" (a single directory) ${NEVER_EDITS}`
  );
}

/** Deprecated CRI registry tables that containerd refuses next to config_path. */
function legacyTables(registry: TomlTable, layout: Layout): string[] {
  const found: string[] = [];
  const mirrors = registry['mirrors'];
  if (isTomlTable(mirrors) && Object.keys(mirrors).length > 0) found.push(`plugins.${pluginKey(layout.plugin)}.registry.mirrors`);
  const configs = registry['configs'];
  // containerd 1.x also refuses `configs.<host>.tls`; 2.x only the mirrors.
  if (layout.major === 1 && isTomlTable(configs) && Object.values(configs).some((c) => isTomlTable(c) && c['tls'] !== undefined)) {
    found.push(`plugins.${pluginKey(layout.plugin)}.registry.configs.<host>.tls`);
  }
  return found;
}

/** The last file that sets config_path for this layout: the one the admin has to edit. */
function fileSetting(files: readonly ConfigFile[], layout: Layout): string | undefined {
  for (let i = files.length - 1; i >= 0; i--) {
    const file = files[i] as ConfigFile;
    if (valueAt(file.doc, ['plugins', layout.plugin, 'registry', 'config_path']) !== undefined) return file.path;
  }
  return undefined;
}

/** A config_path written for another config version is ignored; say so, it is a common mistake. */
function misplacedHint(plugins: TomlTable, layout: Layout): string {
  for (const other of LAYOUTS) {
    if (other === layout) continue;
    const value = valueAt(plugins, [other.plugin, 'registry', 'config_path']);
    if (typeof value === 'string' && value !== '') {
      return ` (${settingPath(other)} = "${value}" is a version ${other.version} setting, ignored in a version ${layout.version} config)`;
    }
  }
  return '';
}

// containerd 1.x replaces a plugin's whole table with an import's; 2.x merges (and also reads version 2).
function mergeDifference(layout: Layout, files: readonly ConfigFile[], replaced: unknown): string[] {
  if (files.length < 2) return [];
  const merged = valueAt(mergedPlugins(files, true), [layout.plugin, 'registry', 'config_path']);
  if (merged === replaced) return [];
  return [
    `imports change config_path differently per containerd version: ${JSON.stringify(replaced ?? '')} under containerd 1.x ` +
      `(whole plugin tables replaced), ${JSON.stringify(merged ?? '')} under containerd 2.x (tables merged)`,
  ];
}

function normalizeDir(dir: string): string {
  return path.posix.resolve('/', dir);
}
