import type { DestinationRefusal } from './destination.ts';

/** Why an upstream request did not produce a usable answer. Domain-level: no HTTP status of ours here. */
export type UpstreamFailure =
  /** Connection refused, DNS failure, reset before a response (`refused` tells the first apart). */
  | 'unreachable'
  /** Connect, first-byte or body timeout. */
  | 'timeout'
  /** Upstream answered with a status we cannot serve (5xx, unexpected 4xx). */
  | 'status'
  /** The response broke the protocol: missing or wrong headers, bad JSON, too large. */
  | 'invalid'
  /** Too many redirects, or a redirect the agent will not follow. */
  | 'redirect'
  /**
   * A redirect or token realm the destination policy refused (DestinationRefusedError): it was
   * never contacted. Not `unavailable`: upstream answered, and pointed somewhere it must not.
   */
  | 'destination'
  /**
   * The route explained the failure itself (`diagnosis`): the proxy on the route (Connectivity
   * Proxy, forward proxy) refused or failed the request, or a TLS connection to the upstream (or a
   * realm or redirect target) failed its certificate check (`tls`). Never retried.
   */
  | 'proxy';

/** A response body that broke off after the headers: the connection was cut, or went silent too long. */
export type BodyFailure = 'body_cut' | 'body_timeout';

/**
 * The `cause` label of `registry_proxy_upstream_errors_total` and of the "upstream failing" log
 * line: the route's diagnosis code, `refused` for a refused connection on the direct route, a 5xx
 * answer, a body that broke off, or else the failure itself. A closed set: labels stay bounded.
 */
export type UpstreamCause = UpstreamFailure | 'refused' | 'status_5xx' | BodyFailure | ProxyDiagnosis['code'];

/**
 * Upstream answered, and refused: the agent's own credentials (`credentials`: a 401 to an
 * agent-auth mirror), access (`denied`: 403), or for now (`rate_limited`: 429, with its Retry-After).
 */
export class UpstreamRefusedError extends Error {
  override readonly name = 'UpstreamRefusedError';
  readonly registry: string;
  readonly refusal: 'credentials' | 'denied' | 'rate_limited';
  readonly retryAfter: string | undefined;

  constructor(registry: string, refusal: UpstreamRefusedError['refusal'], retryAfter?: string) {
    super(
      refusal === 'credentials'
        ? `upstream ${registry} refused the agent's credentials`
        : refusal === 'denied'
          ? `upstream ${registry} denied access`
          : `upstream ${registry} is rate limiting`,
    );
    this.registry = registry;
    this.refusal = refusal;
    this.retryAfter = retryAfter;
  }
}

export class UpstreamError extends Error {
  override readonly name = 'UpstreamError';
  readonly failure: UpstreamFailure;
  /** Upstream's status code, for failure `status`. */
  readonly status: number | undefined;
  /** The mirror's registry, for logs. */
  readonly registry: string;
  /**
   * Failure `unreachable` because the connection was actively refused (ECONNREFUSED): the host
   * answered, nothing listens on that port. Told apart from DNS failures and resets because the
   * fix differs (wrong port or a stopped registry, against name resolution or a flaky network).
   */
  readonly refused: boolean;

  /** For failure `proxy`: what went wrong on the route and how to fix it, in words for the node's admin. */
  readonly diagnosis: ProxyDiagnosis | undefined;

  constructor(
    registry: string,
    failure: UpstreamFailure,
    message: string,
    options: { status?: number; cause?: unknown; diagnosis?: ProxyDiagnosis; refused?: boolean } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.registry = registry;
    this.failure = failure;
    this.status = options.status;
    this.diagnosis = options.diagnosis;
    this.refused = options.refused ?? false;
  }

  /** Upstream could not be asked at all, or failed on its side: cached content may be served instead. */
  get unavailable(): boolean {
    return (
      this.failure === 'unreachable' ||
      this.failure === 'timeout' ||
      this.failure === 'proxy' ||
      (this.failure === 'status' && (this.status ?? 0) >= 500)
    );
  }

  /** The metrics and log label for this failure (see UpstreamCause). */
  get upstreamCause(): UpstreamCause {
    if (this.diagnosis) return this.diagnosis.code;
    if (this.refused) return 'refused';
    return this.failure;
  }
}

/** A destination refused by the mirror's DestinationPolicy, with the reason and what to change. */
export class DestinationRefusedError extends UpstreamError {
  readonly refusal: DestinationRefusal;

  constructor(refusal: DestinationRefusal, message: string) {
    super(refusal.registry, 'destination', message);
    this.refusal = refusal;
  }
}

/**
 * A route failure explained: a stable code (for metrics and status), the cause and the fix. `tls`:
 * the peer's certificate was refused or the TLS handshake failed (see tls.ts).
 */
export interface ProxyDiagnosis {
  readonly code: 'cp_https_refused' | 'cp_auth_failed' | 'cp_no_cloud_connector' | 'cp_unreachable' | 'cp_denied' | 'proxy_unreachable' | 'proxy_refused' | 'tls';
  readonly cause: string;
  readonly fix: string;
}

const UNREACHABLE_CODES = new Set(['ECONNRESET', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);
const TIMEOUT_CODES = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);

/** Translates a transport error from undici into an UpstreamError. */
export function fromTransportError(registry: string, error: unknown): UpstreamError {
  if (error instanceof UpstreamError) return error;
  const code = errorCode(error);
  if (code === 'ECONNREFUSED') {
    return new UpstreamError(registry, 'unreachable', 'upstream refused the connection (ECONNREFUSED): nothing listens on that host and port', {
      cause: error,
      refused: true,
    });
  }
  if (TIMEOUT_CODES.has(code)) return new UpstreamError(registry, 'timeout', `upstream timed out (${code})`, { cause: error });
  if (UNREACHABLE_CODES.has(code)) return new UpstreamError(registry, 'unreachable', `upstream unreachable (${code})`, { cause: error });
  const message = error instanceof Error ? error.message : String(error);
  return new UpstreamError(registry, 'unreachable', `upstream request failed: ${message}`, { cause: error });
}

// Errors of a response body after its headers arrived. UND_ERR_ABORTED is missing on purpose: undici
// raises it when the agent itself destroys a body it no longer needs, which is no upstream failure.
const BODY_CUT_CODES = new Set(['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE']);
const BODY_TIMEOUT_CODES = new Set(['UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);

/** Why a response body failed while it streamed, or undefined when the failure was not upstream's. */
export function bodyFailure(error: unknown): BodyFailure | undefined {
  const code = errorCode(error);
  if (BODY_CUT_CODES.has(code)) return 'body_cut';
  if (BODY_TIMEOUT_CODES.has(code)) return 'body_timeout';
  return undefined;
}

/** The first error code on `error` or its causes ('' when none). */
export function errorCode(error: unknown): string {
  let current: unknown = error;
  for (let depth = 0; depth < 4 && current; depth += 1) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string' && code !== 'UND_ERR') return code;
    current = (current as { cause?: unknown }).cause;
  }
  return '';
}
