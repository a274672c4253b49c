import { randomBytes } from 'node:crypto';
import type { OciError } from '../oci/errors.ts';

/**
 * What one request to the mirror port was and how it ended: written once, at the HTTP edge, and
 * read by the access log and by metrics. Neither of those imports the HTTP server for it.
 */

export type RequestKind = 'base' | 'manifest' | 'blob' | 'token';

/** What the handlers learned about a request, for the access log and metrics. */
export interface Outcome {
  readonly kind: RequestKind;
  /** The mirror's registry, once known: failures of the request count for it, not for none. */
  readonly registry?: string;
  /** Where the body came from: hit | miss | joined | stale. */
  readonly cache?: string;
  /** Body bytes sent to the client. */
  readonly bytes: number;
}

/** A finished request. */
export interface RequestRecord {
  readonly id: string;
  readonly method: string;
  readonly outcome: Outcome;
  readonly status: number;
  readonly durationMs: number;
  /** What the client was answered, with the domain error behind it as `cause`. */
  readonly error?: OciError;
  /** The response did not end whole: the client left, or the connection was cut after the headers. */
  readonly aborted: boolean;
}

/** How a request ended, as the server saw it. */
export interface RequestEnd {
  readonly status: number;
  readonly error?: OciError | undefined;
  readonly aborted: boolean;
}

/**
 * The record of one request while it is served: created when the request arrives, told by the
 * handlers what they learn, and finished by the server once the response is done.
 */
export class ResponseRecorder {
  readonly id = randomBytes(8).toString('hex');
  readonly method: string;
  readonly #started = performance.now();
  #kind: RequestKind = 'base';
  #registry: string | undefined;
  #cache: string | undefined;
  #bytes = 0;
  #record: RequestRecord | undefined;

  constructor(method: string) {
    this.method = method;
  }

  setKind(kind: RequestKind): void {
    this.#kind = kind;
  }

  setRegistry(registry: string): void {
    this.#registry = registry;
  }

  /** Where the body comes from (hit, miss, joined, stale). */
  setCacheSource(source: string): void {
    this.#cache = source;
  }

  /** Body bytes sent to the client. */
  setBytes(bytes: number): void {
    this.#bytes = bytes;
  }

  /** The record, with the duration up to now; later calls return the same record. */
  finish(end: RequestEnd): RequestRecord {
    this.#record ??= {
      id: this.id,
      method: this.method,
      outcome: {
        kind: this.#kind,
        bytes: this.#bytes,
        ...(this.#registry === undefined ? {} : { registry: this.#registry }),
        ...(this.#cache === undefined ? {} : { cache: this.#cache }),
      },
      status: end.status,
      durationMs: performance.now() - this.#started,
      ...(end.error ? { error: end.error } : {}),
      aborted: end.aborted,
    };
    return this.#record;
  }
}

/** The error and its causes as one readable line (no stack, no headers: nothing secret). */
export function causeChain(error: unknown): string {
  const parts: string[] = [];
  let current: unknown = error;
  for (let depth = 0; depth < 5 && current instanceof Error; depth += 1) {
    parts.push(current.message);
    current = current.cause;
  }
  return parts.join(': ');
}
