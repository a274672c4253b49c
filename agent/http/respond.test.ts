import { createHash, randomBytes } from 'node:crypto';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { WRITE_SLICE_BYTES, writeAll } from './respond.ts';

const CHUNK = 1024 * 1024;
const CHUNKS = 48; // well past what loopback socket buffers hold, so the writer must wait for the client

let server: Server | undefined;

afterEach(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

describe('writeAll', () => {
  it('sends every byte once, in order, when a client that stops reading makes it switch to slices mid-chunk', async () => {
    const chunks = Array.from({ length: CHUNKS }, () => randomBytes(CHUNK));
    const recycled = new Map<Buffer, number>();
    const written = Promise.withResolvers<number>();
    server = createServer((_req, res) => {
      res.writeHead(200, { 'content-length': String(CHUNK * CHUNKS) });
      async function* source(): AsyncGenerator<Buffer> {
        yield* chunks;
      }
      writeAll(res, source(), (chunk) => recycled.set(chunk, (recycled.get(chunk) ?? 0) + 1)).then(
        (bytes) => {
          res.end();
          written.resolve(bytes);
        },
        written.reject,
      );
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;

    const received = await new Promise<Buffer>((resolve, reject) => {
      request({ host: '127.0.0.1', port, path: '/' }, (res) => {
        // Not reading for longer than the slow-drain threshold: the writer falls back to slices.
        res.pause();
        const parts: Buffer[] = [];
        res.on('data', (part: Buffer) => parts.push(part));
        res.on('end', () => resolve(Buffer.concat(parts)));
        res.on('error', reject);
        setTimeout(() => res.resume(), 700);
      })
        .on('error', reject)
        .end();
    });

    expect(await written.promise).toBe(CHUNK * CHUNKS);
    expect(received.length).toBe(CHUNK * CHUNKS);
    const hash = (buffer: Buffer): string => createHash('sha256').update(buffer).digest('hex');
    expect(hash(received)).toBe(hash(Buffer.concat(chunks)));
    // Each buffer is handed back exactly once: twice would let two reads fill it while the socket holds it.
    expect([...recycled.values()].every((count) => count === 1)).toBe(true);
    expect(recycled.size).toBe(CHUNKS);
    expect(WRITE_SLICE_BYTES).toBeLessThan(CHUNK);
  });

  it('reports the bytes handed to the socket as it goes, so an answer cut short still counts what it sent', async () => {
    const chunks = Array.from({ length: CHUNKS }, () => randomBytes(CHUNK));
    let reported = 0;
    const outcome = Promise.withResolvers<unknown>();
    server = createServer((_req, res) => {
      res.writeHead(200, { 'content-length': String(CHUNK * CHUNKS) });
      async function* source(): AsyncGenerator<Buffer> {
        yield* chunks;
      }
      writeAll(res, source(), undefined, (bytes) => (reported = bytes)).then(outcome.resolve, outcome.resolve);
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    await new Promise<void>((resolve) => {
      request({ host: '127.0.0.1', port, path: '/' }, (res) => {
        let received = 0;
        res.on('data', (part: Buffer) => {
          received += part.length;
          // Hang up after a few MiB.
          if (received > 4 * CHUNK) {
            res.destroy();
            resolve();
          }
        });
        res.on('error', () => undefined);
      })
        .on('error', () => undefined)
        .end();
    });
    expect(await outcome.promise).toBeInstanceOf(Error);
    expect(reported).toBeGreaterThanOrEqual(4 * CHUNK);
    expect(reported).toBeLessThan(CHUNK * CHUNKS);
  });
});
