/**
 * OCI distribution error codes and the HTTP status the distribution spec pairs with each. OciError
 * is the wire form, built by the HTTP surface only (agent/http/errors.ts); the other modules throw
 * the domain errors below (and their own), which that one file translates.
 */
export const OCI_STATUS = {
  BLOB_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  MANIFEST_UNKNOWN: 404,
  MANIFEST_INVALID: 400,
  MANIFEST_BLOB_UNKNOWN: 404,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  TAG_INVALID: 400,
  SIZE_INVALID: 400,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  /** Not in the spec's table; distribution uses it for 416 on blob reads. */
  RANGE_INVALID: 416,
  /** distribution's errcode for an unavailable backend. */
  UNAVAILABLE: 503,
  /** distribution's errcode for an unexpected failure. */
  UNKNOWN: 500,
} as const;

export type OciErrorCode = keyof typeof OCI_STATUS;

export interface OciErrorOptions {
  readonly detail?: unknown;
  readonly cause?: unknown;
  /** Overrides the spec's status for this code (e.g. UNSUPPORTED for an unknown endpoint is a 404). */
  readonly status?: number;
  /** Extra response headers (e.g. WWW-Authenticate on 401, Retry-After on 503). */
  readonly headers?: Readonly<Record<string, string>>;
}

export class OciError extends Error {
  override readonly name = 'OciError';
  readonly code: OciErrorCode;
  readonly detail: unknown;
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;

  constructor(code: OciErrorCode, message: string, options: OciErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.detail = options.detail;
    this.status = options.status ?? OCI_STATUS[code];
    this.headers = options.headers ?? {};
  }

  /** The spec's JSON body. */
  toJSON(): { errors: Array<{ code: string; message: string; detail?: unknown }> } {
    const entry: { code: string; message: string; detail?: unknown } = { code: this.code, message: this.message };
    if (this.detail !== undefined) entry.detail = this.detail;
    return { errors: [entry] };
  }
}

/** What was wrong with a request as the protocol sees it (parsing); http/errors.ts picks code and status. */
export type RequestProblem =
  /** A repository name, or a path with encoded, escaped or empty segments. */
  | 'name'
  | 'tag'
  | 'digest'
  /** The `ns` query parameter (repeated, not percent-encoding, not a host[:port]). */
  | 'ns'
  /** Not an origin-form target (absolute-form, authority-form: proxy requests). */
  | 'target'
  /** A path this pull-only mirror does not serve. */
  | 'endpoint';

export class InvalidRequestError extends Error {
  override readonly name = 'InvalidRequestError';
  readonly problem: RequestProblem;
  readonly detail: unknown;

  constructor(problem: RequestProblem, message: string, options: { detail?: unknown; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.problem = problem;
    this.detail = options.detail;
  }
}

/** The registry (upstream) does not have this content in this repository, or will not say so to this requester. */
export class ContentUnknownError extends Error {
  override readonly name = 'ContentUnknownError';
  readonly kind: 'blob' | 'manifest';
  /** The digest, or the tag of a manifest. */
  readonly reference: string;

  constructor(kind: 'blob' | 'manifest', reference: string) {
    super(`${kind} unknown`);
    this.kind = kind;
    this.reference = reference;
  }
}
