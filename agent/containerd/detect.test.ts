import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { detectContainerd } from './detect.ts';
import { elementMatcher, globPaths } from './glob.ts';

const HOSTS_DIR = '/etc/containerd/certs.d';
const testdata = (...parts: string[]): string => path.join(import.meta.dirname, 'testdata', ...parts);

const V2 = 'plugins."io.containerd.grpc.v1.cri".registry.config_path';
const V3 = 'plugins."io.containerd.cri.v1.images".registry.config_path';
const NEVER = 'and restart containerd (the agent never edits it)';

describe('detectContainerd on sample configs', () => {
  it('containerd 1.6, version 2, config_path set (trailing slash normalised)', async () => {
    const file = testdata('containerd-1.6', 'config.toml');
    expect(await detectContainerd(file, HOSTS_DIR)).toEqual({
      state: 'ok',
      ok: true,
      containerdMajor: 1,
      configVersion: 2,
      configPath: '/etc/containerd/certs.d/',
      configFiles: [file],
      warnings: [],
      message: `containerd reads hosts.toml files from ${HOSTS_DIR} (${V2} in ${file})`,
    });
  });

  it('containerd 1.7, version 2, config_path from a relative glob import', async () => {
    const file = testdata('containerd-1.7-imports', 'config.toml');
    const dropIn = testdata('containerd-1.7-imports', 'conf.d', '10-cri.toml');
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict).toMatchObject({ state: 'ok', ok: true, containerdMajor: 1, configVersion: 2, configFiles: [file, dropIn], warnings: [] });
    expect(verdict.message).toBe(`containerd reads hosts.toml files from ${HOSTS_DIR} (${V2} in ${dropIn})`);
  });

  it('containerd 1.7: a drop-in re-declaring the CRI plugin wipes config_path (1.x replaces plugin tables)', async () => {
    const file = testdata('containerd-1.7-import-replaces', 'config.toml');
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict).toMatchObject({ state: 'config_path_unset', ok: false, containerdMajor: 1, configVersion: 2 });
    expect(verdict.configFiles).toEqual([file, testdata('containerd-1.7-import-replaces', 'conf.d', '50-nvidia.toml')]);
    expect(verdict.warnings).toEqual([
      'imports change config_path differently per containerd version: "" under containerd 1.x (whole plugin tables replaced), ' +
        '"/etc/containerd/certs.d" under containerd 2.x (tables merged)',
    ]);
  });

  it('containerd 2.0, version 3', async () => {
    const file = testdata('containerd-2.0', 'config.toml');
    expect(await detectContainerd(file, HOSTS_DIR)).toEqual({
      state: 'ok',
      ok: true,
      containerdMajor: 2,
      configVersion: 3,
      configPath: HOSTS_DIR,
      configFiles: [file],
      warnings: [],
      message: `containerd reads hosts.toml files from ${HOSTS_DIR} (${V3} in ${file})`,
    });
  });

  it('containerd 2.2, version 3 with a colon list: never ok, says why', async () => {
    const file = testdata('containerd-2.2-list', 'config.toml');
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict).toMatchObject({
      state: 'config_path_list',
      ok: false,
      containerdMajor: 2,
      configVersion: 3,
      configPath: '/etc/containerd/certs.d:/etc/docker/certs.d',
    });
    expect(verdict.message).toBe(
      `${V3} = "/etc/containerd/certs.d:/etc/docker/certs.d" in ${file} is a list and lists ${HOSTS_DIR} first; ` +
        'containerd 1.x searches each directory, but containerd 2.x transfer-service pulls take the whole value as one ' +
        `directory and silently ignore every hosts.toml: set ${V3} = "${HOSTS_DIR}" (a single directory) ${NEVER}`,
    );
  });

  it('a list without the hosts dir says so', async () => {
    const verdict = await detectContainerd(testdata('containerd-2.2-list', 'config.toml'), '/var/lib/agent/certs.d');
    expect(verdict.state).toBe('config_path_list');
    expect(verdict.message).toContain('is a list and does not include /var/lib/agent/certs.d;');
  });

  it('legacy mirrors together with config_path', async () => {
    const file = testdata('legacy-mirrors', 'config.toml');
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict).toMatchObject({ state: 'legacy_mirrors_conflict', ok: false, containerdMajor: 1, configPath: HOSTS_DIR });
    expect(verdict.message).toBe(
      `${V2} is set together with the deprecated plugins."io.containerd.grpc.v1.cri".registry.mirrors in ${file}: ` +
        'containerd refuses this combination and does not load its CRI plugin; remove the deprecated tables ' +
        `(mirrors belong in hosts.toml) ${NEVER}`,
    );
  });

  it('config_path empty (containerd 1.6 default)', async () => {
    const file = testdata('unset', 'config.toml');
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict).toMatchObject({ state: 'config_path_unset', ok: false, containerdMajor: 1, configVersion: 2 });
    expect(verdict.configPath).toBeUndefined();
    expect(verdict.message).toBe(`${V2} is not set, so containerd ignores ${HOSTS_DIR}: set ${V2} = "${HOSTS_DIR}" in ${file} ${NEVER}`);
  });

  it('config_path pointing elsewhere', async () => {
    const file = testdata('mismatch', 'config.toml');
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict).toMatchObject({ state: 'config_path_mismatch', ok: false, configPath: '/etc/docker/certs.d' });
    expect(verdict.message).toBe(
      `${V2} = "/etc/docker/certs.d" in ${file}, not the agent's hosts dir ${HOSTS_DIR}: ` +
        `set ${V2} = "${HOSTS_DIR}" in ${file} ${NEVER}, or set the agent's hosts dir to "/etc/docker/certs.d"`,
    );
  });

  it('broken TOML', async () => {
    const file = testdata('broken', 'config.toml');
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict).toMatchObject({ state: 'config_invalid', ok: false });
    expect(verdict.message).toMatch(new RegExp(`^containerd config ${escape(file)} is invalid \\(invalid TOML at line 4, column \\d+: .*\\); containerd cannot start with it either$`));
  });

  it('missing file: built-in defaults', async () => {
    const file = testdata('does-not-exist', 'config.toml');
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict).toEqual({
      state: 'config_not_found',
      ok: false,
      configFiles: [],
      warnings: [],
      message:
        `no containerd config at ${file}: containerd runs on built-in defaults, where config_path is unset (containerd 1.x) ` +
        'or "/etc/containerd/certs.d:/etc/docker/certs.d", a list that transfer-service pulls ignore (containerd 2.x); ' +
        `create ${file} with version = 3 and ${V3} = "${HOSTS_DIR}" (version = 2 and ${V2} for containerd 1.x) ${NEVER}`,
    });
  });

  it('version 1 (no version line): old layout plugins.cri', async () => {
    const file = testdata('version1', 'config.toml');
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict).toMatchObject({ state: 'ok', ok: true, containerdMajor: 1, configVersion: 1, configPath: HOSTS_DIR });
    expect(verdict.message).toBe(
      `old config version 1 (containerd 1.x); containerd reads hosts.toml files from ${HOSTS_DIR} (plugins.cri.registry.config_path in ${file})`,
    );
  });

  it('version 3 with config_path under the old plugin id: unset, with a hint', async () => {
    const file = testdata('misplaced-v3', 'config.toml');
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict).toMatchObject({ state: 'config_path_unset', containerdMajor: 2, configVersion: 3 });
    expect(verdict.message).toBe(
      `${V3} is not set, so containerd ignores ${HOSTS_DIR} (${V2} = "${HOSTS_DIR}" is a version 2 setting, ignored in a version 3 config): ` +
        `set ${V3} = "${HOSTS_DIR}" in ${file} ${NEVER}`,
    );
  });
});

