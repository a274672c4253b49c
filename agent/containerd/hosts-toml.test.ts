import { describe, expect, it } from 'vitest';
import {
  HostsTomlError,
  TomlDateTime,
  defaultServerFor,
  mergeAgentHost,
  parseHostsToml,
  renderHostsToml,
  sameHostUrl,
} from './hosts-toml.ts';
import type { HostEntry, HostsToml } from './hosts-toml.ts';

const DOCS_EXAMPLE = `server = "https://registry-1.docker.io"    # upstream

[host."https://mirror.registry"]
  capabilities = ["pull"]
  ca = "/etc/certs/mirror.pem"
  skip_verify = false
  [host."https://mirror.registry".header]
    x-custom-2 = ["value1", "value2"]

[host."https://mirror-bak.registry/us"]
  capabilities = ["pull"]
  skip_verify = true

[host."http://mirror.registry"]
  capabilities = ["pull"]

[host."https://test-1.registry"]
  capabilities = ["pull", "resolve", "push"]
  ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"],["/etc/certs/client.pem", ""]]

[host."https://test-2.registry"]
  client = "/etc/certs/client.pem"

[host."https://non-compliant-mirror.registry/v2/upstream"]
  capabilities = ["pull"]
  override_path = true
`;

describe('parseHostsToml', () => {
  it('reads every documented key, hosts in file order', () => {
    expect(parseHostsToml(DOCS_EXAMPLE)).toEqual({
      server: 'https://registry-1.docker.io',
      hosts: [
        { url: 'https://mirror.registry', capabilities: ['pull'], ca: '/etc/certs/mirror.pem', skipVerify: false, header: { 'x-custom-2': ['value1', 'value2'] } },
        { url: 'https://mirror-bak.registry/us', capabilities: ['pull'], skipVerify: true },
        { url: 'http://mirror.registry', capabilities: ['pull'] },
        {
          url: 'https://test-1.registry',
          capabilities: ['pull', 'resolve', 'push'],
          ca: ['/etc/certs/test-1-ca.pem', '/etc/certs/special.pem'],
          client: [
            ['/etc/certs/client.cert', '/etc/certs/client.key'],
            ['/etc/certs/client.pem', ''],
          ],
        },
        { url: 'https://test-2.registry', client: '/etc/certs/client.pem' },
        { url: 'https://non-compliant-mirror.registry/v2/upstream', capabilities: ['pull'], overridePath: true },
      ],
    });
  });

  it('keeps host order even when it is not alphabetical and a sub-table comes first', () => {
    const text = ['[host."https://z.example"]', '[host."https://b.example".header]', 'x = "1"', '[host."https://b.example"]', '[host."http://a.example:5000"]'].join('\n');
    expect(parseHostsToml(text).hosts.map((h) => h.url)).toEqual(['https://z.example', 'https://b.example', 'http://a.example:5000']);
  });

  it('keeps unknown keys with their TOML types, at both levels', () => {
    const text = [
      'dial_timeout = "1s"',
      'proxy = "http://proxy:8080"',
      'retries = 3',
      'ratio = 1.0',
      'since = 2024-05-01T10:00:00+02:00',
      '[future]',
      'nested = { a = [1, 2] }',
      '[[future.rules]]',
      'match = "x"',
      '[host."https://m.example"]',
      'dial_timeout = "500ms"',
      '[host."https://m.example".extra_table]',
      'on = true',
    ].join('\n');
    const model = parseHostsToml(text);
    expect(model.extra).toEqual({
      dial_timeout: '1s',
      proxy: 'http://proxy:8080',
      retries: 3n,
      ratio: 1,
      since: new TomlDateTime('offset-date-time', '2024-05-01T10:00:00+02:00'),
      future: { nested: { a: [1n, 2n] }, rules: [{ match: 'x' }] },
    });
    expect(model.hosts[0]?.extra).toEqual({ dial_timeout: '500ms', extra_table: { on: true } });
    expect(parseHostsToml(renderHostsToml(model))).toEqual(model);
  });

  it('renders unknown keys back in TOML syntax', () => {
    const model = parseHostsToml('retries = 3\nratio = 1.0\nwhen = 1979-05-27\n[t]\nk = "v"\n');
    expect(renderHostsToml(model)).toBe('retries = 3\nratio = 1.0\nwhen = 1979-05-27\n\n[t]\n  k = "v"\n');
  });

  it('throws HostsTomlError with the position on invalid TOML', () => {
    const error = catchError(() => parseHostsToml('server = "https://x\n'));
    expect(error).toBeInstanceOf(HostsTomlError);
    expect((error as HostsTomlError).line).toBe(1);
    expect((error as HostsTomlError).message).toMatch(/^invalid TOML at line 1, column \d+: /);
  });

  it('rejects duplicate host tables, as containerd does', () => {
    expect(() => parseHostsToml('[host."https://a"]\n[host."https://a"]\n')).toThrow(HostsTomlError);
  });

  it.each([
    ['server = 5', /"server" \(top level\) must be a string, got an integer/],
    ['capabilities = "pull"', /"capabilities" \(top level\) must be an array of strings/],
    ['skip_verify = "yes"', /"skip_verify" \(top level\) must be a boolean, got a string/],
    ['host = "x"', /"host" \(top level\) must be a table/],
    ['[host."https://a"]\nca = 1', /"ca" \(\[host\."https:\/\/a"\]\) must be a string or an array of strings/],
    ['[header]\nx = 1', /"x" \(top level header\) must be a string or an array of strings/],
    ['[host."https://a"]\nclient = [1]', /"client"/],
  ])('rejects known keys with types containerd refuses: %s', (text, message) => {
    expect(() => parseHostsToml(text)).toThrow(message);
  });
});

