import { Agent, type Dispatcher, Pool, ProxyAgent } from 'undici';
import type { MirrorCa } from '../config/types.ts';
import type { DestinationPolicy } from './destination-policy.ts';
import { UpstreamError, fromTransportError } from './errors.ts';
import { guardedPoolFactory } from './guarded-connect.ts';
import type { OAuthTokenSource } from './oauth.ts';
import { tlsError, trustOptions } from './tls.ts';
import { discard } from './status.ts';

/** One request as the upstream client hands it to a route. */
export interface RouteRequest {
  readonly method: 'GET' | 'HEAD' | 'POST';
  readonly headers: Record<string, string>;
  readonly body?: string | Buffer;
  readonly headersTimeout: number;
  readonly bodyTimeout: number;
}

/**
 * How bytes travel to an upstream URL: directly, through a corporate forward proxy, or through
 * the SAP Connectivity Proxy. Each route keeps its own keep-alive pool.
 */
export interface Route {
  readonly kind: 'direct' | 'http-proxy' | 'connectivity-proxy';
  /** Where requests for redirects and token realms may go, enforced by the route where it connects (see DestinationPolicy). */
  readonly destinations: DestinationPolicy;
  send(registry: string, url: URL, request: RouteRequest): Promise<Dispatcher.ResponseData>;
  close(): Promise<void>;
}

const HIGH_WATER_MARK = 256 * 1024;

/**
 * Connections per upstream origin (and to a proxy): a node's pulls need a few, blob downloads are
 * bounded by max_fills_per_mirror; more requests than this wait in undici's queue instead of each
 * opening a socket to the upstream (or the tunnel).
 */
export const MAX_CONNECTIONS_PER_ORIGIN = 32;

/**
 * `ca`: the mirror's ca_file, trusted on top of the default roots for every https connection of this
 * route (upstream, token realms, redirect targets alike: they all serve this mirror). `destinations`:
 * checked against the address of every connection, after DNS (guardedPoolFactory).
 */
export class DirectRoute implements Route {
  readonly kind = 'direct';
  readonly destinations: DestinationPolicy;
  readonly #agent: Agent;
  readonly #ca: MirrorCa | undefined;

  constructor(connectTimeoutMs: number, ca: MirrorCa | undefined, destinations: DestinationPolicy) {
    this.#ca = ca;
    this.destinations = destinations;
    const factory = guardedPoolFactory(destinations, { connectTimeoutMs, trust: trustOptions(ca) });
    this.#agent = new Agent({ connectTimeout: connectTimeoutMs, keepAliveTimeout: 30_000, connections: MAX_CONNECTIONS_PER_ORIGIN, factory });
  }

