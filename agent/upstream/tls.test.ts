import { mkdir, readFile } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { type Server, createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { getCACertificates, setDefaultCACertificates } from 'node:tls';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestCa, makeTestCa } from '../../test/fixtures/tls-registry.ts';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import type { MirrorCa } from '../config/types.ts';
import { UpstreamClient, type UpstreamObservation } from './client.ts';
import { DestinationPolicy } from './destination-policy.ts';
import { UpstreamError } from './errors.ts';
import { DirectRoute, type RouteRequest } from './routes.ts';
import { tlsError } from './tls.ts';
import { rejection } from '../../test/fixtures/thrown.ts';

// Real TLS servers on loopback with certificates from real private CAs: what the agent trusts per
// mirror (ca_file on top of the defaults), and how a refused certificate is reported.

const REGISTRY = 'upstream.test';
/** The routes here reach only TLS servers of this test on the loopback (by address or as localhost). */
const LOOPBACK_ONLY = new DestinationPolicy({
  registry: REGISTRY,
  upstream: new URL('https://127.0.0.1'),
  route: 'direct',
  allowed: [
    { kind: 'cidr', address: '127.0.0.0', prefix: 8, family: 'ipv4', text: '127.0.0.0/8' },
    { kind: 'cidr', address: '::1', prefix: 128, family: 'ipv6', text: '::1/128' },
  ],
});
const GET: RouteRequest = { method: 'GET', headers: {}, headersTimeout: 5_000, bodyTimeout: 5_000 };

interface TlsServer {
  url: URL;
  /** TCP connections accepted: one per attempt, handshake refused or not. */
  connections: number;
  server: Server;
}

let dir: string;
/** Issued the server certificate of `trusted` (IP:127.0.0.1). */
let caA: TestCa;
/** Another CA, whose server certificate names only DNS:localhost. */
let caB: TestCa;
const servers: Server[] = [];

async function serveTls(ca: TestCa): Promise<TlsServer> {
  const server = createServer({ key: await readFile(ca.keyFile), cert: await readFile(ca.certFile) }, (_req, res) => res.end('ok'));
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const handle: TlsServer = { url: new URL(`https://127.0.0.1:${(server.address() as AddressInfo).port}/v2/`), connections: 0, server };
  server.on('connection', () => (handle.connections += 1));
  return handle;
}

async function mirrorCa(ca: TestCa): Promise<MirrorCa> {
  return { file: ca.caFile, pem: await readFile(ca.caFile, 'utf8') };
}

const failureOf = (promise: Promise<unknown>): Promise<UpstreamError> => rejection(UpstreamError, promise);

async function ok(route: DirectRoute, url: URL): Promise<string> {
  const response = await route.send(REGISTRY, url, GET);
  return `${response.statusCode} ${await response.body.text()}`;
}

beforeAll(async () => {
  dir = await makeTempDir('rpa-tls-unit');
  await Promise.all([mkdir(join(dir, 'a')), mkdir(join(dir, 'b'))]);
  [caA, caB] = await Promise.all([makeTestCa(join(dir, 'a')), makeTestCa(join(dir, 'b'), { names: ['DNS:localhost'] })]);
});

afterAll(async () => {
  for (const server of servers) server.closeAllConnections();
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  if (dir) await removeTempDir(dir);
});

