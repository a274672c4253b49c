import type { Dispatcher } from 'undici';
import type { IncomingHttpHeaders } from 'node:http';
import type { DestinationRule } from '../config/types.ts';
import { type Challenge, parseChallenge } from './challenge.ts';
import { DestinationPolicy } from './destination-policy.ts';
import { DestinationRefusedError, UpstreamError, type UpstreamCause, bodyFailure } from './errors.ts';
import { DirectRoute, type Route } from './routes.ts';
import { TokenCache } from './tokens.ts';
import { discard } from './status.ts';

export interface UpstreamTimeouts {
  readonly connectMs: number;
  /** Until the response headers (first byte) arrive. */
  readonly headersMs: number;
  /** Longest silence while a body streams. */
  readonly bodyMs: number;
}

export const DEFAULT_TIMEOUTS: UpstreamTimeouts = { connectMs: 10_000, headersMs: 30_000, bodyMs: 60_000 };

export interface Credentials {
  readonly username: string;
  readonly password: string;
}

export interface UpstreamOptions {
  readonly registry: string;
  readonly base: URL;
  readonly credentials?: Credentials | undefined;
  readonly timeouts?: UpstreamTimeouts;
  /** How requests travel (default: direct). The client closes it. */
  readonly route?: Route;
  /** `passthrough`: the puller's own Authorization is forwarded and challenges go back to it. */
  readonly auth?: 'agent' | 'passthrough';
  /** Told about every request sent upstream (metrics). */
  readonly observe?: (observation: UpstreamObservation) => void;
  /**
   * The mirror's realm_map (route connectivity-proxy): token realm origin → origin it is reached at.
   * Applied only to realms the agent already may contact (a challenge answering its own request, or
   * a realm learned from one), so it can redirect them but never add one.
   */
  readonly realmMap?: Readonly<Record<string, string>> | undefined;
  /**
   * `allowed_destinations`, for the direct route the client builds itself when `route` is not
   * given; a given route brings its own DestinationPolicy.
   */
  readonly allowedDestinations?: readonly DestinationRule[] | undefined;
  /** Warnings about the agent's own credentials (a realm they are withheld from). */
  readonly log?: WarningLog | undefined;
}

/** Where the client's warnings go: the mirror's logger (pino), or a test's list. */
export interface WarningLog {
  warn(fields: object, message: string): void;
}

/**
 * One upstream exchange, for metrics and the "upstream failing" log: status (or failure cause) and
 * time to response headers (`phase: 'response'`); then, in addition, how its body ended
 * (`phase: 'body'`): whole (no cause), or broken off (`body_cut`, `body_timeout`).
 */
export interface UpstreamObservation {
  readonly registry: string;
  readonly route: string;
  /** Registry API, the agent's own token fetch, or a puller's token request forwarded (passthrough). */
  readonly purpose: 'registry' | 'token' | 'forwarded-token';
  readonly phase: 'response' | 'body';
  readonly status: number | undefined;
  /** Set when no usable answer came: a failure kind, or a route diagnosis code (cp_*, proxy_*). */
  readonly cause: UpstreamCause | undefined;
  /** With a cause: what happened, in words for the node's admin (never credentials). */
  readonly detail?: string;
  /** With a route diagnosis: how to fix it. */
  readonly fix?: string;
  readonly seconds: number;
}

export interface UpstreamResponse {
  readonly status: number;
  readonly headers: IncomingHttpHeaders;
  readonly body: Dispatcher.ResponseData['body'];
  /** The URL that finally answered (after redirects). */
  readonly url: URL;
}

const MAX_REDIRECTS = 5;
const RETRY_PAUSE_MS = 200;
const REDIRECTS = new Set([301, 302, 303, 307, 308]);

/**
 * Talks to one mirror's upstream registry: resolves paths against the base URL, answers auth
 * challenges with the mirror's credentials (Basic, or a Bearer token from the challenge's realm),
 * and follows redirects itself, never carrying Authorization to another origin. Redirect targets
 * and realms go only where the route's DestinationPolicy allows: checked here by URL before
 * anything is sent, and by the route by address where it connects.
 */
export class UpstreamClient {
  readonly registry: string;
  readonly base: URL;
  readonly #credentials: Credentials | undefined;
  readonly #timeouts: UpstreamTimeouts;
  readonly route: Route;
  readonly authMode: 'agent' | 'passthrough';
  readonly #tokens = new TokenCache();
  readonly #observe: ((observation: UpstreamObservation) => void) | undefined;
  readonly #realmMap: Readonly<Record<string, string>>;
  readonly #log: WarningLog | undefined;
  /** Realm origins already warned about (credentials withheld), so that the warning comes once. */
  readonly #withheldWarned = new Set<string>();
  #basicChallenged = false;

