import type { Server } from 'node:http';
import { type AddressInfo, type Socket, connect } from 'node:net';
import { networkInterfaces } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { closeServer, listenLoopback } from '../test/fixtures/http-server.ts';
import { pollUntil } from '../test/fixtures/poll.ts';
import { rawExchange } from '../test/fixtures/raw-http.ts';
import { createHealthServer } from './health.ts';

const LIMITS = { maxConnections: 64, requestTimeoutMs: 2_000, sendTimeoutMs: 2_000 };

let server: Server | undefined;
afterEach(async () => {
  if (server) await closeServer(server);
  server = undefined;
});

describe('the metrics port', () => {
  it('renders /metrics once for scrapes that arrive together', async () => {
    let renders = 0;
    // The rendering finishes only once all 30 scrapes have arrived: they all come while it runs.
    const allArrived = Promise.withResolvers<void>();
    server = createHealthServer(
      {
        ready: () => ({ ok: true }),
        metrics: async () => {
          renders += 1;
          await allArrived.promise;
          return { contentType: 'text/plain', body: `render ${renders}\n` };
        },
      },
      LIMITS,
    );
    let arrived = 0;
    server.on('request', () => {
      arrived += 1;
      if (arrived === 30) allArrived.resolve();
    });
    const port = await listenLoopback(server);
    const answers = await Promise.all(Array.from({ length: 30 }, () => rawExchange(port, 'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n', { responses: 1 })));
    expect(answers.every((a) => a.responses[0]?.body.toString() === 'render 1\n')).toBe(true);
    expect(renders).toBe(1);
  });

  it('renders afresh for a scrape after the last one finished (never stale counters)', async () => {
    let renders = 0;
    server = createHealthServer({ ready: () => ({ ok: true }), metrics: async () => ({ contentType: 'text/plain', body: `render ${(renders += 1)}\n` }) }, LIMITS);
    const port = await listenLoopback(server);
    const scrape = async (): Promise<string> => (await rawExchange(port, 'GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n', { responses: 1 })).responses[0]?.body.toString() ?? '';
    expect(await scrape()).toBe('render 1\n');
    expect(await scrape()).toBe('render 2\n');
  });
});

/** A non-loopback IPv4 address of this machine: connections to it come from a "remote" address. */
function ownAddress(): string | undefined {
  return Object.values(networkInterfaces())
    .flat()
    .find((entry) => entry && entry.family === 'IPv4' && !entry.internal)?.address;
}

describe('the metrics port under a connection flood from the cluster', () => {
  const address = ownAddress();

  it.skipIf(address === undefined)('keeps answering the kubelet on 127.0.0.1 while remote clients hold the cap', async () => {
    server = createHealthServer({ ready: () => ({ ok: true }), metrics: async () => ({ contentType: 'text/plain', body: '' }) }, { ...LIMITS, maxConnections: 4 });
    const port = await new Promise<number>((resolve) => server!.listen(0, '0.0.0.0', () => resolve((server!.address() as AddressInfo).port)));
    const held: Socket[] = [];
    try {
      for (let i = 0; i < 4; i += 1) {
        const socket = connect({ host: address!, port });
        socket.on('error', () => undefined);
        await new Promise((resolve) => socket.once('connect', resolve));
        held.push(socket);
      }
      const remote = await rawExchangeTo(address!, port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n');
      expect(remote).toMatch(/^HTTP\/1\.1 503/);
      const probe = await rawExchange(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n', { responses: 1 });
      expect(probe.responses[0]?.status).toBe(200);
    } finally {
      for (const socket of held) socket.destroy();
    }
  });

  it.skipIf(address === undefined)('lets one remote address hold at most 8 connections', async () => {
    server = createHealthServer({ ready: () => ({ ok: true }), metrics: async () => ({ contentType: 'text/plain', body: '' }) }, LIMITS);
    const port = await new Promise<number>((resolve) => server!.listen(0, '0.0.0.0', () => resolve((server!.address() as AddressInfo).port)));
    const sockets = await Promise.all(
      Array.from({ length: 12 }, async () => {
        const socket = connect({ host: address!, port });
        const seen = { data: '', closed: false };
        socket.on('error', () => undefined);
        socket.on('data', (d: Buffer) => void (seen.data += d.toString('latin1')));
        socket.on('close', () => void (seen.closed = true));
        await new Promise((resolve) => socket.once('connect', resolve));
        return { socket, seen };
      }),
    );
    try {
      // The refused ones are answered and closed at once; the held ones stay open until the request timeout.
      await pollUntil(() => sockets.filter((s) => s.seen.closed).length >= 4, { timeoutMs: 1_500, what: 'four refused' });
      expect(sockets.filter((s) => s.seen.closed && s.seen.data.startsWith('HTTP/1.1 503')).length).toBe(4);
      expect(sockets.filter((s) => !s.seen.closed).length).toBe(8);
    } finally {
      for (const { socket } of sockets) socket.destroy();
    }
  });
});

function rawExchangeTo(host: string, port: number, request: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host, port }, () => socket.write(request));
    let data = '';
    socket.on('data', (d: Buffer) => void (data += d.toString('latin1')));
    socket.on('error', () => resolve(data));
    socket.on('close', () => resolve(data));
  });
}