describe('DirectRoute with a mirror CA', () => {
  it('without ca_file refuses a private CA with cause tls, naming code, host and the ca_file fix', async () => {
    const server = await serveTls(caA);
    const route = new DirectRoute(5_000, undefined, LOOPBACK_ONLY);
    try {
      const error = await failureOf(route.send(REGISTRY, server.url, GET));
      expect(error.upstreamCause).toBe('tls');
      expect(error.unavailable).toBe(true);
      expect(error.diagnosis?.cause).toBe(
        `the TLS certificate of ${server.url.host} is not trusted (UNABLE_TO_VERIFY_LEAF_SIGNATURE: unable to verify the first certificate)`,
      );
      expect(error.diagnosis?.fix).toMatch(new RegExp(`^set ca_file for mirror ${REGISTRY} to a PEM file with the CA that issued ${server.url.host}'s certificate`));
    } finally {
      await route.close();
    }
  });

  it('with ca_file trusts that CA', async () => {
    const server = await serveTls(caA);
    const route = new DirectRoute(5_000, await mirrorCa(caA), LOOPBACK_ONLY);
    try {
      expect(await ok(route, server.url)).toBe('200 ok');
    } finally {
      await route.close();
    }
  });

  it('with the wrong ca_file says the issuer is missing from that file', async () => {
    const server = await serveTls(caA);
    const route = new DirectRoute(5_000, await mirrorCa(caB), LOOPBACK_ONLY);
    try {
      const error = await failureOf(route.send(REGISTRY, server.url, GET));
      expect(error.upstreamCause).toBe('tls');
      expect(error.diagnosis?.cause).toContain(`its issuer is in neither Node's default roots nor ca_file ${caB.caFile}`);
      expect(error.diagnosis?.fix).toBe(
        `add the CA that issued ${server.url.host}'s certificate (its root, and intermediates the server does not send) to ${caB.caFile}, then reload the agent`,
      );
    } finally {
      await route.close();
    }
  });

  it('keeps the default roots (NODE_EXTRA_CA_CERTS included) next to ca_file', async () => {
    // What NODE_EXTRA_CA_CERTS does at start-up, done in this test process: B becomes a default root.
    const defaults = getCACertificates('default');
    setDefaultCACertificates([...defaults, await readFile(caB.caFile, 'utf8')]);
    // A route built now with ca_file = A trusts B's server through the defaults (by its name: B's certificate has no IP).
    const route = new DirectRoute(5_000, await mirrorCa(caA), LOOPBACK_ONLY);
    try {
      const server = await serveTls(caB);
      const byName = new URL(server.url.href.replace('127.0.0.1', 'localhost'));
      expect(await ok(route, byName)).toBe('200 ok');
    } finally {
      setDefaultCACertificates(defaults);
      await route.close();
    }
  });

  it('reports a certificate without the host name as a name problem with the certificate fix', async () => {
    const server = await serveTls(caB);
    const route = new DirectRoute(5_000, await mirrorCa(caB), LOOPBACK_ONLY);
    try {
      const error = await failureOf(route.send(REGISTRY, server.url, GET));
      expect(error.upstreamCause).toBe('tls');
      expect(error.diagnosis?.cause).toMatch(new RegExp(`^the TLS certificate of ${server.url.host} does not name 127\\.0\\.0\\.1 \\(ERR_TLS_CERT_ALTNAME_INVALID: `));
      expect(error.diagnosis?.fix).toBe(`reissue ${server.url.host}'s certificate with 127.0.0.1 in its subjectAltName, or reach it by a name the certificate carries (the mirror's upstream)`);
    } finally {
      await route.close();
    }
  });

  it('reports an https upstream on a plain-HTTP port as a failed handshake', async () => {
    const plain = createHttpServer((_req, res) => res.end('plain'));
    await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve));
    const route = new DirectRoute(5_000, undefined, LOOPBACK_ONLY);
    try {
      const url = new URL(`https://127.0.0.1:${(plain.address() as AddressInfo).port}/v2/`);
      const error = await failureOf(route.send(REGISTRY, url, GET));
      expect(error.upstreamCause).toBe('tls');
      expect(error.diagnosis?.cause).toMatch(/^the TLS handshake with 127\.0\.0\.1:\d+ failed \(ERR_SSL_/);
      expect(error.diagnosis?.fix).toContain('for a plain-HTTP registry use an http:// upstream');
    } finally {
      await route.close();
      plain.closeAllConnections();
      await new Promise((resolve) => plain.close(resolve));
    }
  });
});

describe('UpstreamClient over a refused certificate', () => {
  it('makes exactly one attempt (no retry) and reports cause tls with detail and fix', async () => {
    const server = await serveTls(caA);
    const observations: UpstreamObservation[] = [];
    const client = new UpstreamClient({ registry: REGISTRY, base: new URL(server.url.origin), observe: (o) => observations.push(o) });
    try {
      const error = await failureOf(client.request('GET', '/v2/', ''));
      expect(error.upstreamCause).toBe('tls');
      expect(server.connections).toBe(1);
      expect(observations).toEqual([
        expect.objectContaining({ phase: 'response', status: undefined, cause: 'tls', detail: error.diagnosis?.cause, fix: error.diagnosis?.fix }),
      ]);
    } finally {
      await client.close();
    }
  });
});

describe('tlsError', () => {
  const context = { registry: REGISTRY, url: new URL('https://registry.corp.example/v2/'), ca: undefined };

  it.each([
    ['CERT_HAS_EXPIRED', /^the TLS certificate of registry\.corp\.example is outside its validity period \(CERT_HAS_EXPIRED: /, /^renew registry\.corp\.example's certificate; if it is current, check this node's clock$/],
    ['DEPTH_ZERO_SELF_SIGNED_CERT', /is not trusted \(DEPTH_ZERO_SELF_SIGNED_CERT: /, /for a self-signed certificate, the certificate itself/],
    ['SELF_SIGNED_CERT_IN_CHAIN', /is not trusted \(SELF_SIGNED_CERT_IN_CHAIN: /, /^set ca_file for mirror upstream\.test/],
  ])('%s is a tls failure', (code, cause, fix) => {
    const error = tlsError(Object.assign(new Error('certificate problem'), { code }), context);
    expect(error?.upstreamCause).toBe('tls');
    expect(error?.diagnosis?.cause).toMatch(cause);
    expect(error?.diagnosis?.fix).toMatch(fix);
  });

  it('finds the code on a wrapped cause, and leaves other errors alone', () => {
    const wrapped = new Error('fetch failed', { cause: Object.assign(new Error('expired'), { code: 'CERT_HAS_EXPIRED' }) });
    expect(tlsError(wrapped, context)?.upstreamCause).toBe('tls');
    expect(tlsError(Object.assign(new Error('reset'), { code: 'ECONNRESET' }), context)).toBeUndefined();
    expect(tlsError(new Error('no code'), context)).toBeUndefined();
  });
});
