import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ClientCredentialsTokenSource } from './oauth.ts';

/** An XSUAA-like token endpoint: client_credentials form in, a numbered token out; answers as told. */
interface Endpoint {
  forms: URLSearchParams[];
  answer: { status: number; body: unknown };
}

describe('ClientCredentialsTokenSource', () => {
  let server: Server;
  let url: URL;
  const endpoint: Endpoint = { forms: [], answer: { status: 200, body: {} } };
  let clock = 0;
  const now = (): number => clock;

  beforeAll(async () => {
    server = createServer((req, res) => {
      let text = '';
      req.setEncoding('utf8');
      req.on('data', (chunk: string) => (text += chunk));
      req.on('end', () => {
        endpoint.forms.push(new URLSearchParams(text));
        const { status, body } = endpoint.answer;
        const payload = typeof body === 'function' ? (body as (n: number) => unknown)(endpoint.forms.length) : body;
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(payload));
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/oauth/token`);
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  beforeEach(() => {
    endpoint.forms = [];
    endpoint.answer = { status: 200, body: (n: number) => ({ access_token: `t${n}`, token_type: 'bearer', expires_in: 120 }) };
    clock = 1_000_000;
  });

  const source = (): ClientCredentialsTokenSource => new ClientCredentialsTokenSource({ tokenUrl: url, clientId: 'sb-agent', clientSecret: 's3cr$t=' }, 60_000, now);

  it('posts the client-credentials form, caches the token until the margin before expiry, then fetches a new one', async () => {
    const tokens = source();
    expect(await tokens.token(false)).toBe('t1');
    expect(Object.fromEntries(endpoint.forms[0]!)).toEqual({ grant_type: 'client_credentials', client_id: 'sb-agent', client_secret: 's3cr$t=' });
    clock += 59_999; // expires in 120 s; replaced 60 s before
    expect(await tokens.token(false)).toBe('t1');
    clock += 1;
    expect(await tokens.token(false)).toBe('t2');
    expect(endpoint.forms).toHaveLength(2);
  });

  it('fetches once for concurrent callers, and again when forced (after a 407)', async () => {
    const tokens = source();
    expect(await Promise.all([tokens.token(false), tokens.token(false), tokens.token(false)])).toEqual(['t1', 't1', 't1']);
    expect(await tokens.token(true)).toBe('t2');
    expect(await tokens.token(false)).toBe('t2');
    expect(endpoint.forms).toHaveLength(2);
  });

  it('fails on a refused or empty answer without caching the failure', async () => {
    const tokens = source();
    endpoint.answer = { status: 401, body: { error: 'invalid_client' } };
    await expect(tokens.token(false)).rejects.toThrow('token endpoint answered 401');
    endpoint.answer = { status: 200, body: { token_type: 'bearer' } };
    await expect(tokens.token(false)).rejects.toThrow('no access_token');
    endpoint.answer = { status: 200, body: () => ({ access_token: 'good' }) };
    expect(await tokens.token(false)).toBe('good');
    expect(endpoint.forms).toHaveLength(3);
  });

  it('assumes 300 s when expires_in is missing', async () => {
    const tokens = source();
    endpoint.answer = { status: 200, body: (n: number) => ({ access_token: `t${n}` }) };
    expect(await tokens.token(false)).toBe('t1');
    clock += 239_999;
    expect(await tokens.token(false)).toBe('t1');
    clock += 1;
    expect(await tokens.token(false)).toBe('t2');
  });
});
