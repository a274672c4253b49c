import { readFile } from 'node:fs/promises';
import { createServer as createHttpServer } from 'node:http';
import { type Server, createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { closeServer, listenLoopback } from '../../test/fixtures/http-server.ts';
import { type Sentinel, startSentinel } from '../../test/fixtures/sentinel.ts';
import { rejection } from '../../test/fixtures/thrown.ts';
import { type TestCa, makeTestCa } from '../../test/fixtures/tls-registry.ts';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import { parseDestinations } from '../config/destinations.ts';
import { DestinationPolicy, type Resolver } from './destination-policy.ts';
import type { DestinationRefusal } from './destination.ts';
import { DestinationRefusedError } from './errors.ts';
import { DirectRoute, type RouteRequest } from './routes.ts';

// The direct route's connector against real sockets: a refused destination is never connected
// to (the sentinel counts TCP connections before any byte), names are judged by the address they
// resolve to (an injected resolver), literals without a lookup, and allowed ones still work.

const REGISTRY = 'upstream.test';
const GET: RouteRequest = { method: 'GET', headers: {}, headersTimeout: 5_000, bodyTimeout: 5_000 };

let sentinel: Sentinel;
let upstream: ReturnType<typeof createHttpServer>;
let upstreamUrl: URL;
let tlsServer: Server;
let tlsUrl: URL;
let tlsConnections = 0;
let dir: string;
let ca: TestCa;
let caPem: string;
const routes: DirectRoute[] = [];

/** loop.test and its kin resolve to the sentinel's loopback address; private.test does not resolve to anything forbidden. */
const resolver: Resolver = async (host) => {
  if (host === 'loop.test' || host === 'localhost') return [{ address: '127.0.0.1', family: 4 }];
  throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${host}`), { code: 'ENOTFOUND' });
};

function route(allowed?: string[], withCa = false): { route: DirectRoute; refusals: DestinationRefusal[] } {
  const refusals: DestinationRefusal[] = [];
  const policy = new DestinationPolicy({
    registry: REGISTRY,
    upstream: upstreamUrl,
    route: 'direct',
    allowed: allowed ? parseDestinations(allowed) : undefined,
    resolver,
    nodeAddresses: () => [],
    onRefused: (refusal) => refusals.push(refusal),
  });
  const made = new DirectRoute(5_000, withCa ? { file: ca.caFile, pem: caPem } : undefined, policy);
  routes.push(made);
  return { route: made, refusals };
}

async function text(made: DirectRoute, url: URL): Promise<string> {
  const response = await made.send(REGISTRY, url, GET);
  return `${response.statusCode} ${await response.body.text()}`;
}

beforeAll(async () => {
  dir = await makeTempDir('rpa-guarded-connect');
  ca = await makeTestCa(dir);
  caPem = await readFile(ca.caFile, 'utf8');
  sentinel = await startSentinel();
  // The upstream on another loopback address than the sentinel (127.0.0.1).
  upstream = createHttpServer((_req, res) => res.end('upstream'));
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.2', resolve));
  upstreamUrl = new URL(`http://127.0.0.2:${(upstream.address() as AddressInfo).port}/`);
  tlsServer = createHttpsServer({ key: await readFile(ca.keyFile), cert: await readFile(ca.certFile) }, (_req, res) => res.end('tls'));
  tlsServer.on('connection', () => (tlsConnections += 1));
  tlsUrl = new URL(`https://127.0.0.1:${await listenLoopback(tlsServer)}/token`);
});

beforeEach(() => {
  tlsConnections = 0;
});

afterAll(async () => {
  await Promise.all(routes.map((r) => r.close()));
  await Promise.all([sentinel?.stop(), upstream && closeServer(upstream), tlsServer && closeServer(tlsServer)]);
  if (dir) await removeTempDir(dir);
});

describe('DirectRoute with a destination policy', () => {
  it('reaches the upstream itself, on loopback', async () => {
    expect(await text(route().route, new URL('/v2/', upstreamUrl))).toBe('200 upstream');
  });

  it.each([
    ['an IP literal (no lookup happens for one)', () => `http://127.0.0.1:${sentinel.port}/blob`],
    ['an https IP literal', () => `https://127.0.0.1:${sentinel.port}/blob`],
    ['a name resolving to loopback', () => `http://loop.test:${sentinel.port}/blob`],
    ['an https name resolving to loopback', () => `https://loop.test:${sentinel.port}/blob`],
    ["another port on the upstream's own address", () => `http://127.0.0.2:${sentinel.port}/blob`],
  ])('refuses %s without a single TCP connection', async (_label, target) => {
    const made = route();
    const error = await rejection(DestinationRefusedError, made.route.send(REGISTRY, new URL(target()), GET));
    expect(error.refusal.reason).toBe('loopback');
    expect(made.refusals).toEqual([error.refusal]);
    expect(sentinel.hits).toEqual([]);
  });

  it('connects to a listed host:port on loopback, by name and by literal (and the server counts it)', async () => {
    const tokens = await startSentinel();
    try {
      const made = route([`127.0.0.1:${tokens.port}`, `loop.test:${tokens.port}`]);
      expect(await text(made.route, new URL(`http://loop.test:${tokens.port}/token`))).toMatch(/^200 /);
      expect(await text(made.route, new URL(`http://127.0.0.1:${tokens.port}/token`))).toMatch(/^200 /);
      expect(tokens.hits.filter((hit) => hit.kind === 'request')).toHaveLength(2);
      expect(made.refusals).toEqual([]);
    } finally {
      await tokens.stop();
    }
  });

  it('keeps the mirror CA for a listed https realm, and refuses an unlisted one before the handshake', async () => {
    const listed = route([`127.0.0.1:${tlsUrl.port}`], true);
    expect(await text(listed.route, tlsUrl)).toBe('200 tls');
    expect(tlsConnections).toBe(1);
    const unlisted = route(undefined, true);
    const error = await rejection(DestinationRefusedError, unlisted.route.send(REGISTRY, tlsUrl, GET));
    expect(error.refusal.destination).toBe(`127.0.0.1:${tlsUrl.port}`);
    expect(tlsConnections).toBe(1);
  });

  it('a keep-alive pool does not carry an allowed origin over to a refused one', async () => {
    const made = route();
    expect(await text(made.route, new URL('/v2/', upstreamUrl))).toBe('200 upstream');
    await rejection(DestinationRefusedError, made.route.send(REGISTRY, new URL(`http://loop.test:${sentinel.port}/`), GET));
    expect(await text(made.route, new URL('/v2/again', upstreamUrl))).toBe('200 upstream');
    expect(sentinel.hits).toEqual([]);
  });
});