describe('detectContainerd edge cases', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'detect-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reports an unreadable config', async () => {
    const verdict = await detectContainerd(dir, HOSTS_DIR); // a directory cannot be read as a file
    expect(verdict.state).toBe('config_unreadable');
    expect(verdict.message).toMatch(/^cannot read containerd config /);
  });

  it('reports a missing explicit import as unreadable', async () => {
    const file = path.join(dir, 'config.toml');
    await writeFile(file, 'version = 2\nimports = ["missing.toml"]\n');
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict.state).toBe('config_unreadable');
    expect(verdict.message).toContain(`imported file ${path.join(dir, 'missing.toml')} does not exist`);
  });

  it('merges version 3 imports table by table, later files winning, nested imports followed once', async () => {
    const file = path.join(dir, 'config.toml');
    await mkdir(path.join(dir, 'conf.d'));
    await writeFile(file, `version = 3\nimports = ["conf.d/*.toml", "conf.d/*.toml"]\n[plugins."io.containerd.cri.v1.images".registry]\nconfig_path = "/elsewhere"\n`);
    await writeFile(path.join(dir, 'conf.d', '10-a.toml'), `version = 3\nimports = ["../config.toml", "${path.join(dir, 'extra', '*.toml')}"]\n[plugins."io.containerd.cri.v1.images"]\nsnapshotter = "overlayfs"\n`);
    await writeFile(path.join(dir, 'conf.d', '20-b.toml'), `version = 3\n[plugins."io.containerd.cri.v1.images".registry]\nconfig_path = "${HOSTS_DIR}"\n`);
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict).toMatchObject({ state: 'ok', configPath: HOSTS_DIR, warnings: [] });
    expect(verdict.configFiles).toEqual([file, path.join(dir, 'conf.d', '10-a.toml'), path.join(dir, 'conf.d', '20-b.toml')]);
  });

  it('skips ** imports with a warning', async () => {
    const file = path.join(dir, 'config.toml');
    await writeFile(file, `version = 3\nimports = ["/etc/containerd/**/x.toml"]\n[plugins."io.containerd.cri.v1.images".registry]\nconfig_path = "${HOSTS_DIR}"\n`);
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict.state).toBe('ok');
    expect(verdict.warnings).toEqual([`import "/etc/containerd/**/x.toml" in ${file} uses "**" and was not evaluated`]);
  });

  it.each([
    ['version = 4', /unsupported config version 4/],
    ['version = 2\nimports = "x"', /"imports" must be an array of strings/],
    ['version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = 1', /config_path must be a string/],
  ])('reports %s as invalid', async (text, message) => {
    const file = path.join(dir, 'config.toml');
    await writeFile(file, text);
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict.state).toBe('config_invalid');
    expect(verdict.message).toMatch(message);
  });

  it('flags configs.<host>.tls next to config_path for containerd 1.x', async () => {
    const file = path.join(dir, 'config.toml');
    await writeFile(
      file,
      `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "${HOSTS_DIR}"\n[plugins."io.containerd.grpc.v1.cri".registry.configs."r.example".tls]\ninsecure_skip_verify = true\n`,
    );
    const verdict = await detectContainerd(file, HOSTS_DIR);
    expect(verdict.state).toBe('legacy_mirrors_conflict');
    expect(verdict.message).toContain('registry.configs.<host>.tls');
  });
});

