import { X509Certificate } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTestCa } from '../../test/fixtures/tls-registry.ts';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import { ConfigError } from './errors.ts';
import { loadConfig, parseConfig, parseMirrorTable } from './load.ts';
import { thrown } from '../../test/fixtures/thrown.ts';

// ca_file and realm_map: each validation error names the config file, the key and the problem.

const CP = '[connectivity_proxy]\nurl = "http://cp.example:20003"\n';
const DIRECT = '[[mirror]]\nregistry = "registry.corp.example"\nupstream = "https://registry.corp.example"\n';
const CP_MIRROR = '[[mirror]]\nregistry = "registry.corp.example"\nupstream = "http://registry.virtual:5000"\nroute = "connectivity-proxy"\n';

const errorOf = (run: () => unknown): ConfigError => thrown(ConfigError, run);

describe('ca_file', () => {
  let dir: string;
  let file: string;
  let caPem: string;

  beforeAll(async () => {
    dir = await makeTempDir('rpa-config-ca');
    await mkdir(join(dir, 'certs'));
    const ca = await makeTestCa(join(dir, 'certs'));
    caPem = await readFile(ca.caFile, 'utf8');
    // A bundle of two: the CA and, as admins do, another certificate (openssl's text around it is allowed).
    const leaf = await readFile(ca.certFile, 'utf8');
    await writeFile(join(dir, 'certs', 'bundle.pem'), `# corp roots\nsubject=CN=rpa test CA\n${caPem}\n${leaf}`);
    await writeFile(join(dir, 'certs', 'key-and-cert.pem'), `${await readFile(ca.keyFile, 'utf8')}${leaf}`);
    await writeFile(join(dir, 'certs', 'notes.txt'), 'the CA is on the wiki\n');
    await writeFile(join(dir, 'certs', 'ca.der'), new X509Certificate(caPem).raw);
    await writeFile(join(dir, 'certs', 'broken.pem'), '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n');
    await writeFile(join(dir, 'certs', 'empty.pem'), '');
    file = join(dir, 'agent.toml');
  });

  afterAll(async () => {
    if (dir) await removeTempDir(dir);
  });

  const parse = (text: string) => parseConfig(text, file, { baseDir: dir });

  it('is read at load, relative to the config file, for the direct and http-proxy routes', async () => {
    await writeFile(
      file,
      `${DIRECT}ca_file = "certs/bundle.pem"\n[[mirror]]\nregistry = "ghcr.io"\nupstream = "https://ghcr.io"\nroute = "http-proxy"\nhttp_proxy = "http://proxy:3128"\nca_file = "${join(dir, 'certs', 'ca.pem')}"\n`,
    );
    const config = await loadConfig(file);
    const [direct, proxied] = config.mirrors;
    expect(direct?.ca?.file).toBe(join(dir, 'certs', 'bundle.pem'));
    // Certificates only, comments dropped: both blocks, each a certificate Node parses.
    const blocks = direct?.ca?.pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
    expect(blocks).toHaveLength(2);
    expect(new X509Certificate(blocks[0] ?? '').subject).toBe('CN=rpa test CA');
    expect(direct?.ca?.pem).not.toContain('corp roots');
    expect(proxied?.ca).toEqual({ file: join(dir, 'certs', 'ca.pem'), pem: `${caPem.trim()}\n` });
  });

  it('is absent unless set', () => {
    expect(parse(DIRECT).mirrors[0]).not.toHaveProperty('ca');
  });

  it.each([
    ['certs/missing.pem', /^cannot read \/.*\/certs\/missing\.pem: ENOENT: no such file or directory/],
    ['certs', /^cannot read \/.*\/certs: \/.*\/certs is not a regular file$/],
    ['certs/empty.pem', /certs\/empty\.pem is not a PEM certificate bundle: no "-----BEGIN CERTIFICATE-----" block found/],
    ['certs/notes.txt', /certs\/notes\.txt is not a PEM certificate bundle/],
    ['certs/ca.der', /certs\/ca\.der is not a PEM certificate bundle: .*DER files must be converted: openssl x509 -inform der/],
    ['certs/broken.pem', /certs\/broken\.pem: certificate 1 of 1 is not a valid X\.509 certificate/],
    ['certs/key-and-cert.pem', /certs\/key-and-cert\.pem contains a private key: ca_file takes CA certificates only/],
  ])('ca_file = %j fails naming file, key and problem', (path, problem) => {
    const error = errorOf(() => parse(`${DIRECT}ca_file = "${path}"\n`));
    expect(error.file).toBe(file);
    expect(error.key).toBe('mirror[0].ca_file');
    expect(error.problem).toMatch(problem);
    expect(error.message.startsWith(`${file}: mirror[0].ca_file: `)).toBe(true);
  });

  it('is a config error on the connectivity-proxy route, before the file is read', () => {
    const error = errorOf(() => parse(`${CP}${CP_MIRROR}ca_file = "certs/missing.pem"\n`));
    expect(error.key).toBe('mirror[0].ca_file');
    expect(error.problem).toBe(
      'ca_file is not used with route = "connectivity-proxy": upstreams there are http:// Cloud Connector virtual hosts, ' +
        "and the Cloud Connector does the TLS to the real registry (trust the registry's CA in the Cloud Connector)",
    );
  });

  it('is not taken from a RegistryMirror table (TOML only: a CRD would hand the bundle over in memory)', () => {
    const table = { registry: 'r.example', upstream: 'https://r.example', ca_file: join(dir, 'certs', 'ca.pem') };
    expect(errorOf(() => parseMirrorTable(table, 'RegistryMirror r', { path: 'spec' })).message).toBe('RegistryMirror r: spec.ca_file: unknown key');
  });

  it('must be a non-empty string path', () => {
    expect(errorOf(() => parse(`${DIRECT}ca_file = ""\n`)).message).toBe(`${file}: mirror[0].ca_file: must not be empty`);
    expect(errorOf(() => parse(`${DIRECT}ca_file = 3\n`)).message).toBe(`${file}: mirror[0].ca_file: expected a string, got integer`);
  });
});

