import { describe, expect, it } from 'vitest';
import { refusedDestination, refusedRealm } from './destination.ts';
import type { Route } from './routes.ts';

const PUBLIC = new URL('https://registry.corp.example:5000/');
const LOOPBACK = new URL('http://127.0.0.2:5000/');

describe('refusedDestination', () => {
  it.each<[string, URL, Route['kind']]>([
    // Other hosts: storage backends and token servers live there.
    ['https://storage.example.com/blob?sig=1', PUBLIC, 'direct'],
    ['http://auth.corp.example/token', PUBLIC, 'direct'],
    ['https://10.1.2.3/blob', PUBLIC, 'direct'],
    // The upstream's own host, any port, even when it is a loopback address.
    ['http://127.0.0.2:9999/token', LOOPBACK, 'direct'],
    ['http://127.0.0.2/blob', LOOPBACK, 'http-proxy'],
    ['https://REGISTRY.corp.example:443/x', PUBLIC, 'direct'],
    // Connectivity Proxy: every host is a Cloud Connector virtual host, never resolved on the node.
    ['http://127.0.0.1:8080/token', new URL('http://registry.virtual:5000/'), 'connectivity-proxy'],
  ])('allows %s (upstream %s, %s)', (target, upstream, route) => {
    expect(refusedDestination(new URL(target), upstream, route)).toBeUndefined();
  });

  it.each<[string, URL, Route['kind'], RegExp]>([
    ['http://127.0.0.1:10250/pods', PUBLIC, 'direct', /loopback/],
    ['http://127.0.0.1:10250/pods', LOOPBACK, 'direct', /loopback/],
    ['http://localhost:9402/metrics', PUBLIC, 'direct', /loopback/],
    ['http://LOCALHOST.:1/x', PUBLIC, 'direct', /loopback/],
    ['http://api.localhost/x', PUBLIC, 'direct', /loopback/],
    ['http://127.1:1/x', PUBLIC, 'direct', /loopback/],
    ['http://2130706433:1/x', PUBLIC, 'direct', /loopback/],
    ['http://0x7f000001:1/x', PUBLIC, 'direct', /loopback/],
    ['http://0.0.0.0:1/x', PUBLIC, 'direct', /loopback/],
    ['http://[::1]:1/x', PUBLIC, 'direct', /loopback/],
    ['http://[::]:1/x', PUBLIC, 'direct', /loopback/],
    ['http://[::ffff:127.0.0.1]:1/x', PUBLIC, 'direct', /loopback/],
    ['http://169.254.169.254/latest/meta-data/', PUBLIC, 'direct', /link-local/],
    ['http://[fe80::1]/x', PUBLIC, 'http-proxy', /link-local/],
    ['ftp://storage.example.com/blob', PUBLIC, 'direct', /scheme/],
    ['file:///etc/passwd', PUBLIC, 'connectivity-proxy', /scheme/],
    ['http://user:pw@storage.example.com/blob', PUBLIC, 'direct', /credentials/],
    ['http://user:pw@registry.virtual:5000/blob', new URL('http://registry.virtual:5000/'), 'connectivity-proxy', /credentials/],
  ])('refuses %s (upstream %s, %s)', (target, upstream, route, reason) => {
    expect(refusedDestination(new URL(target), upstream, route)).toMatch(reason);
  });
});

describe('refusedRealm', () => {
  it.each<[string, RegExp | undefined]>([
    ['Basic realm="http://127.0.0.1/"', undefined],
    ['Bearer service="x"', undefined],
    ['Bearer realm="/token",service="x"', undefined],
    ['Bearer realm="https://auth.example.com/token"', undefined],
    ['Bearer realm="http://127.0.0.1:1/token"', /loopback/],
    ['Bearer realm="file:///etc/passwd"', /scheme/],
    ['Bearer realm="http://[oops/token"', /not a URL/],
  ])('%s', (challenge, reason) => {
    const refused = refusedRealm(challenge, PUBLIC, 'direct');
    if (reason === undefined) expect(refused).toBeUndefined();
    else expect(refused).toMatch(reason);
  });
});
