import type { V1Secret } from '@kubernetes/client-node';
import { describe, expect, it } from 'vitest';
import type { RegistryMirror } from './resources.ts';
import { isTranslated, translate } from './translate.ts';

const NS = 'agents';
const b64 = (text: string): string => Buffer.from(text).toString('base64');

function rm(spec: Record<string, unknown>): RegistryMirror {
  return { apiVersion: 'registry-proxy.dev/v1alpha1', kind: 'RegistryMirror', metadata: { name: 'corp', generation: 3 }, spec };
}

function run(spec: Record<string, unknown>, secrets: Record<string, V1Secret> = {}) {
  return translate(rm(spec), { namespace: NS, secret: (name) => secrets[name], connectivityProxy: { url: new URL('http://cp:20003'), budget: {} } });
}

describe('translate', () => {
  it('maps the camelCase spec onto the [[mirror]] keys and validates it the same way', () => {
    const result = run({ registry: 'R.corp.example:5000', upstream: 'http://registry.virtual:5000', route: 'connectivity-proxy', locationId: 'onprem-2', tagTTL: '5m', maxStale: '7d', repositoryPrefix: 'team' });
    if (!isTranslated(result)) throw new Error(result.message);
    expect(result.table).toEqual({ registry: 'R.corp.example:5000', upstream: 'http://registry.virtual:5000', route: 'connectivity-proxy', location_id: 'onprem-2', tag_ttl: '5m', max_stale: '7d', repository_prefix: 'team' });
    expect(result.mirror).toMatchObject({ registry: 'r.corp.example:5000', route: 'connectivity-proxy', locationId: 'onprem-2', tagTtlMs: 300_000, maxStaleMs: 7 * 86_400_000, repositoryPrefix: 'team', auth: 'passthrough' });
  });

  it.each([
    [{ registry: 'r.example', upstream: 'https://r.example', route: 'connectivity-proxy' }, 'spec.upstream: the Connectivity Proxy'],
    [{ registry: 'r.example', upstream: 'http://r.example', maxStale: 'forever' }, 'spec.maxStale: invalid duration "forever"'],
    [{ registry: 'r.example', upstream: 'http://r.example', httpProxy: 'http://p:3128' }, 'spec.httpProxy: http_proxy is only used with route = "http-proxy"'],
    [{ registry: 'r.example', upstream: 'http://r.example', username: 'u' }, 'spec.username: unknown field'],
    [{ upstream: 'http://r.example' }, 'spec.registry: required key is missing'],
    [{ registry: 'r.example', upstream: 'http://r.example', auth: 'passthrough', credentialsSecretRef: { name: 's' } }, 'spec.auth: credentials are only used with auth = "agent"'],
  ])('%j is InvalidSpec', (spec, message) => {
    const result = run(spec);
    expect(result).toMatchObject({ reason: 'InvalidSpec' });
    expect(isTranslated(result) ? '' : result.message).toContain(message);
  });

  it('maps realmMap onto realm_map (token realms behind the Connectivity Proxy)', () => {
    const realmMap = { 'https://harbor.corp.example': 'http://harbor-auth.virtual:80' };
    const result = run({ registry: 'harbor.corp.example', upstream: 'http://harbor.virtual:80', route: 'connectivity-proxy', realmMap });
    if (!isTranslated(result)) throw new Error(result.message);
    expect(result.table['realm_map']).toEqual(realmMap);
    // Origins are normalised (the default port is dropped).
    expect(result.mirror.realmMap).toEqual({ 'https://harbor.corp.example': 'http://harbor-auth.virtual' });
    const direct = run({ registry: 'harbor.corp.example', upstream: 'https://harbor.corp.example', realmMap });
    expect(direct).toMatchObject({ reason: 'InvalidSpec' });
    const https = run({ registry: 'harbor.corp.example', upstream: 'http://harbor.virtual:80', route: 'connectivity-proxy', realmMap: { 'https://harbor.corp.example': 'https://x.virtual' } });
    expect(https).toMatchObject({ reason: 'InvalidSpec' });
  });

  it('maps allowedDestinations onto allowed_destinations, parsed like the TOML key; refused on the connectivity-proxy route', () => {
    const allowedDestinations = ['127.0.0.1:5001', 'S3.Corp.Example', '10.20.0.0/16'];
    const result = run({ registry: 'r.corp.example', upstream: 'http://127.0.0.1:5000', allowedDestinations });
    if (!isTranslated(result)) throw new Error(result.message);
    expect(result.table['allowed_destinations']).toEqual(allowedDestinations);
    expect(result.mirror.allowedDestinations).toEqual([
      { kind: 'host', host: '127.0.0.1', port: 5001, text: '127.0.0.1:5001' },
      { kind: 'host', host: 's3.corp.example', port: undefined, text: 'S3.Corp.Example' },
      { kind: 'cidr', address: '10.20.0.0', prefix: 16, family: 'ipv4', text: '10.20.0.0/16' },
    ]);
    const bad = run({ registry: 'r.corp.example', upstream: 'http://127.0.0.1:5000', allowedDestinations: ['http://127.0.0.1:5001'] });
    expect(isTranslated(bad) ? '' : bad.message).toContain('spec.allowedDestinations');
    const cp = run({ registry: 'r.corp.example', upstream: 'http://registry.virtual:5000', route: 'connectivity-proxy', allowedDestinations });
    expect(isTranslated(cp) ? '' : cp.message).toContain('allowed_destinations is not used with route = "connectivity-proxy"');
  });

  it('maps mode, preload ({ image, platforms } tables), preloadInterval, maxBytesPerSecond and maxFetches onto the [[mirror]] keys', () => {
    const preload = [{ image: 'team/app:1.2' }, { image: 'r.corp.example/team/db@sha256:' + 'a'.repeat(64), platforms: ['linux/amd64', 'linux/arm/v7'] }];
    const result = run({ registry: 'r.corp.example', upstream: 'http://r.corp.example', mode: 'online', preload, preloadInterval: '30m', maxBytesPerSecond: '20MiB', maxFetches: 4 });
    if (!isTranslated(result)) throw new Error(result.message);
    expect(result.table).toMatchObject({ mode: 'online', preload, preload_interval: '30m', max_bytes_per_second: '20MiB', max_fetches: 4 });
    expect(result.mirror).toMatchObject({
      mode: 'online',
      preloadIntervalMs: 1_800_000,
      budget: { bytesPerSecond: 20 * 1024 * 1024, maxFetches: 4 },
      preload: [
        { image: 'team/app:1.2', repository: 'team/app', tag: '1.2' },
        { repository: 'team/db', digest: `sha256:${'a'.repeat(64)}`, platforms: [{ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'arm', variant: 'v7' }] },
      ],
    });
    // An integer size is read like the TOML key.
    const bytes = run({ registry: 'r.corp.example', upstream: 'http://r.corp.example', maxBytesPerSecond: 1_048_576 });
    expect(isTranslated(bytes) ? bytes.mirror.budget : bytes.message).toEqual({ bytesPerSecond: 1_048_576 });
    // The spec is not changed by translating it (the informer's objects are shared).
    expect(preload[1]).toEqual({ image: 'r.corp.example/team/db@sha256:' + 'a'.repeat(64), platforms: ['linux/amd64', 'linux/arm/v7'] });
  });

  it('an offline RegistryMirror needs no upstream and cannot preload', () => {
    const offline = run({ registry: 'airgap.corp.example', mode: 'offline' });
    if (!isTranslated(offline)) throw new Error(offline.message);
    expect(offline.mirror).toMatchObject({ registry: 'airgap.corp.example', mode: 'offline', preload: [] });
    expect(run({ registry: 'airgap.corp.example', mode: 'offline', preload: [{ image: 'team/app:1' }] })).toMatchObject({
      reason: 'InvalidSpec',
      message: expect.stringContaining('spec.preload: an offline mirror never contacts upstream, so it cannot preload'),
    });
    expect(run({ registry: 'airgap.corp.example' })).toMatchObject({ reason: 'InvalidSpec', message: 'spec.upstream: required key is missing' });
  });

  it.each([
    [{ preload: [{ image: 'team/app:1' }, { image: 'team/App' }] }, 'spec.preload[1]: team/App: the repository must be lower-case path components'],
    [{ preload: [{ image: 'team/app' }] }, 'spec.preload[0]: team/app: name a tag or a digest'],
    [{ preload: [{ image: 'other.example/team/app:1' }] }, "spec.preload[0]: other.example/team/app:1 names registry other.example, not this mirror's r.example"],
    [{ preload: [{ image: 'team/app:1', platforms: ['linux'] }] }, 'spec.preload[0].platforms[0]: invalid platform "linux"'],
    [{ preload: [{ image: 'team/app:1', platforms: [] }] }, 'spec.preload[0].platforms: expected a non-empty array'],
    [{ preload: [{ image: 'team/app:1', tag: 'x' }] }, 'spec.preload[0]: unknown key tag'],
    [{ preload: [{ image: 'team/app:1' }, { image: 'r.example/team/app:1' }] }, 'spec.preload[1]: r.example/team/app:1 is listed twice'],
    [{ preload: Array.from({ length: 101 }, (_, i) => ({ image: `team/app-${i}:1` })) }, 'spec.preload: at most 100 images per mirror'],
    [{ preloadInterval: '5s' }, 'spec.preloadInterval: must be at least 10s'],
    [{ maxBytesPerSecond: '1KiB' }, 'spec.maxBytesPerSecond: must be at least 64KiB'],
    [{ maxFetches: 0 }, 'spec.maxFetches: must be from 1 to 1000'],
    [{ mode: 'air-gapped' }, 'spec.mode: must be "online"'],
  ])('a bad preload or budget key is InvalidSpec naming the key (%#)', (fields, message) => {
    const result = run({ registry: 'r.example', upstream: 'http://r.example', ...fields });
    expect(result).toMatchObject({ reason: 'InvalidSpec' });
    expect(isTranslated(result) ? '' : result.message).toContain(message);
  });

  it('reads a basic-auth Secret; auth defaults to agent', () => {
    const secret: V1Secret = { type: 'kubernetes.io/basic-auth', data: { username: b64('alice'), password: b64('s3cret') } };
    const result = run({ registry: 'r.example', upstream: 'http://r.example', credentialsSecretRef: { name: 'creds' } }, { creds: secret });
    expect(result).toMatchObject({ mirror: { auth: 'agent', inlineCredentials: { username: 'alice', password: 's3cret' } }, credentials: { username: 'alice', password: 's3cret' } });
  });

  it('picks the .dockerconfigjson entry for the upstream host before the registry', () => {
    const config = { auths: { 'https://r.example': { auth: b64('reg:1') }, 'upstream.example:5000': { username: 'up', password: '2' } } };
    const secret: V1Secret = { type: 'kubernetes.io/dockerconfigjson', data: { '.dockerconfigjson': b64(JSON.stringify(config)) } };
    const both = run({ registry: 'r.example', upstream: 'http://upstream.example:5000', credentialsSecretRef: { name: 'd' } }, { d: secret });
    expect(both).toMatchObject({ credentials: { username: 'up', password: '2' } });
    const registryOnly = run({ registry: 'r.example', upstream: 'http://other.example', credentialsSecretRef: { name: 'd' } }, { d: secret });
    expect(registryOnly).toMatchObject({ credentials: { username: 'reg', password: '1' } });
  });

  it.each([
    [undefined, 'SecretNotFound', 'Secret agents/creds not found'],
    [{ type: 'Opaque', data: { password: b64('x') } }, 'InvalidSecret', 'type "Opaque": expected kubernetes.io/basic-auth or kubernetes.io/dockerconfigjson'],
    [{ type: 'kubernetes.io/basic-auth', data: { username: b64('a') } }, 'InvalidSecret', 'needs both username and password'],
    [{ type: 'kubernetes.io/basic-auth', data: { username: b64('a:b'), password: b64('x') } }, 'InvalidSecret', "username must not contain ':'"],
    [{ type: 'kubernetes.io/dockerconfigjson', data: { '.dockerconfigjson': b64('{"auths":{}}') } }, 'InvalidSecret', 'has no entry for r.example'],
  ] as Array<[V1Secret | undefined, string, string]>)('a bad Secret is a problem that names it, never its content (%#)', (secret, reason, message) => {
    const result = run({ registry: 'r.example', upstream: 'http://r.example', credentialsSecretRef: { name: 'creds' } }, secret === undefined ? {} : { creds: secret });
    expect(result).toMatchObject({ reason });
    expect(isTranslated(result) ? '' : result.message).toContain(message);
  });

  it('reports a broken spec before a missing Secret', () => {
    expect(run({ registry: 'r.example', upstream: 'ftp://r.example', credentialsSecretRef: { name: 'gone' } })).toMatchObject({ reason: 'InvalidSpec' });
  });
});
