import type { LookupAddress } from 'node:dns';
import { describe, expect, it } from 'vitest';
import { parseDestinations } from '../config/destinations.ts';
import type { RouteKind } from '../config/types.ts';
import { addressClass } from './address-class.ts';
import { DestinationPolicy, type Resolver } from './destination-policy.ts';
import type { DestinationRefusal } from './destination.ts';
import { DestinationRefusedError, UpstreamError } from './errors.ts';

const PUBLIC = 'https://registry.corp.example:5000/';
const LOOPBACK = 'http://127.0.0.2:5000/';
/** This test's "node": its interfaces hold these besides loopback. */
const NODE = ['10.251.0.1', 'fd00:251::1', '127.0.0.1', '::1'];

/** A resolver from a table; names not in it do not resolve (ENOTFOUND). */
function tableResolver(table: Record<string, string[]>, asked: string[] = []): Resolver {
  return async (host) => {
    asked.push(host);
    const addresses = table[host];
    if (!addresses) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
    return addresses.map((address): LookupAddress => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
}

const NAMES: Record<string, string[]> = {
  'loop.test': ['127.0.0.1'],
  'node.test': ['10.251.0.1'],
  'meta.test': ['169.254.169.254'],
  'alibaba.test': ['100.100.100.200'],
  'meta6.test': ['fd00:ec2::254'],
  'mixed.test': ['10.1.2.3', '127.0.0.1'],
  'private.test': ['10.1.2.3'],
  's3.corp.example': ['10.20.0.7'],
  'registry.corp.example': ['10.9.9.9'],
};

interface Made {
  policy: DestinationPolicy;
  refusals: DestinationRefusal[];
  asked: string[];
}

function policy(upstream: string, route: RouteKind = 'direct', allowed?: string[]): Made {
  const refusals: DestinationRefusal[] = [];
  const asked: string[] = [];
  const made = new DestinationPolicy({
    registry: 'registry.test',
    upstream: new URL(upstream),
    route,
    allowed: allowed === undefined ? undefined : parseDestinations(allowed),
    resolver: tableResolver(NAMES, asked),
    nodeAddresses: () => NODE,
    onRefused: (refusal) => refusals.push(refusal),
  });
  return { policy: made, refusals, asked };
}

function refusalOf(run: () => void): DestinationRefusedError | undefined {
  try {
    run();
  } catch (error) {
    if (error instanceof DestinationRefusedError) return error;
    throw error;
  }
  return undefined;
}

async function asyncRefusalOf(run: () => Promise<unknown>): Promise<DestinationRefusedError | undefined> {
  try {
    await run();
  } catch (error) {
    if (error instanceof DestinationRefusedError) return error;
    throw error;
  }
  return undefined;
}

/** What the direct route's lookup hands net.connect for `url`: the addresses, or the refusal. */
function lookup(made: Made, url: string, all = true): Promise<{ error: Error | null; addresses: string | LookupAddress[] }> {
  const target = new URL(url);
  const { host, port } = { host: target.hostname.replace(/^\[|\]$/g, '').toLowerCase(), port: Number(target.port || (target.protocol === 'https:' ? 443 : 80)) };
  return new Promise((resolve) => made.policy.lookupFor({ host, port })(host, { all }, (error, addresses) => resolve({ error, addresses })));
}

describe('addressClass', () => {
  it.each([
    ['169.254.169.254', 'link_local'],
    ['169.254.0.1', 'link_local'],
    ['fe80::1', 'link_local'],
    ['febf::1', 'link_local'],
    ['100.100.100.200', 'metadata'],
    ['fd00:ec2::254', 'metadata'],
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['::', 'unspecified'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['ff02::1', 'multicast'],
    ['127.0.0.1', 'loopback'],
    ['127.255.0.9', 'loopback'],
    ['::1', 'loopback'],
    // IPv4-mapped IPv6, dotted and hex (the form WHATWG URL parsing produces).
    ['::ffff:169.254.169.254', 'link_local'],
    ['::ffff:a9fe:a9fe', 'link_local'],
    ['::ffff:100.100.100.200', 'metadata'],
    ['::ffff:6464:64c8', 'metadata'],
    ['::ffff:0.0.0.0', 'unspecified'],
    ['::ffff:224.0.0.1', 'multicast'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
  ])('%s is %s', (address, kind) => {
    expect(addressClass(address)).toBe(kind);
  });

  it.each(['10.0.0.1', '172.16.0.1', '192.168.1.1', '100.100.100.201', '8.8.8.8', 'fd00::1', 'fd00:ec2::253', '2001:db8::1', '::ffff:10.0.0.1', 'localhost', 'registry.example'])(
    '%s is none of them',
    (address) => {
      expect(addressClass(address)).toBeUndefined();
    },
  );
});

describe('DestinationPolicy.checkUrl (what the URL alone settles)', () => {
  it.each<[string, string, RouteKind]>([
    // Other hosts: storage backends and token servers live there, private ranges included.
    ['https://storage.example.com/blob?sig=1', PUBLIC, 'direct'],
    ['http://auth.corp.example/token', PUBLIC, 'direct'],
    ['https://10.1.2.3/blob', PUBLIC, 'direct'],
    ['https://192.168.7.8:9000/bucket/blob', PUBLIC, 'http-proxy'],
    ['https://[fd00::5]/blob', PUBLIC, 'direct'],
    // Names are judged by address where the route connects.
    ['http://loop.test:1/x', PUBLIC, 'direct'],
    // The upstream itself: exact host and port, even on loopback; host case and default port normalised.
    ['http://127.0.0.2:5000/token', LOOPBACK, 'direct'],
    ['http://127.0.0.2:5000/blob', LOOPBACK, 'http-proxy'],
    ['https://REGISTRY.corp.example:5000/x', PUBLIC, 'direct'],
    ['http://localhost:5000/x', 'http://localhost:5000/', 'direct'],
    ['https://localhost/x', 'https://localhost:443/', 'direct'],
    // Connectivity Proxy: every host is a Cloud Connector virtual host, never resolved on the node.
    ['http://127.0.0.1:8080/token', 'http://registry.virtual:5000/', 'connectivity-proxy'],
    ['http://169.254.169.254/token', 'http://registry.virtual:5000/', 'connectivity-proxy'],
  ])('allows %s (upstream %s, %s)', (target, upstream, route) => {
    const made = policy(upstream, route);
    expect(refusalOf(() => made.policy.checkUrl(new URL(target)))).toBeUndefined();
    expect(made.refusals).toEqual([]);
  });

  it.each<[string, string, RouteKind, DestinationRefusal['reason']]>([
    ['http://127.0.0.1:10250/pods', PUBLIC, 'direct', 'loopback'],
    // Another port on the upstream's own loopback host is another service.
    ['http://127.0.0.2:9999/token', LOOPBACK, 'direct', 'loopback'],
    ['http://127.0.0.2/blob', LOOPBACK, 'http-proxy', 'loopback'],
    ['http://localhost:9402/metrics', PUBLIC, 'direct', 'loopback'],
    ['http://LOCALHOST.:1/x', PUBLIC, 'direct', 'loopback'],
    ['http://api.localhost/x', PUBLIC, 'direct', 'loopback'],
    ['http://127.1:1/x', PUBLIC, 'direct', 'loopback'],
    ['http://2130706433:1/x', PUBLIC, 'direct', 'loopback'],
    ['http://0x7f000001:1/x', PUBLIC, 'direct', 'loopback'],
    ['http://[::1]:1/x', PUBLIC, 'direct', 'loopback'],
    ['http://[::ffff:127.0.0.1]:1/x', PUBLIC, 'direct', 'loopback'],
    ['http://10.251.0.1:10250/pods', PUBLIC, 'direct', 'node_address'],
    ['http://[fd00:251::1]:9402/metrics', PUBLIC, 'http-proxy', 'node_address'],
    ['http://[::ffff:10.251.0.1]:1/x', PUBLIC, 'direct', 'node_address'],
    ['http://0.0.0.0:1/x', PUBLIC, 'direct', 'unspecified'],
    ['http://[::]:1/x', PUBLIC, 'direct', 'unspecified'],
    ['http://169.254.169.254/latest/meta-data/', PUBLIC, 'direct', 'link_local'],
    ['http://[::ffff:169.254.169.254]/latest/meta-data/', PUBLIC, 'direct', 'link_local'],
    ['http://[fe80::1]/x', PUBLIC, 'http-proxy', 'link_local'],
    ['http://100.100.100.200/latest/meta-data/', PUBLIC, 'direct', 'metadata'],
    ['http://[fd00:ec2::254]/latest/meta-data/', PUBLIC, 'http-proxy', 'metadata'],
    ['http://224.0.0.1/x', PUBLIC, 'direct', 'multicast'],
    ['http://[ff02::1]/x', PUBLIC, 'direct', 'multicast'],
    ['ftp://storage.example.com/blob', PUBLIC, 'direct', 'scheme'],
    ['file:///etc/passwd', PUBLIC, 'connectivity-proxy', 'scheme'],
    ['http://user:pw@storage.example.com/blob', PUBLIC, 'direct', 'credentials'],
    ['http://user:pw@registry.virtual:5000/blob', 'http://registry.virtual:5000/', 'connectivity-proxy', 'credentials'],
  ])('refuses %s (upstream %s, %s) as %s', (target, upstream, route, reason) => {
    const made = policy(upstream, route);
    const refused = refusalOf(() => made.policy.checkUrl(new URL(target)));
    expect(refused?.refusal.reason).toBe(reason);
    expect(refused?.failure).toBe('destination');
    expect(refused?.unavailable).toBe(false);
    // Reported once, as thrown.
    expect(made.refusals).toEqual([refused?.refusal]);
  });

  it('refuses the never-allowed classes even for the upstream itself and listed entries', () => {
    const upstream = policy('http://169.254.169.254:80/', 'direct', ['169.254.0.0/16', '100.100.100.200', '[fd00:ec2::254]:80']);
    for (const target of ['http://169.254.169.254/v2/', 'http://100.100.100.200/x', 'http://[fd00:ec2::254]/x']) {
      expect(refusalOf(() => upstream.policy.checkUrl(new URL(target))), target).toBeInstanceOf(DestinationRefusedError);
    }
    expect(upstream.refusals.map((r) => r.reason)).toEqual(['link_local', 'metadata', 'metadata']);
  });

  it('says what to change: a loopback token server is to be listed, a metadata address never', () => {
    const made = policy(LOOPBACK);
    const loopback = refusalOf(() => made.policy.checkUrl(new URL('http://127.0.0.1:5001/token')));
    expect(loopback?.refusal).toEqual({
      registry: 'registry.test',
      reason: 'loopback',
      destination: '127.0.0.1:5001',
      address: undefined,
      fix: expect.stringContaining('add "127.0.0.1:5001" to allowed_destinations of mirror registry.test'),
    });
    expect(loopback?.message).toMatch(/redirects and token realms of registry.test may not lead to 127.0.0.1:5001: a loopback address/);
    const v6 = refusalOf(() => made.policy.checkUrl(new URL('http://[::1]:5001/token')));
    expect(v6?.refusal.fix).toContain('add "[::1]:5001"');
    const metadata = refusalOf(() => made.policy.checkUrl(new URL('http://100.100.100.200/')));
    expect(metadata?.refusal.fix).toMatch(/never allowed, not even through allowed_destinations/);
    const scheme = refusalOf(() => made.policy.checkUrl(new URL('ftp://storage.example.com/blob')));
    expect(scheme?.refusal).toMatchObject({ reason: 'scheme', destination: 'ftp://storage.example.com' });
  });
});

describe('allowed_destinations', () => {
  const LISTED = ['127.0.0.1:5001', 's3.corp.example', '10.20.0.0/16', '[::1]:5002', '10.251.0.1:8443'];

  it.each([
    ['http://127.0.0.1:5001/token', 'a listed loopback host:port'],
    ['http://[::1]:5002/token', 'a listed IPv6 loopback host:port'],
    ['https://10.251.0.1:8443/token', 'a listed node address host:port'],
    ['https://s3.corp.example/bucket/blob', 'a listed name, any port'],
    ['http://s3.corp.example:9000/bucket/blob', 'a listed name on another port'],
    ['https://10.20.3.4/blob', 'an address in a listed range'],
    ['http://127.0.0.2:5000/blob', 'the upstream itself, exact host and port'],
  ])('allows %s (%s)', (target) => {
    const made = policy(LOOPBACK, 'direct', LISTED);
    expect(refusalOf(() => made.policy.checkUrl(new URL(target)))).toBeUndefined();
  });

  it.each<[string, DestinationRefusal['reason']]>([
    // A listed host matches with its port only.
    ['http://127.0.0.1:5002/token', 'loopback'],
    ['http://10.251.0.1:10250/pods', 'node_address'],
    // Exhaustive: what is not listed is refused, private or not.
    ['https://10.21.0.1/blob', 'not_allowed'],
    ['https://8.8.8.8/blob', 'not_allowed'],
    // The upstream's host on another port is not the upstream.
    ['http://127.0.0.2:5001/blob', 'loopback'],
    // Listing never opens the never-allowed classes.
    ['http://169.254.169.254/', 'link_local'],
  ])('refuses %s as %s', (target, reason) => {
    const made = policy(LOOPBACK, 'direct', [...LISTED, '169.254.169.254']);
    expect(refusalOf(() => made.policy.checkUrl(new URL(target)))?.refusal.reason).toBe(reason);
  });

  it('a listed range opens loopback addresses too (by address, any port)', async () => {
    const made = policy(PUBLIC, 'direct', ['127.0.0.0/8']);
    expect(refusalOf(() => made.policy.checkUrl(new URL('http://127.0.0.1:4000/token')))).toBeUndefined();
    expect((await lookup(made, 'http://loop.test:4000/token')).error).toBeNull();
  });

  it('an unlisted name is judged by its addresses: a listed range lets it through, anything else is not allowed', async () => {
    const made = policy(PUBLIC, 'direct', ['10.1.0.0/16']);
    expect(refusalOf(() => made.policy.checkUrl(new URL('https://private.test/blob')))).toBeUndefined();
    expect((await lookup(made, 'https://private.test/blob')).error).toBeNull();
    const refused = await lookup(made, 'https://s3.corp.example/blob');
    expect(refused.error).toBeInstanceOf(DestinationRefusedError);
    expect((refused.error as DestinationRefusedError).refusal).toMatchObject({ reason: 'not_allowed', destination: 's3.corp.example:443', address: '10.20.0.7' });
    expect((refused.error as DestinationRefusedError).refusal.fix).toContain('add "s3.corp.example:443" or a range holding 10.20.0.7');
  });
});

describe('DestinationPolicy.lookupFor (route direct: the addresses connected to)', () => {
  it.each<[string, DestinationRefusal['reason']]>([
    ['http://loop.test:9402/metrics', 'loopback'],
    ['http://node.test:10250/pods', 'node_address'],
    ['http://meta.test/latest/meta-data/', 'link_local'],
    ['http://alibaba.test/latest/meta-data/', 'metadata'],
    ['http://meta6.test/latest/meta-data/', 'metadata'],
    // One forbidden address among allowed ones refuses the name: net.connect would try them all.
    ['http://mixed.test/blob', 'loopback'],
  ])('refuses %s as %s, handing net.connect no address', async (target, reason) => {
    const made = policy(PUBLIC);
    const result = await lookup(made, target);
    expect(result.error).toBeInstanceOf(DestinationRefusedError);
    expect((result.error as DestinationRefusedError).refusal.reason).toBe(reason);
    expect(result.addresses).toBe('');
    expect(made.refusals).toHaveLength(1);
  });

  it('hands the addresses over as net.connect asked for them (all, or the first)', async () => {
    const made = policy(PUBLIC);
    expect(await lookup(made, 'https://private.test/blob', true)).toEqual({ error: null, addresses: [{ address: '10.1.2.3', family: 4 }] });
    const single = await new Promise<unknown[]>((resolve) =>
      made.policy.lookupFor({ host: 'private.test', port: 443 })('private.test', {}, (...args) => resolve(args)),
    );
    expect(single).toEqual([null, '10.1.2.3', 4]);
  });

  it('passes a name that does not resolve on as the resolver failed (ENOTFOUND), refusing nothing', async () => {
    const made = policy(PUBLIC);
    const result = await lookup(made, 'http://nowhere.test/blob');
    expect((result.error as NodeJS.ErrnoException).code).toBe('ENOTFOUND');
    expect(made.refusals).toEqual([]);
  });

  it('lets the upstream itself resolve to loopback, but not to a never-allowed address', async () => {
    expect((await lookup(policy('http://loop.test:5000/'), 'http://loop.test:5000/v2/')).error).toBeNull();
    expect((await lookup(policy('http://loop.test:5000/'), 'http://loop.test:5001/v2/')).error).toBeInstanceOf(DestinationRefusedError);
    const meta = await lookup(policy('http://meta.test/'), 'http://meta.test/v2/');
    expect((meta.error as DestinationRefusedError).refusal.reason).toBe('link_local');
  });

  it('refusedLiteral checks an IP literal, which net.connect never looks up', () => {
    const made = policy(PUBLIC);
    expect(made.policy.refusedLiteral({ host: '127.0.0.1', port: 10250 })?.refusal.reason).toBe('loopback');
    expect(made.policy.refusedLiteral({ host: '10.1.2.3', port: 443 })).toBeUndefined();
    // Names are for the lookup.
    expect(made.policy.refusedLiteral({ host: 'loop.test', port: 1 })).toBeUndefined();
  });
});

describe('DestinationPolicy.checkProxied (route http-proxy: the target as sent)', () => {
  it.each<[string, DestinationRefusal['reason']]>([
    ['http://127.0.0.1:10250/pods', 'loopback'],
    ['http://169.254.169.254/', 'link_local'],
    ['http://loop.test:9402/metrics', 'loopback'],
    ['http://node.test:10250/pods', 'node_address'],
    ['http://meta.test/', 'link_local'],
    ['http://meta6.test/', 'metadata'],
  ])('refuses %s as %s', async (target, reason) => {
    const made = policy(PUBLIC, 'http-proxy');
    expect((await asyncRefusalOf(() => made.policy.checkProxied(new URL(target))))?.refusal.reason).toBe(reason);
  });

  it('leaves a name the node cannot resolve to the proxy, unless the allow-list is exhaustive', async () => {
    const open = policy(PUBLIC, 'http-proxy');
    expect(await asyncRefusalOf(() => open.policy.checkProxied(new URL('https://storage.outside.example/blob')))).toBeUndefined();
    const listed = policy(PUBLIC, 'http-proxy', ['10.0.0.0/8', 'auth.outside.example']);
    expect(await asyncRefusalOf(() => listed.policy.checkProxied(new URL('https://auth.outside.example/token')))).toBeUndefined();
    const refused = await asyncRefusalOf(() => listed.policy.checkProxied(new URL('https://storage.outside.example/blob')));
    expect(refused?.refusal.reason).toBe('not_allowed');
    expect(refused?.message).toMatch(/does not resolve on this node/);
  });

  it('does not resolve the upstream itself (the node often cannot), and allows private addresses', async () => {
    const made = policy(PUBLIC, 'http-proxy');
    await made.policy.checkProxied(new URL('https://registry.corp.example:5000/v2/'));
    await made.policy.checkProxied(new URL('https://private.test/blob'));
    await made.policy.checkProxied(new URL('https://10.1.2.3/blob'));
    expect(made.asked).toEqual(['private.test']);
    expect(made.refusals).toEqual([]);
  });

  it('on the connectivity-proxy route checks nothing by address', async () => {
    const made = policy('http://registry.virtual:5000/', 'connectivity-proxy');
    await made.policy.checkProxied(new URL('http://loop.test/token'));
    expect(made.policy.refusedLiteral({ host: '127.0.0.1', port: 1 })).toBeUndefined();
    expect(made.asked).toEqual([]);
  });
});

describe('DestinationPolicy.checkRealm', () => {
  it.each<[string, DestinationRefusal['reason'] | undefined]>([
    ['Basic realm="http://127.0.0.1/"', undefined],
    ['Bearer service="x"', undefined],
    ['Bearer realm="/token",service="x"', undefined],
    ['Bearer realm="https://auth.example.com/token"', undefined],
    ['Bearer realm="http://127.0.0.1:1/token"', 'loopback'],
    ['Bearer realm="http://169.254.169.254/token"', 'link_local'],
    ['Bearer realm="file:///etc/passwd"', 'scheme'],
  ])('%s', (challenge, reason) => {
    const made = policy(PUBLIC);
    expect(refusalOf(() => made.policy.checkRealm(challenge))?.refusal.reason).toBe(reason);
  });

  it('a realm that is not a URL is an invalid answer, not a refused destination', () => {
    const made = policy(PUBLIC);
    let thrown: unknown;
    try {
      made.policy.checkRealm('Bearer realm="http://[oops/token"');
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(UpstreamError);
    expect((thrown as UpstreamError).failure).toBe('invalid');
  });
});