  async send(registry: string, url: URL, request: RouteRequest): Promise<Dispatcher.ResponseData> {
    try {
      return await this.#agent.request({ origin: url.origin, path: `${url.pathname}${url.search}`, highWaterMark: HIGH_WATER_MARK, ...request });
    } catch (error) {
      throw tlsError(error, { registry, url, ca: this.#ca }) ?? fromTransportError(registry, error);
    }
  }

  close(): Promise<void> {
    return this.#agent.close();
  }
}

/**
 * A forward proxy: absolute-form requests for http:// upstreams, CONNECT tunnels for https://. TLS
 * runs end to end through the tunnel, so `ca` (the mirror's ca_file) applies to the upstream's
 * certificate (`requestTls`), never the proxy's. The agent connects to nobody but the proxy, so
 * `destinations` judges each target as it is sent (a literal, or a name as this node resolves it).
 */
export class HttpProxyRoute implements Route {
  readonly kind = 'http-proxy';
  readonly destinations: DestinationPolicy;
  readonly #agent: ProxyAgent;
  readonly #proxy: URL;
  readonly #ca: MirrorCa | undefined;

  constructor(proxy: URL, connectTimeoutMs: number, ca: MirrorCa | undefined, destinations: DestinationPolicy) {
    this.#proxy = proxy;
    this.#ca = ca;
    this.destinations = destinations;
    const requestTls = trustOptions(ca);
    this.#agent = new ProxyAgent({ uri: proxy.href, connectTimeout: connectTimeoutMs, keepAliveTimeout: 30_000, connections: MAX_CONNECTIONS_PER_ORIGIN, ...(requestTls ? { requestTls } : {}) });
  }

  async send(registry: string, url: URL, request: RouteRequest): Promise<Dispatcher.ResponseData> {
    await this.destinations.checkProxied(url);
    try {
      return await this.#agent.request({ origin: url.origin, path: `${url.pathname}${url.search}`, highWaterMark: HIGH_WATER_MARK, ...request });
    } catch (error) {
      const tls = tlsError(error, { registry, url, ca: this.#ca });
      if (tls) throw tls;
      const transport = fromTransportError(registry, error);
      // The agent connects to nobody but the proxy on this route: a refused connection or a name
      // that does not resolve is the proxy's.
      if (transport.refused || (transport.failure === 'unreachable' && /ENOTFOUND|EAI_AGAIN/.test(transport.message))) {
        const what = transport.refused ? 'refused the connection (nothing listens on that port)' : 'does not resolve';
        throw new UpstreamError(registry, 'proxy', `forward proxy ${this.#proxy.host} unreachable`, {
          cause: error,
          refused: transport.refused,
          diagnosis: { code: 'proxy_unreachable', cause: `the forward proxy ${this.#proxy.host} ${what}`, fix: 'check http_proxy in the mirror configuration and that the proxy runs' },
        });
      }
      if (/Proxy response \((\d+)\)/.test(String((error as Error).message))) {
        throw new UpstreamError(registry, 'proxy', `forward proxy ${this.#proxy.host} refused the tunnel`, {
          cause: error,
          diagnosis: { code: 'proxy_refused', cause: `the forward proxy refused CONNECT: ${(error as Error).message}`, fix: 'allow CONNECT to the upstream host and port on the proxy' },
        });
      }
      throw transport;
    }
  }

  close(): Promise<void> {
    return this.#agent.close();
  }
}

export interface ConnectivityProxyRouteOptions {
  readonly proxy: URL;
  readonly locationId: string | undefined;
  /** Non-trusted mode; undefined in trusted mode. */
  readonly tokens: OAuthTokenSource | undefined;
  readonly connectTimeoutMs: number;
  /** Scheme and credentials only on this route (see DestinationPolicy); nothing here is connected to but the proxy. */
  readonly destinations: DestinationPolicy;
}

export const LOCATION_ID_HEADER = 'SAP-Connectivity-SCC-Location_ID';

/**
 * The SAP Connectivity Proxy's HTTP port: a forward proxy taking absolute-form requests to
 * http:// virtual hosts of the Cloud Connector, with the Location ID header and, in non-trusted
 * mode, an OAuth bearer token as Proxy-Authorization (refreshed once on 407).
 */
export class ConnectivityProxyRoute implements Route {
  readonly kind = 'connectivity-proxy';
  readonly destinations: DestinationPolicy;
  readonly #pool: Pool;
  readonly #options: ConnectivityProxyRouteOptions;

  constructor(options: ConnectivityProxyRouteOptions) {
    this.#options = options;
    this.destinations = options.destinations;
    this.#pool = new Pool(options.proxy.origin, { connectTimeout: options.connectTimeoutMs, keepAliveTimeout: 30_000, connections: MAX_CONNECTIONS_PER_ORIGIN });
  }

  async send(registry: string, url: URL, request: RouteRequest): Promise<Dispatcher.ResponseData> {
    if (url.protocol !== 'http:') {
      // Config validation refuses https upstreams on this route; a redirect may still point at one.
      throw cpError(registry, 405, undefined, this.#options.locationId, url.host);
    }
    let response = await this.#once(registry, url, request, false);
    if (response.statusCode === 407 && this.#options.tokens) {
      await discard(response);
      response = await this.#once(registry, url, request, true);
    }
    const failure = proxyFailure(response, request.method);
    if (failure !== undefined) {
      const body = await response.body.text().catch(() => '');
      throw cpError(registry, failure, body, this.#options.locationId, url.host);
    }
    return response;
  }

  async #once(registry: string, url: URL, request: RouteRequest, refreshToken: boolean): Promise<Dispatcher.ResponseData> {
    const headers: Record<string, string> = { ...request.headers, host: url.host };
    if (this.#options.locationId) headers[LOCATION_ID_HEADER] = this.#options.locationId;
    if (this.#options.tokens) {
      try {
        headers['proxy-authorization'] = `Bearer ${await this.#options.tokens.token(refreshToken)}`;
      } catch (error) {
        throw new UpstreamError(registry, 'proxy', 'could not obtain a Connectivity Proxy token', {
          cause: error,
          diagnosis: {
            code: 'cp_auth_failed',
            cause: `the OAuth token endpoint for the Connectivity Proxy failed: ${(error as Error).message}`,
            fix: 'check [connectivity_proxy] token_url, client_id and client_secret_file (the connectivity service binding)',
          },
        });
      }
    }
    try {
      return await this.#pool.request({ ...request, headers, path: url.href, highWaterMark: HIGH_WATER_MARK });
    } catch (error) {
      const transport = fromTransportError(registry, error);
      if (transport.failure === 'unreachable') {
        const host = this.#options.proxy.host;
        // Refused: nothing listens there (proxy down, wrong port). Reset: something listens but drops
        // plain HTTP, which is what an Istio sidecar in mTLS STRICT mode does to a client without one.
        throw new UpstreamError(registry, 'proxy', `Connectivity Proxy ${host} unreachable`, {
          cause: error,
          refused: transport.refused,
          diagnosis: transport.refused
            ? {
                code: 'cp_unreachable',
                cause: `the Connectivity Proxy at ${host} refused the connection: nothing listens on that port (the proxy is down, or the url's port is wrong)`,
                fix: 'check [connectivity_proxy] url (the connectivity-proxy service, HTTP port 20003) and that the Connectivity Proxy pods run',
              }
            : {
                code: 'cp_unreachable',
                cause: `the Connectivity Proxy at ${host} reset the connection or does not resolve (${transport.message})`,
                fix: 'check [connectivity_proxy] url; with Istio mTLS STRICT the agent (hostNetwork, no sidecar) needs a PeerAuthentication making port 20003 PERMISSIVE',
              },
        });
      }
      throw transport;
    }
  }

  close(): Promise<void> {
    return this.#pool.close();
  }
}

/**
 * Answers that come from the Connectivity Proxy (or the Cloud Connector behind it) rather than the
 * registry, as the status to explain; undefined for the registry's own answers. 407 is never a
 * registry's; 405 is not a registry's answer to GET/HEAD (a token endpoint may answer a POST with
 * 405, and the puller's fallback needs it). 403 and 503 come from both: a registry answers them
 * with an OCI JSON error body, the proxy with its own plain text ("Access denied to system …",
 * "There is no SAP Cloud Connector (SCC) connected …"), so the media type tells them apart. That
 * holds for HEAD too, which has the headers but no body.
 */
function proxyFailure(response: Dispatcher.ResponseData, method: string): CpStatus | undefined {
  const status = response.statusCode;
  if (status === 407) return status;
  if (status === 405) return method === 'POST' ? undefined : status;
  if (status !== 403 && status !== 503) return undefined;
  const type = String(response.headers['content-type'] ?? '');
  return type.includes('json') ? undefined : status;
}

type CpStatus = 403 | 405 | 407 | 503;

/** The proxy's own words, shortened, for the cause; never more than a line of it. */
function quoted(body: string | undefined): string {
  const text = (body ?? '').replace(/\s+/g, ' ').trim().slice(0, 200);
  return text ? `: "${text}"` : '';
}

function cpError(registry: string, status: CpStatus, body: string | undefined, locationId: string | undefined, virtualHost: string): UpstreamError {
  const location = locationId ? `location ID "${locationId}"` : 'the default location (no location ID)';
  switch (status) {
    case 403:
      return new UpstreamError(registry, 'proxy', `Cloud Connector denied access to ${virtualHost} (403)`, {
        status,
        diagnosis: {
          code: 'cp_denied',
          cause: `the Cloud Connector for ${location} denied access to the virtual host ${virtualHost} (403 from the Connectivity Proxy, not the registry)${quoted(body)}`,
          fix: `expose ${virtualHost} in the Cloud Connector (Cloud To On-Premise > Access Control: virtual host and port exactly as in the mirror's upstream, protocol HTTP or HTTPS to the registry, resource path "/" with "Path and All Sub-Paths"), or correct the mirror's upstream`,
        },
      });
    case 405:
      return new UpstreamError(registry, 'proxy', 'Connectivity Proxy refused the request (405)', {
        status,
        diagnosis: {
          code: 'cp_https_refused',
          cause: 'the Connectivity Proxy HTTP port only forwards plain http:// requests to Cloud Connector virtual hosts',
          fix: 'use an http://<virtual-host>:<port> upstream as exposed in the Cloud Connector; the Cloud Connector does TLS to the real registry',
        },
      });
    case 407:
      return new UpstreamError(registry, 'proxy', 'Connectivity Proxy requires authentication (407)', {
        status,
        diagnosis: {
          code: 'cp_auth_failed',
          cause: 'the Connectivity Proxy runs in non-trusted mode and refused the token (or none was sent)',
          fix: 'configure [connectivity_proxy] token_url, client_id and client_secret_file from the connectivity service binding',
        },
      });
    case 503:
      return new UpstreamError(registry, 'proxy', `no Cloud Connector reachable for ${location} (503)`, {
        status,
        diagnosis: {
          code: 'cp_no_cloud_connector',
          cause: `no Cloud Connector is connected for ${location}${quoted(body)}`,
          fix: 'connect the Cloud Connector to the subaccount with this location ID, or fix location_id',
        },
      });
  }
}