describe('globPaths', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'glob-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('matches like Go filepath.Glob: sorted, dot files included, across directories', async () => {
    for (const name of ['b.toml', 'a.toml', '.hidden.toml', 'c.txt']) await writeFile(path.join(dir, name), '');
    await mkdir(path.join(dir, 'd1'));
    await mkdir(path.join(dir, 'd2'));
    await writeFile(path.join(dir, 'd1', 'x.toml'), '');
    await writeFile(path.join(dir, 'd2', 'x.toml'), '');
    expect(await globPaths(path.join(dir, '*.toml'))).toEqual(['.hidden.toml', 'a.toml', 'b.toml'].map((n) => path.join(dir, n)));
    expect(await globPaths(path.join(dir, 'd*', 'x.toml'))).toEqual([path.join(dir, 'd1', 'x.toml'), path.join(dir, 'd2', 'x.toml')]);
    expect(await globPaths(path.join(dir, 'missing', '*.toml'))).toEqual([]);
  });

  it('supports ? and character classes', () => {
    expect(elementMatcher('?[a-c].toml').test('xb.toml')).toBe(true);
    expect(elementMatcher('?[a-c].toml').test('xd.toml')).toBe(false);
    expect(elementMatcher('[^a]*').test('abc')).toBe(false);
    expect(elementMatcher('a.b').test('axb')).toBe(false);
    expect(() => elementMatcher('[abc')).toThrow(/unterminated/);
  });
});

function escape(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

describe('detectContainerd in a container (host_root)', () => {
  let host: string;
  beforeEach(async () => {
    host = await mkdtemp(path.join(os.tmpdir(), 'hostroot-'));
  });
  afterEach(async () => {
    await rm(host, { recursive: true, force: true });
  });

  it('reads absolute imports under the node root mounted at host_root', async () => {
    await mkdir(path.join(host, 'etc/containerd/conf.d'), { recursive: true });
    await writeFile(path.join(host, 'etc/containerd/config.toml'), 'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n');
    await writeFile(
      path.join(host, 'etc/containerd/conf.d/registry.toml'),
      'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n',
    );
    const configFile = path.join(host, 'etc/containerd/config.toml');
    const mounted = await detectContainerd(configFile, '/etc/containerd/certs.d', host);
    expect(mounted.state).toBe('ok');
    // Without host_root the import is looked up in the container's own /etc and not found.
    const unmounted = await detectContainerd(configFile, '/etc/containerd/certs.d');
    expect(unmounted.state).not.toBe('ok');
  });
});