describe('renderHostsToml', () => {
  it('renders sections in a fixed order with a comment header', () => {
    const model: HostsToml = {
      server: 'https://registry.example',
      skipVerify: true,
      ca: 'ca.crt',
      header: { authorization: 'Basic x' },
      hosts: [
        { url: 'http://127.0.0.1:5050', capabilities: ['pull', 'resolve'] },
        { url: 'https://mirror.example', capabilities: ['pull'], overridePath: true, header: { 'X-Multi': ['a', 'b'] } },
      ],
    };
    expect(renderHostsToml(model, { header: 'Managed by test\n\nsecond line' })).toBe(
      [
        '# Managed by test',
        '#',
        '# second line',
        '',
        'server = "https://registry.example"',
        'ca = "ca.crt"',
        'skip_verify = true',
        '',
        '[header]',
        '  authorization = "Basic x"',
        '',
        '[host."http://127.0.0.1:5050"]',
        '  capabilities = ["pull", "resolve"]',
        '',
        '[host."https://mirror.example"]',
        '  capabilities = ["pull"]',
        '  override_path = true',
        '  [host."https://mirror.example".header]',
        '    X-Multi = ["a", "b"]',
        '',
      ].join('\n'),
    );
  });

  it('escapes strings as TOML basic strings', () => {
    const model: HostsToml = { server: 'a"b\\c\u0001d\ne\tf\u007fé☃😀', hosts: [] };
    expect(renderHostsToml(model)).toBe('server = "a\\"b\\\\c\\u0001d\\u000Ae\\u0009f\\u007Fé☃😀"\n');
  });

  it('renders an empty model as an empty file', () => {
    expect(renderHostsToml({ hosts: [] })).toBe('');
  });

  it('refuses what TOML cannot hold', () => {
    expect(() => renderHostsToml({ server: 'x\uD800', hosts: [] })).toThrow(HostsTomlError);
    expect(() => renderHostsToml({ hosts: [], extra: { bad: null } })).toThrow(HostsTomlError);
    expect(() => renderHostsToml({ hosts: [], extra: { server: 'dup' } })).toThrow(/modelled key/);
    expect(() => renderHostsToml({ hosts: [] }, { header: 'a\u0000b' })).toThrow(HostsTomlError);
  });

  it('round-trips many generated models exactly', () => {
    const random = seededRandom(20240501);
    for (let i = 0; i < 400; i++) {
      const model = randomModel(random);
      const text = renderHostsToml(model, { header: 'Managed by registry-proxy-agent: test' });
      expect(parseHostsToml(text), text).toEqual(model);
    }
  });
});

describe('mergeAgentHost', () => {
  const agent = 'http://127.0.0.1:5050';

  it('creates a file with the default server when there is none', () => {
    expect(mergeAgentHost(agent, undefined, 'https://registry-1.docker.io')).toEqual({
      server: 'https://registry-1.docker.io',
      hosts: [{ url: agent, capabilities: ['pull', 'resolve'] }],
    });
    expect(mergeAgentHost(agent, undefined, undefined)).toEqual({ hosts: [{ url: agent, capabilities: ['pull', 'resolve'] }] });
  });

  it('puts the agent first and keeps everything of the admin, including a missing server', () => {
    const admin = parseHostsToml('ca = "corp.pem"\ndial_timeout = "2s"\n[host."https://a"]\ncapabilities = ["pull"]\n[host."https://b"]\n');
    expect(mergeAgentHost(agent, admin, 'https://ignored.example')).toEqual({
      ca: 'corp.pem',
      extra: { dial_timeout: '2s' },
      hosts: [{ url: agent, capabilities: ['pull', 'resolve'] }, { url: 'https://a', capabilities: ['pull'] }, { url: 'https://b' }],
    });
  });

  it('drops the admin entry for the agent URL instead of listing it twice', () => {
    const admin = parseHostsToml('[host."http://127.0.0.1:5050/"]\ncapabilities = ["pull"]\n[host."https://a"]\n');
    const merged = mergeAgentHost(agent, admin, undefined);
    expect(merged.hosts.map((h) => h.url)).toEqual([agent, 'https://a']);
    expect(() => parseHostsToml(renderHostsToml(merged))).not.toThrow();
  });

  it('compares host URLs by scheme, host, port and path', () => {
    expect(sameHostUrl('http://127.0.0.1:5050', 'HTTP://127.0.0.1:5050/')).toBe(true);
    expect(sameHostUrl('https://a.example:443/v2', 'https://A.example/v2/')).toBe(true);
    expect(sameHostUrl('http://127.0.0.1:5050', 'https://127.0.0.1:5050')).toBe(false);
    expect(sameHostUrl('http://127.0.0.1:5050', 'http://127.0.0.1:5051')).toBe(false);
  });
});