  constructor(options: UpstreamOptions) {
    this.registry = options.registry;
    this.base = options.base;
    this.#credentials = options.credentials;
    this.#timeouts = options.timeouts ?? DEFAULT_TIMEOUTS;
    this.route =
      options.route ??
      new DirectRoute(this.#timeouts.connectMs, undefined, new DestinationPolicy({ registry: options.registry, upstream: options.base, route: 'direct', allowed: options.allowedDestinations }));
    this.authMode = options.auth ?? 'agent';
    this.#observe = options.observe;
    this.#realmMap = options.realmMap ?? {};
    this.#log = options.log;
  }

  /** Where redirects and realms may go: the route's policy (one per mirror). */
  get destinations(): DestinationPolicy {
    return this.route.destinations;
  }

  /** Builds the upstream URL for a registry API path such as `/v2/team/app/manifests/1.0`. */
  url(apiPath: string): URL {
    const url = new URL(this.base.href);
    url.pathname = `${this.base.pathname.replace(/\/$/, '')}${apiPath}`;
    return url;
  }

  /**
   * Sends a GET or HEAD. `scope` is the token scope to ask for on a Bearer challenge
   * (`repository:<name>:pull`). The caller owns the returned body and must consume or destroy it.
   */
  async request(
    method: 'GET' | 'HEAD',
    apiPath: string,
    scope: string,
    headers: Record<string, string> = {},
    clientAuthorization?: string,
    options: { probe?: boolean } = {},
  ): Promise<UpstreamResponse> {
    if (this.authMode === 'passthrough' || options.probe) {
      // The puller's credential goes to the upstream origin only; a 401 goes back to the puller.
      return this.#send(method, this.url(apiPath), headers, clientAuthorization);
    }
    let response = await this.#send(method, this.url(apiPath), headers, this.#authorization(scope));
    if (response.status === 401 && this.#credentialsCanHelp(response)) {
      const challenge = parseChallenge(firstHeader(response.headers['www-authenticate']));
      await discard(response);
      const authorization = await this.#answer(challenge, scope);
      response = await this.#send(method, this.url(apiPath), headers, authorization);
    }
    return response;
  }

  /**
   * Forwards a puller's token request to a realm learned from this upstream's challenges
   * (passthrough), at the origin realm_map names for it if any.
   */
  async forwardTokenRequest(realm: URL, method: 'GET' | 'POST', headers: Record<string, string>, body: Buffer | undefined): Promise<UpstreamResponse> {
    this.destinations.checkUrl(realm);
    const target = this.#realmTarget(realm);
    const response = await this.#timed('forwarded-token', () => {
      this.#refuseUnroutableRealm(target);
      return this.route.send(this.registry, target, {
        method,
        headers: { ...headers, 'user-agent': 'registry-proxy-agent' },
        ...(body ? { body } : {}),
        headersTimeout: this.#timeouts.headersMs,
        bodyTimeout: this.#timeouts.bodyMs,
      });
    });
    return { status: response.statusCode, headers: response.headers, body: response.body, url: target };
  }

  /** Where a realm is contacted: its own URL, or the same path and query at the origin realm_map maps it to. */
  #realmTarget(realm: URL): URL {
    const mapped = this.#realmMap[realm.origin];
    return mapped === undefined ? realm : new URL(`${mapped}${realm.pathname}${realm.search}`);
  }

  /**
   * GET and HEAD are safe to repeat: one more try after a short pause when the connection failed
   * before any response (a stale keep-alive socket, a proxy restarting). Timeouts are not retried:
   * that would double the wait of every puller.
   */
  async #withRetry(send: () => Promise<Dispatcher.ResponseData>): Promise<Dispatcher.ResponseData> {
    try {
      return await send();
    } catch (error) {
      const retryable = error instanceof UpstreamError && (error.failure === 'unreachable' || error.diagnosis?.code === 'cp_unreachable');
      if (!retryable) throw error;
      await new Promise((resolve) => setTimeout(resolve, RETRY_PAUSE_MS));
      return send();
    }
  }

  async #timed(purpose: UpstreamObservation['purpose'], send: () => Promise<Dispatcher.ResponseData>): Promise<Dispatcher.ResponseData> {
    const started = performance.now();
    const report = (phase: UpstreamObservation['phase'], status: number | undefined, cause: UpstreamCause | undefined, explained: { detail?: string; fix?: string } = {}): void =>
      this.#observe?.({ registry: this.registry, route: this.route.kind, purpose, phase, status, cause, ...explained, seconds: (performance.now() - started) / 1000 });
    let response: Dispatcher.ResponseData;
    try {
      response = await send();
    } catch (error) {
      // Nothing was sent: counted and logged as a refusal by the policy, not as an upstream failure.
      if (error instanceof DestinationRefusedError) throw error;
      if (error instanceof UpstreamError) {
        const fix = error.diagnosis?.fix;
        report('response', undefined, error.upstreamCause, { detail: error.diagnosis?.cause ?? error.message, ...(fix ? { fix } : {}) });
      } else {
        report('response', undefined, 'unreachable', { detail: error instanceof Error ? error.message : String(error) });
      }
      throw error;
    }
    const status = response.statusCode;
    report('response', status, status >= 500 ? 'status_5xx' : undefined, status >= 500 ? { detail: `upstream answered ${status}` } : {});
    // Whoever reads the body sees its errors too; these listeners only report how it ended, so a
    // body that upstream breaks off (a cut connection, a silence past upstream_idle_timeout) counts
    // even though the exchange was already reported as answered. A body the agent abandons itself
    // (UND_ERR_ABORTED) reports nothing.
    response.body.once('end', () => report('body', status, undefined));
    response.body.on('error', (error: unknown) => {
      const cause = bodyFailure(error);
      if (!cause) return;
      const what = cause === 'body_cut' ? 'the connection broke off' : `upstream sent nothing for ${this.#timeouts.bodyMs} ms (upstream_idle_timeout)`;
      report('body', status, cause, { detail: `${what} while the response body streamed (${(error as Error).message})` });
    });
    return response;
  }

  async close(): Promise<void> {
    await this.route.close();
  }

  /**
   * The Connectivity Proxy forwards only http:// requests to Cloud Connector virtual hosts, and on
   * that route the agent reaches nothing except through it: a registry whose challenge names an
   * https:// token realm (not mapped by realm_map) cannot hand out tokens here. Said with the realm's
   * URL, because the route's generic 405 explanation (an https upstream) would send the admin to a
   * setting that is right.
   */
  #refuseUnroutableRealm(realm: URL): void {
    if (this.route.kind !== 'connectivity-proxy' || realm.protocol === 'http:') return;
    const where = `${realm.origin}${realm.pathname}`;
    throw new UpstreamError(this.registry, 'proxy', `token realm ${where} cannot be reached through the Connectivity Proxy`, {
      diagnosis: {
        code: 'cp_https_refused',
        cause: `the registry's token realm ${where} is an https:// URL, and the Connectivity Proxy HTTP port only forwards plain http:// requests to Cloud Connector virtual hosts`,
        fix:
          `expose the token server in the Cloud Connector as a virtual host and map the token realm's origin to it in mirror ${this.registry}'s realm_map: ` +
          `[mirror.realm_map] "${realm.origin}" = "http://<virtual-host>:<port>" (the Cloud Connector does TLS to the real token server)`,
      },
    });
  }

  #credentialsCanHelp(response: UpstreamResponse): boolean {
    const challenge = parseChallenge(firstHeader(response.headers['www-authenticate']));
    if (!challenge) return false;
    if (challenge.scheme === 'bearer') return true;
    return challenge.scheme === 'basic' && this.#credentials !== undefined;
  }

  #authorization(scope: string): string | undefined {
    const token = this.#tokens.get(scope);
    if (token) return `Bearer ${token}`;
    if (this.#basicChallenged && this.#credentials) return basic(this.#credentials);
    return undefined;
  }

  async #answer(challenge: Challenge | undefined, scope: string): Promise<string | undefined> {
    if (challenge?.scheme === 'basic') {
      this.#basicChallenged = true;
      return this.#credentials ? basic(this.#credentials) : undefined;
    }
    if (challenge?.scheme !== 'bearer') return undefined;
    const token = await this.#fetchToken(challenge, scope);
    return `Bearer ${token}`;
  }

  async #fetchToken(challenge: Challenge, scope: string): Promise<string> {
    const realm = challenge.params['realm'];
    if (!realm) throw new UpstreamError(this.registry, 'invalid', 'Bearer challenge without realm');
    let url: URL;
    try {
      url = new URL(realm, this.base);
    } catch (cause) {
      throw new UpstreamError(this.registry, 'invalid', 'Bearer challenge realm is not a URL', { cause });
    }
    this.destinations.checkUrl(url);
    const service = challenge.params['service'];
    if (service) url.searchParams.set('service', service);
    url.searchParams.set('scope', challenge.params['scope'] ?? scope);
    const target = this.#realmTarget(url);
    // Credentials go as #send's authorization, which is only sent to the origin contacted first (the
    // realm, or where realm_map maps it), never across redirects.
    const response = await this.#send('GET', target, { accept: 'application/json' }, this.#realmAuthorization(target), 'token');
    if (response.status !== 200) {
      await discard(response);
      throw new UpstreamError(this.registry, 'status', `token endpoint answered ${response.status}`, { status: response.status });
    }
    let parsed: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      parsed = (await response.body.json()) as typeof parsed;
    } catch (cause) {
      throw new UpstreamError(this.registry, 'invalid', 'token endpoint returned invalid JSON', { cause });
    }
    const token = typeof parsed.token === 'string' ? parsed.token : typeof parsed.access_token === 'string' ? parsed.access_token : undefined;
    if (!token) throw new UpstreamError(this.registry, 'invalid', 'token endpoint returned no token');
    const expiresIn = typeof parsed.expires_in === 'number' && parsed.expires_in > 0 ? parsed.expires_in : 60;
    this.#tokens.set(scope, token, expiresIn * 1000);
    return token;
  }

  /**
   * The agent's Basic credentials for a token realm, only over the upstream's scheme or a stronger
   * one: whoever can answer in an https upstream's name must not harvest them by naming an http://
   * realm, where they would cross the network in clear. Such a realm is asked without them
   * (anonymous tokens still work), and the admin is told once per realm why.
   */
  #realmAuthorization(realm: URL): string | undefined {
    if (!this.#credentials) return undefined;
    if (this.base.protocol !== 'https:' || realm.protocol === 'https:') return basic(this.#credentials);
    if (!this.#withheldWarned.has(realm.origin)) {
      if (this.#withheldWarned.size >= 64) this.#withheldWarned.clear();
      this.#withheldWarned.add(realm.origin);
      this.#log?.warn(
        { registry: this.registry, realm: `${realm.origin}${realm.pathname}`, upstream: this.base.origin },
        'token realm is plain http:// while the upstream is https://: asking it without the agent credentials (they would travel in clear); ' +
          'fix the registry to announce an https:// realm if it needs them',
      );
    }
    return undefined;
  }

  /** One request, following redirects for GET; Authorization only ever goes to the origin it was meant for. */
  async #send(
    method: 'GET' | 'HEAD',
    url: URL,
    headers: Record<string, string>,
    authorization: string | undefined,
    purpose: 'registry' | 'token' = 'registry',
  ): Promise<UpstreamResponse> {
    let current = url;
    for (let hop = 0; ; hop += 1) {
      const sendHeaders: Record<string, string> = { ...headers, 'user-agent': 'registry-proxy-agent' };
      if (authorization && current.origin === url.origin) sendHeaders['authorization'] = authorization;
      const target = current;
      const response = await this.#withRetry(() =>
        this.#timed(purpose, () => {
          if (purpose === 'token' && hop === 0) this.#refuseUnroutableRealm(target);
          return this.route.send(this.registry, target, { method, headers: sendHeaders, headersTimeout: this.#timeouts.headersMs, bodyTimeout: this.#timeouts.bodyMs });
        }),
      );
      const location = firstHeader(response.headers['location']);
      if (!REDIRECTS.has(response.statusCode) || !location) {
        return { status: response.statusCode, headers: response.headers, body: response.body, url: current };
      }
      await discard(response);
      if (hop >= MAX_REDIRECTS) throw new UpstreamError(this.registry, 'redirect', `more than ${MAX_REDIRECTS} redirects`);
      current = this.#redirectTarget(current, location);
    }
  }

  #redirectTarget(from: URL, location: string): URL {
    let next: URL;
    try {
      next = new URL(location, from);
    } catch (cause) {
      throw new UpstreamError(this.registry, 'redirect', 'redirect Location is not a URL', { cause });
    }
    this.destinations.checkUrl(next);
    return next;
  }
}

export function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function basic(credentials: Credentials): string {
  return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
}
