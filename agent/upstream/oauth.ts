import { request } from 'undici';
import { discard } from './status.ts';

/** Supplies a bearer token, cached until shortly before it expires. */
export interface OAuthTokenSource {
  /** `refresh` forces a new token (after a 407). */
  token(refresh: boolean): Promise<string>;
}

export interface ClientCredentials {
  readonly tokenUrl: URL;
  readonly clientId: string;
  readonly clientSecret: string;
}

/** OAuth2 client-credentials grant (RFC 6749 §4.4) with single-flight refresh. */
export class ClientCredentialsTokenSource implements OAuthTokenSource {
  readonly #credentials: ClientCredentials;
  readonly #marginMs: number;
  readonly #now: () => number;
  #cached: { token: string; expiresAt: number } | undefined;
  #inflight: Promise<string> | undefined;

  /** `marginMs`: a token is replaced this long before it expires; `now`: the clock (tests). */
  constructor(credentials: ClientCredentials, marginMs = 60_000, now: () => number = Date.now) {
    this.#credentials = credentials;
    this.#marginMs = marginMs;
    this.#now = now;
  }

  token(refresh: boolean): Promise<string> {
    if (refresh) this.#cached = undefined;
    const cached = this.#cached;
    if (cached && cached.expiresAt - this.#marginMs > this.#now()) return Promise.resolve(cached.token);
    this.#inflight ??= this.#fetch().finally(() => {
      this.#inflight = undefined;
    });
    return this.#inflight;
  }

  async #fetch(): Promise<string> {
    const { tokenUrl, clientId, clientSecret } = this.#credentials;
    const response = await request(tokenUrl, {
      method: 'POST',
      // client_secret_post: unambiguous for secrets with characters that Basic would need encoded
      // (XSUAA secrets contain '$' and '='), and accepted by XSUAA.
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body: new URLSearchParams({ grant_type: 'client_credentials', client_id: clientId, client_secret: clientSecret }).toString(),
      headersTimeout: 15_000,
      bodyTimeout: 15_000,
    });
    if (response.statusCode !== 200) {
      await discard(response);
      throw new Error(`token endpoint answered ${response.statusCode}`);
    }
    const parsed = (await response.body.json().catch(() => ({}))) as { access_token?: unknown; expires_in?: unknown };
    if (typeof parsed.access_token !== 'string' || parsed.access_token === '') throw new Error('token endpoint returned no access_token');
    const expiresIn = typeof parsed.expires_in === 'number' && parsed.expires_in > 0 ? parsed.expires_in : 300;
    this.#cached = { token: parsed.access_token, expiresAt: this.#now() + expiresIn * 1000 };
    return parsed.access_token;
  }
}
