import { describe, expect, it } from 'vitest';
import { ConfigError } from './errors.ts';
import { parseConfig } from './load.ts';
import { parseImageReference, parsePlatform, parsePreload } from './preload.ts';
import { thrown } from '../../test/fixtures/thrown.ts';

const R = 'registry.corp.example:5000';
const HEX = 'a'.repeat(64);
const parse = (text: string) => parseConfig(text, '/etc/rpa/agent.toml', { baseDir: '/etc/rpa', env: {} });
const mirror = (lines: string) => `[[mirror]]\nregistry = "${R}"\nupstream = "http://r.virtual:5000"\n${lines}\n`;
const problem = (text: string): string => {
  const error = thrown(ConfigError, () => parse(text));
  return `${error.key}: ${error.problem}`;
};

describe('preload entries', () => {
  it.each([
    ['team/app:1.2', { repository: 'team/app', tag: '1.2' }],
    [`team/app@sha256:${HEX}`, { repository: 'team/app', digest: `sha256:${HEX}` }],
    [`team/app:1.2@sha256:${HEX}`, { repository: 'team/app', tag: '1.2', digest: `sha256:${HEX}` }],
    [`${R}/team/app:1.2`, { repository: 'team/app', tag: '1.2' }],
    ['app:latest', { repository: 'app', tag: 'latest' }],
  ])('%s', (image, expected) => {
    expect(parseImageReference(image, R)).toEqual({ image, ...expected });
  });

  it.each([
    ['team/app', 'name a tag or a digest'],
    ['Team/App:1', 'the repository must be lower-case path components'],
    ['other.example/team/app:1', "names registry other.example, not this mirror's"],
    ['team/app:-bad', 'invalid tag'],
    ['team/app@sha256:abc', 'the digest must be sha256:<64 lower-case hex digits>'],
    ['team/app@sha512:' + HEX, 'the digest must be sha256'],
  ])('refuses %s', (image, message) => {
    expect(() => parseImageReference(image, R)).toThrow(message);
  });

  it('takes tables with platforms, refuses duplicates, unknown keys and more than 100 images', () => {
    expect(parsePreload([{ image: 'a:1', platforms: ['linux/amd64', 'linux/arm/v7'] }], R)).toEqual([
      { image: 'a:1', repository: 'a', tag: '1', platforms: [{ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'arm', variant: 'v7' }] },
    ]);
    expect(() => parsePreload(['a:1', 'a:1'], R)).toThrow('[1]: a:1 is listed twice');
    expect(() => parsePreload([{ image: 'a:1', platform: ['linux/amd64'] }], R)).toThrow('[0]: unknown key platform');
    expect(() => parsePreload([{ image: 'a:1', platforms: [] }], R)).toThrow('[0].platforms: expected a non-empty array');
    expect(() => parsePreload(Array.from({ length: 101 }, (_, i) => `a:${i}`), R)).toThrow('at most 100 images per mirror');
    expect(() => parsePreload('a:1', R)).toThrow('expected an array of image references, got string');
    expect(() => parsePlatform('linux')).toThrow('expected os/architecture[/variant]');
  });
});

describe('preload, mode and budget keys', () => {
  it('parses them on a mirror, with defaults', () => {
    const config = parse(mirror('preload = ["team/app:1.2", { image = "base@sha256:' + HEX + '", platforms = ["linux/arm64"] }]\npreload_interval = "5m"\nmax_bytes_per_second = "20MiB"\nmax_fetches = 4'));
    const m = config.mirrors[0];
    expect(m?.preload.map((p) => p.image)).toEqual(['team/app:1.2', `base@sha256:${HEX}`]);
    expect(m?.preloadIntervalMs).toBe(300_000);
    expect(m?.budget).toEqual({ bytesPerSecond: 20 * 1024 * 1024, maxFetches: 4 });
    expect(m?.mode).toBe('online');
    expect(config.pinMaxBytes).toBe(10 * 1024 ** 3);
  });

  it('an offline mirror needs no upstream and cannot preload', () => {
    const config = parse(`[[mirror]]\nregistry = "${R}"\nmode = "offline"\n`);
    expect(config.mirrors[0]?.mode).toBe('offline');
    expect(problem(`[[mirror]]\nregistry = "${R}"\nmode = "offline"\npreload = ["a:1"]\n`)).toContain('mirror[0].preload: an offline mirror never contacts upstream');
    expect(problem(mirror('mode = "local"'))).toContain('mirror[0].mode: must be "online"');
    expect(problem(`[[mirror]]\nregistry = "${R}"\n`)).toBe('mirror[0].upstream: required key is missing');
  });

  it('refuses bad values with the key named', () => {
    expect(problem(mirror('preload_interval = "1s"'))).toContain('mirror[0].preload_interval: must be at least 10s');
    expect(problem(mirror('max_bytes_per_second = "1KiB"'))).toContain('mirror[0].max_bytes_per_second: must be at least 64KiB');
    expect(problem(mirror('max_fetches = 0'))).toContain('mirror[0].max_fetches: must be from 1 to 1000');
    expect(problem(mirror('preload = ["x/y"]'))).toContain('mirror[0].preload: [0]: x/y: name a tag or a digest');
    expect(problem(`cache_max_bytes = "1GiB"\npin_max_bytes = "2GiB"\n${mirror('')}`)).toContain('pin_max_bytes: must not exceed cache_max_bytes');
    expect(problem(`[connectivity_proxy]\nurl = "http://cp:20003"\nmax_bytes_per_second = "1B"\n${mirror('')}`)).toContain('connectivity_proxy.max_bytes_per_second: must be at least 64KiB');
    expect(parse(`[connectivity_proxy]\nurl = "http://cp:20003"\nmax_bytes_per_second = "50MiB"\nmax_fetches = 16\n${mirror('')}`).connectivityProxy?.budget).toEqual({ bytesPerSecond: 50 * 1024 * 1024, maxFetches: 16 });
  });
});
