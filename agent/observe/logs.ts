import type { Logger } from 'pino';
import type { UpstreamObservation } from '../upstream/client.ts';
import { type RequestRecord, causeChain } from './request-record.ts';

/** The access log line of a finished request; `path` is its target, already redacted. */
export function logRequest(log: Logger, record: RequestRecord, path: string): void {
  const line = {
    reqId: record.id,
    method: record.method,
    path,
    registry: record.outcome.registry,
    kind: record.outcome.kind,
    cache: record.outcome.cache,
    status: record.status,
    bytes: record.outcome.bytes,
    durationMs: Math.round(record.durationMs),
    ...(record.aborted ? { aborted: true } : {}),
    ...(record.error ? { code: record.error.code, err: causeChain(record.error) } : {}),
  };
  if (record.error && record.status >= 500) log.warn(line, 'request failed');
  else log.info(line, 'request');
}

/**
 * Upstream health in the log: one line per change of state, not per request. A node pulling through
 * a broken route would otherwise log every layer of every pull. Metrics count every observation;
 * this decides only what is worth a line.
 */
export class UpstreamStateLog {
  readonly #log: Logger;
  /** Last failure cause per registry (answers) and per registry's bodies. */
  readonly #lastCause = new Map<string, string | undefined>();
  /** Last probe verdict per registry. */
  readonly #lastUp = new Map<string, boolean>();

  constructor(log: Logger) {
    this.#log = log;
  }

  /** One upstream exchange (or its body): logs when its registry starts or stops failing. */
  observe(o: UpstreamObservation): void {
    // The line carries cause and fix, as the OCI error does. Answers and bodies are separate
    // states: a tunnel that cuts every blob while headers keep coming (each resumed request answers
    // 206) is one state, not two lines per Range request.
    // A redirect is a hop, not an outcome: the hop after it (which may fail) decides.
    if (o.phase === 'response' && isRedirect(o.status)) return;
    const key = o.phase === 'body' ? `${o.registry} body` : o.registry;
    const previous = this.#lastCause.get(key);
    if (previous === o.cause) return;
    this.#lastCause.set(key, o.cause);
    if (o.cause) this.#log.warn({ registry: o.registry, route: o.route, cause: o.cause, status: o.status, detail: o.detail, fix: o.fix }, 'upstream failing');
    else if (previous) this.#log.info({ registry: o.registry, route: o.route, previous }, 'upstream answering again');
  }

  /** The periodic probe's verdict: logs when a registry becomes reachable or unreachable. */
  probed(registry: string, up: boolean, cause?: string): void {
    if (this.#lastUp.get(registry) === up) return;
    this.#lastUp.set(registry, up);
    if (up) this.#log.info({ registry }, 'upstream reachable');
    else this.#log.warn({ registry, cause }, 'upstream unreachable (probe)');
  }
}

function isRedirect(status: number | undefined): boolean {
  return status !== undefined && status >= 300 && status < 400;
}
