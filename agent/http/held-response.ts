import type { ServerResponse } from 'node:http';

/**
 * Ties a body held in memory to the response that carries it: released when the response is done
 * ('close' follows both a complete response and a client gone mid-way), or at once when it is
 * already done. A client that stops reading keeps the body until send_timeout cuts it.
 */
export function releaseWithResponse(res: ServerResponse, body: { release(): void }): void {
  if (res.closed) {
    body.release();
    return;
  }
  res.once('close', () => body.release());
}