describe('defaultServerFor', () => {
  it.each([
    ['docker.io', 'https://registry-1.docker.io'],
    ['ghcr.io', 'https://ghcr.io'],
    ['registry.corp.example:5000', 'https://registry.corp.example:5000'],
    ['_default', undefined],
  ])('%s → %s', (registry, server) => {
    expect(defaultServerFor(registry)).toBe(server);
  });
});

function catchError(run: () => unknown): unknown {
  try {
    run();
  } catch (err) {
    return err;
  }
  throw new Error('expected an error');
}

type Random = () => number;

// Deterministic so a failure reproduces; mulberry32.
function seededRandom(seed: number): Random {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const TRICKY = ['', '"', '\\', '\\"', "'", '\n', '\r\n', '\t', '\u0000', '\u001f', '\u007f', 'é', '☃', '😀', '#', '=', '[', ']', '.', ' ', 'a b', '\\u0041', '"""', "'''"];

function pick<T>(random: Random, items: readonly T[]): T {
  return items[Math.floor(random() * items.length)] as T;
}

function randomString(random: Random): string {
  let s = '';
  const length = Math.floor(random() * 6);
  for (let i = 0; i < length; i++) s += random() < 0.5 ? pick(random, TRICKY) : String.fromCharCode(97 + Math.floor(random() * 26));
  return s;
}

function maybe<T>(random: Random, make: () => T): T | undefined {
  return random() < 0.4 ? make() : undefined;
}

function randomStrings(random: Random): string[] {
  return Array.from({ length: Math.floor(random() * 3) }, () => randomString(random));
}

function randomSettings(random: Random): Omit<HostEntry, 'url'> {
  const settings: Omit<HostEntry, 'url'> = {};
  const capabilities = maybe(random, () => randomStrings(random));
  if (capabilities) settings.capabilities = capabilities;
  const ca = maybe(random, () => (random() < 0.5 ? randomString(random) : randomStrings(random)));
  if (ca !== undefined) settings.ca = ca;
  const client = maybe(random, () => {
    const r = random();
    if (r < 0.33) return randomString(random);
    if (r < 0.66) return randomStrings(random);
    return [[randomString(random), randomString(random)]];
  });
  if (client !== undefined) settings.client = client;
  const skipVerify = maybe(random, () => random() < 0.5);
  if (skipVerify !== undefined) settings.skipVerify = skipVerify;
  const overridePath = maybe(random, () => random() < 0.5);
  if (overridePath !== undefined) settings.overridePath = overridePath;
  const header = maybe(random, () =>
    Object.fromEntries(Array.from({ length: 1 + Math.floor(random() * 3) }, () => [`x-${randomString(random)}`, random() < 0.5 ? randomString(random) : randomStrings(random)])),
  );
  if (header) settings.header = header;
  const extra = maybe(random, () => ({
    [`k${randomString(random)}`]: randomString(random),
    count: BigInt(Math.floor(random() * 1000) - 500),
    ratio: random() < 0.5 ? 1 : -0.25,
    table: { [randomString(random)]: randomString(random), deeper: { list: [1n, 'two', { three: true }] } },
    rules: [{ a: randomString(random) }, { b: [] }],
    at: new TomlDateTime('local-time', '07:32:00'),
  }));
  if (extra) settings.extra = extra;
  return settings;
}

function randomModel(random: Random): HostsToml {
  const model: HostsToml = { ...randomSettings(random), hosts: [] };
  const server = maybe(random, () => `https://${randomString(random)}`);
  if (server !== undefined) model.server = server;
  const urls = new Set<string>();
  const count = Math.floor(random() * 4);
  for (let i = 0; i < count; i++) urls.add(`https://h${i}.${randomString(random)}`);
  model.hosts = [...urls].map((url) => ({ url, ...randomSettings(random) }));
  return model;
}
