/**
 * The hashing thread (see blob-hasher.ts): keeps one SHA-256 per fill id, hashes the blocks the
 * main thread transfers to it in the order they arrive, hands each block back, and answers a
 * digest request with the hex digest. Only the blocks travel; the hash state never leaves this thread.
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';

/** What the main thread sends. */
export type HashRequest =
  | { readonly op: 'update'; readonly id: number; readonly block: ArrayBuffer; readonly length: number }
  | { readonly op: 'digest'; readonly id: number }
  | { readonly op: 'drop'; readonly id: number };

/** What this thread answers: a block hashed (and given back), or a digest. */
export type HashReply = { readonly op: 'hashed'; readonly id: number; readonly block: ArrayBuffer; readonly length: number } | { readonly op: 'digest'; readonly id: number; readonly hex: string };

const port = parentPort;
if (port) {
  const hashes = new Map<number, Hash>();
  port.on('message', (request: HashRequest) => {
    switch (request.op) {
      case 'update': {
        let hash = hashes.get(request.id);
        if (!hash) {
          hash = createHash('sha256');
          hashes.set(request.id, hash);
        }
        hash.update(new Uint8Array(request.block, 0, request.length));
        const reply: HashReply = { op: 'hashed', id: request.id, block: request.block, length: request.length };
        port.postMessage(reply, [request.block]);
        return;
      }
      case 'digest': {
        const hex = (hashes.get(request.id) ?? createHash('sha256')).digest('hex');
        hashes.delete(request.id);
        const reply: HashReply = { op: 'digest', id: request.id, hex };
        port.postMessage(reply);
        return;
      }
      case 'drop':
        hashes.delete(request.id);
        return;
    }
  });
}
