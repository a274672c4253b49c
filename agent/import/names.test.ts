import { describe, expect, it } from 'vitest';
import { isImportCommand, parseImportCommandLine } from './command.ts';
import { parseImageName, resolveTargets } from './names.ts';

const REGISTRY = 'registry.corp.example:5000';
const registries = { names: [REGISTRY, 'docker.io'], source: '/etc/agent.toml' };

describe('image names', () => {
  it('parses full and familiar references', () => {
    const full = { familiar: false, what: '--name' };
    const familiar = { familiar: true, what: 'RepoTags' };
    expect(parseImageName(`${REGISTRY}/team/app:1.2`, full)).toEqual({ registry: REGISTRY, repository: 'team/app', tag: '1.2' });
    expect(parseImageName(`${REGISTRY}/team/app`, full)).toEqual({ registry: REGISTRY, repository: 'team/app' });
    expect(parseImageName('localhost/app:1', full)).toEqual({ registry: 'localhost', repository: 'app', tag: '1' });
    expect(parseImageName('Registry.Corp.Example/app:1', full)).toEqual({ registry: 'registry.corp.example', repository: 'app', tag: '1' });
    expect(parseImageName('team/app:1', full)).toBeUndefined();
    expect(parseImageName('alpine:3.20', familiar)).toEqual({ registry: 'docker.io', repository: 'library/alpine', tag: '3.20' });
    expect(parseImageName('index.docker.io/team/app:1', full)).toEqual({ registry: 'docker.io', repository: 'team/app', tag: '1' });
    expect(() => parseImageName(`${REGISTRY}/team/app@sha256:${'a'.repeat(64)}`, full)).toThrow(/digest reference: an import needs a tag/);
    expect(() => parseImageName(`${REGISTRY}/Team/App:1`, full)).toThrow(/invalid repository "Team\/App"/);
    expect(() => parseImageName(`${REGISTRY}/team/app:-x`, full)).toThrow(/invalid tag "-x"/);
  });

  it('resolves targets: --name, ref.name as a tag or a full reference, RepoTags; registries must be configured', () => {
    const name = { registry: REGISTRY, repository: 'team/app' };
    expect(resolveTargets('entry 1', { refName: '1', references: [] }, name, registries)).toEqual([{ ...name, tag: '1' }]);
    expect(resolveTargets('entry 1', { refName: '1', references: [] }, { ...name, tag: '2' }, registries)).toEqual([{ ...name, tag: '2' }]);
    expect(resolveTargets('entry 1', { refName: `${REGISTRY}/x/y:3`, references: [] }, undefined, registries)).toEqual([{ registry: REGISTRY, repository: 'x/y', tag: '3' }]);
    expect(resolveTargets('entry 1', { refName: '3.20', references: ['docker.io/library/alpine:3.20'] }, undefined, registries)).toEqual([
      { registry: 'docker.io', repository: 'library/alpine', tag: '3.20' },
    ]);
    expect(() => resolveTargets('entry 1', { refName: '1', references: [] }, undefined, registries)).toThrow(
      /entry 1: its ref.name "1" is only a tag; give the registry and repository with --name REGISTRY\/REPOSITORY/,
    );
    expect(() => resolveTargets('entry 1', { references: [] }, undefined, registries)).toThrow(/has no name/);
    expect(() => resolveTargets('entry 1', { references: [] }, name, registries)).toThrow(/names no tag: give one with --name registry.corp.example:5000\/team\/app:TAG/);
    expect(() => resolveTargets('entry 1', { refName: 'other.example/app:1', references: [] }, undefined, registries)).toThrow(
      /other.example\/app:1: registry other.example is not a configured \[\[mirror\]\] of \/etc\/agent.toml \(configured: registry.corp.example:5000, docker.io\)/,
    );
  });
});

describe('import command line', () => {
  it('is recognised after --config too, and parsed with options before or after SOURCE', () => {
    expect(isImportCommand(['import', 'x'])).toBe(true);
    expect(isImportCommand(['--config', 'a.toml', 'import', 'x'])).toBe(true);
    expect(isImportCommand(['--config=a.toml', 'import'])).toBe(true);
    expect(isImportCommand(['--config', 'import'])).toBe(false);
    expect(isImportCommand(['cleanup', '--config', 'a.toml'])).toBe(false);
    expect(parseImportCommandLine(['import', '--config', 'a.toml', 'dir', `--name=${REGISTRY}/team/app:1`, '--platform', 'linux/arm64/v8', '--platform=linux/amd64'])).toEqual({
      configFile: 'a.toml',
      source: 'dir',
      name: { registry: REGISTRY, repository: 'team/app', tag: '1' },
      platforms: [
        { os: 'linux', architecture: 'arm64', variant: 'v8' },
        { os: 'linux', architecture: 'amd64' },
      ],
    });
    expect(parseImportCommandLine(['import', '--help'])).toBeUndefined();
  });

  it('refuses what it cannot use', () => {
    expect(() => parseImportCommandLine(['import', 'dir'])).toThrow(/import needs --config FILE/);
    expect(() => parseImportCommandLine(['import', '-c', 'a.toml'])).toThrow(/import needs a SOURCE/);
    expect(() => parseImportCommandLine(['import', '-c', 'a.toml', 'a', 'b'])).toThrow(/one SOURCE, got 2/);
    expect(() => parseImportCommandLine(['import', '-c', 'a.toml', '--name', 'team/app:1', 'dir'])).toThrow(/names no registry/);
    expect(() => parseImportCommandLine(['import', '-c', 'a.toml', '--platform', 'linux', 'dir'])).toThrow(/invalid platform "linux"/);
    expect(() => parseImportCommandLine(['import', '-c', 'a.toml', '--verbose', 'dir'])).toThrow(/unknown option: --verbose/);
  });
});
