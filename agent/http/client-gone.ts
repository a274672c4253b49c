import type { ServerResponse } from 'node:http';
import type { PullContext } from '../mirror/mirror.ts';
import { ClientGoneError } from './respond.ts';

/**
 * A signal that aborts with ClientGoneError when the client hangs up before its response is done:
 * what the request still waits for (a download slot, room in the body budget) is given up for it.
 * Call `stop()` once the wait is over.
 */
function untilClientGone(res: ServerResponse): { readonly signal: AbortSignal; stop(): void } {
  const gone = new AbortController();
  const onClose = (): void => {
    if (!res.writableFinished) gone.abort(new ClientGoneError());
  };
  res.once('close', onClose);
  return { signal: gone.signal, stop: () => res.off('close', onClose) };
}

/** Runs `run` with a context whose signal aborts when the client hangs up before `run` is done. */
export async function whileClientWaits<T>(res: ServerResponse, ctx: PullContext, run: (ctx: PullContext) => Promise<T>): Promise<T> {
  const gone = untilClientGone(res);
  try {
    return await run({ ...ctx, signal: gone.signal });
  } finally {
    gone.stop();
  }
}