describe('realm_map', () => {
  const FILE = '/etc/rpa/agent.toml';
  const parse = (text: string) => parseConfig(`${CP}${text}`, FILE, { baseDir: '/etc/rpa' });
  const problemOf = (table: string) => {
    const error = errorOf(() => parse(`${CP_MIRROR}${table}`));
    expect(error.key).toBe('mirror[0].realm_map');
    return error.problem;
  };

  it('maps realm origins (normalised: lower-case host, default port dropped) to http:// origins', () => {
    const config = parse(
      `${CP_MIRROR}[mirror.realm_map]\n"https://Harbor.Corp.Example:443" = "http://harbor-auth.virtual:80"\n"http://auth.corp.example:8080/" = "http://auth.virtual:8080"\n`,
    );
    expect(config.mirrors[0]?.realmMap).toEqual({
      'https://harbor.corp.example': 'http://harbor-auth.virtual',
      'http://auth.corp.example:8080': 'http://auth.virtual:8080',
    });
  });

  it('takes an inline table too, and is absent unless set', () => {
    expect(parse(`${CP_MIRROR}realm_map = { "https://a.example" = "http://a.virtual" }\n`).mirrors[0]?.realmMap).toEqual({ 'https://a.example': 'http://a.virtual' });
    expect(parse(CP_MIRROR).mirrors[0]).not.toHaveProperty('realmMap');
  });

  it.each([
    ['realm_map = "https://a.example=http://a.virtual"', /^expected a table of realm origin = virtual-host origin, got string; e\.g\. \[mirror\.realm_map\]/],
    ['[mirror.realm_map]\n"auth.corp.example" = "http://a.virtual"', /^key "auth\.corp\.example": expected an origin \(https:\/\/host\[:port\] or http:\/\/host\[:port\]\)/],
    ['[mirror.realm_map]\n"ftp://auth.corp.example" = "http://a.virtual"', /^key "ftp:\/\/auth\.corp\.example": scheme must be http or https$/],
    ['[mirror.realm_map]\n"https://auth.corp.example/token" = "http://a.virtual"', /^key "https:\/\/auth\.corp\.example\/token": must be an origin without path, query or fragment \(the realm's path and query are kept\)/],
    ['[mirror.realm_map]\n"https://auth.corp.example?x=1" = "http://a.virtual"', /must be an origin without path, query or fragment/],
    ['[mirror.realm_map]\n"https://user:pw@auth.corp.example" = "http://a.virtual"', /^key "https:\/\/user:pw@auth\.corp\.example": must not contain userinfo$/],
    ['[mirror.realm_map]\n"https://auth.corp.example" = "https://a.virtual"', /^"https:\/\/auth\.corp\.example" = "https:\/\/a\.virtual": scheme must be http: the Connectivity Proxy only forwards plain http:\/\//],
    ['[mirror.realm_map]\n"https://auth.corp.example" = "http://a.virtual/token"', /^"https:\/\/auth\.corp\.example" = "http:\/\/a\.virtual\/token": must be an origin without path/],
    ['[mirror.realm_map]\n"https://auth.corp.example" = "a.virtual:80"', /^"https:\/\/auth\.corp\.example" = "a\.virtual:80": expected an http:\/\/ origin/],
    ['[mirror.realm_map]\n"https://auth.corp.example" = 80', /^"https:\/\/auth\.corp\.example": expected a string \(an http:\/\/ origin\), got integer$/],
    ['[mirror.realm_map]\n"https://auth.corp.example" = "http://a.virtual"\n"https://AUTH.corp.example:443" = "http://b.virtual"', /^key "https:\/\/AUTH\.corp\.example:443" names the same origin as "https:\/\/auth\.corp\.example" \(https:\/\/auth\.corp\.example\)$/],
  ])('%s fails', (table, problem) => {
    expect(problemOf(`${table}\n`)).toMatch(problem);
  });

  it('is only used on the connectivity-proxy route', () => {
    const error = errorOf(() => parse(`${DIRECT}[mirror.realm_map]\n"https://a.example" = "http://a.virtual"\n`));
    expect(error.message).toBe(
      `${FILE}: mirror[0].realm_map: realm_map is only used with route = "connectivity-proxy" (where a token realm on the real host name cannot be reached); on other routes the agent contacts the realm itself`,
    );
  });

  it('is validated the same in a RegistryMirror table', () => {
    const cp = { url: new URL('http://cp.example:20003'), budget: {} };
    const table = { registry: 'r.example', upstream: 'http://r.virtual', route: 'connectivity-proxy', realm_map: { 'https://a.example': 'https://a.virtual' } };
    expect(errorOf(() => parseMirrorTable(table, 'RegistryMirror r', { path: 'spec', connectivityProxy: cp })).key).toBe('spec.realm_map');
  });
});
