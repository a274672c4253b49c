import { type IncomingHttpHeaders, type IncomingMessage, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseDestinations } from '../config/destinations.ts';
import { type Credentials, UpstreamClient, type UpstreamTimeouts } from './client.ts';
import { UpstreamError, type UpstreamFailure } from './errors.ts';

interface Seen {
  readonly method: string;
  readonly path: string;
  readonly headers: IncomingHttpHeaders;
}

interface TestServer {
  readonly url: URL;
  readonly seen: Seen[];
  /** Requests whose path starts with `prefix`. */
  hits(prefix: string): Seen[];
  close(): Promise<void>;
}

type Handler = (req: IncomingMessage, res: ServerResponse, server: TestServer) => void;

const running: TestServer[] = [];
const clients: UpstreamClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
  await Promise.all(running.splice(0).map((server) => server.close()));
});

/** A real HTTP server on a random loopback port that records every request. */
async function serve(handler: Handler): Promise<TestServer> {
  const seen: Seen[] = [];
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, resolve);
  });
  const { port } = server.address() as AddressInfo;
  const handle: TestServer = {
    url: new URL(`http://127.0.0.1:${port}/`),
    seen,
    hits: (prefix) => seen.filter((s) => s.path.startsWith(prefix)),
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    seen.push({ method: req.method ?? '', path: req.url ?? '', headers: req.headers });
    // Bodies are drained so keep-alive connections stay usable.
    req.resume();
    handler(req, res, handle);
  });
  running.push(handle);
  return handle;
}

/**
 * Token servers and storage run on other loopback ports than the registry here: listed, as an
 * admin would list them (the destination policy itself is tested in destination.test.ts).
 */
const LOOPBACK_ALLOWED = parseDestinations(['127.0.0.0/8']);

function newClient(base: URL, options: { credentials?: Credentials; timeouts?: UpstreamTimeouts } = {}): UpstreamClient {
  const client = new UpstreamClient({ registry: 'upstream.test', base, allowedDestinations: LOOPBACK_ALLOWED, ...options });
  clients.push(client);
  return client;
}

function basic(credentials: Credentials): string {
  return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
}

function send(res: ServerResponse, status: number, body = '', headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'text/plain', 'content-length': String(Buffer.byteLength(body)), ...headers });
  res.end(body);
}

async function failureOf(promise: Promise<unknown>): Promise<{ failure: UpstreamFailure; status: number | undefined; message: string }> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(UpstreamError);
    const { failure, status, message } = error as UpstreamError;
    return { failure, status, message };
  }
  throw new Error('expected the request to fail');
}

const CREDENTIALS: Credentials = { username: 'puller', password: 'p@ss:wörd' };
const SCOPE = 'repository:team/app:pull';

/** A registry that wants Basic credentials on every request. */
function basicRegistry(routes: Handler = (_req, res) => send(res, 200, 'ok')): Handler {
  return (req, res, server) => {
    if (req.headers.authorization !== basic(CREDENTIALS)) {
      send(res, 401, '{"errors":[{"code":"UNAUTHORIZED"}]}', { 'www-authenticate': 'Basic realm="registry"' });
      return;
    }
    routes(req, res, server);
  };
}

describe('UpstreamClient', () => {
  it('resolves API paths against the base URL, keeping a path prefix', () => {
    const client = newClient(new URL('https://mirror.example:8443/prefix/'));
    expect(client.url('/v2/team/app/manifests/1.0').href).toBe('https://mirror.example:8443/prefix/v2/team/app/manifests/1.0');
    expect(newClient(new URL('https://mirror.example')).url('/v2/').href).toBe('https://mirror.example/v2/');
  });

  describe('Basic challenges', () => {
    it('answers with the credentials, then sends them up front', async () => {
      const registry = await serve(basicRegistry());
      const client = newClient(registry.url, { credentials: CREDENTIALS });
      const first = await client.request('GET', '/v2/', SCOPE);
      expect(first.status).toBe(200);
      expect(await first.body.text()).toBe('ok');
      expect(registry.seen.map((s) => s.headers.authorization)).toEqual([undefined, basic(CREDENTIALS)]);

      const second = await client.request('HEAD', '/v2/team/app/manifests/1.0', SCOPE);
      expect(second.status).toBe(200);
      await second.body.dump();
      expect(registry.seen).toHaveLength(3);
      expect(registry.seen[2]).toMatchObject({ method: 'HEAD', path: '/v2/team/app/manifests/1.0', headers: { authorization: basic(CREDENTIALS) } });
    });

    it('hands the 401 back when it has no credentials', async () => {
      const registry = await serve(basicRegistry());
      const client = newClient(registry.url);
      const response = await client.request('GET', '/v2/', SCOPE);
      expect(response.status).toBe(401);
      await response.body.dump();
      expect(registry.seen).toHaveLength(1);
    });

    it('hands back a 401 that the credentials do not fix, without looping', async () => {
      const registry = await serve((_req, res) => send(res, 401, '', { 'www-authenticate': 'Basic realm="registry"' }));
      const client = newClient(registry.url, { credentials: CREDENTIALS });
      const response = await client.request('GET', '/v2/', SCOPE);
      expect(response.status).toBe(401);
      await response.body.dump();
      expect(registry.seen).toHaveLength(2);
    });

    it('sends caller headers with every attempt', async () => {
      const registry = await serve(basicRegistry());
      const client = newClient(registry.url, { credentials: CREDENTIALS });
      const response = await client.request('GET', '/v2/', SCOPE, { accept: 'application/vnd.oci.image.index.v1+json' });
      await response.body.dump();
      expect(registry.seen.map((s) => s.headers.accept)).toEqual(['application/vnd.oci.image.index.v1+json', 'application/vnd.oci.image.index.v1+json']);
      expect(registry.seen.map((s) => s.headers['user-agent'])).toEqual(['registry-proxy-agent', 'registry-proxy-agent']);
    });
  });

  describe('Bearer challenges', () => {
    /** A token server that wants the Basic credentials and issues `token-<n>` per request. */
    async function tokenServer(body: (n: number) => string = (n) => JSON.stringify({ token: `token-${n}`, expires_in: 300 })): Promise<TestServer> {
      let issued = 0;
      return serve((req, res) => {
        if (req.headers.authorization !== basic(CREDENTIALS)) {
          send(res, 401);
          return;
        }
        issued += 1;
        send(res, 200, body(issued), { 'content-type': 'application/json' });
      });
    }

    /** A registry that challenges for `repository:<name>:pull` and accepts any token its token server issued. */
    async function bearerRegistry(realm: URL, routes: Handler = (_req, res) => send(res, 200, 'ok')): Promise<TestServer> {
      return serve((req, res, server) => {
        if (!req.headers.authorization?.startsWith('Bearer token-')) {
          const name = /^\/v2\/(.+)\/(?:manifests|blobs)\//.exec(req.url ?? '')?.[1] ?? 'none';
          send(res, 401, '', { 'www-authenticate': `Bearer realm="${realm.href}",service="registry.test",scope="repository:${name}:pull"` });
          return;
        }
        routes(req, res, server);
      });
    }

    it('fetches a token from the realm with the credentials, and caches it per scope', async () => {
      const tokens = await tokenServer();
      const registry = await bearerRegistry(new URL('/token', tokens.url));
      const client = newClient(registry.url, { credentials: CREDENTIALS });

      const first = await client.request('GET', '/v2/team/app/manifests/1.0', SCOPE);
      expect(first.status).toBe(200);
      await first.body.dump();
      expect(tokens.seen).toHaveLength(1);
      const tokenRequest = new URL(tokens.seen[0]!.path, tokens.url);
      expect(tokenRequest.pathname).toBe('/token');
      expect(tokenRequest.searchParams.get('service')).toBe('registry.test');
      expect(tokenRequest.searchParams.get('scope')).toBe('repository:team/app:pull');
      expect(tokens.seen[0]!.headers.authorization).toBe(basic(CREDENTIALS));
      expect(registry.seen.map((s) => s.headers.authorization)).toEqual([undefined, 'Bearer token-1']);

      // Same scope: the cached token goes along at once; the token endpoint is not asked again.
      const second = await client.request('GET', '/v2/team/app/blobs/sha256:0', SCOPE);
      await second.body.dump();
      expect(second.status).toBe(200);
      expect(tokens.seen).toHaveLength(1);
      expect(registry.seen.map((s) => s.headers.authorization)).toEqual([undefined, 'Bearer token-1', 'Bearer token-1']);

      // Another scope needs a token of its own.
      const other = await client.request('GET', '/v2/team/other/manifests/1.0', 'repository:team/other:pull');
      await other.body.dump();
      expect(tokens.seen).toHaveLength(2);
      expect(new URL(tokens.seen[1]!.path, tokens.url).searchParams.get('scope')).toBe('repository:team/other:pull');
      expect(registry.seen.at(-1)?.headers.authorization).toBe('Bearer token-2');
    });

    it('accepts access_token and fetches anonymously without credentials', async () => {
      const tokens = await serve((_req, res) => send(res, 200, JSON.stringify({ access_token: 'token-anon' }), { 'content-type': 'application/json' }));
      const registry = await bearerRegistry(new URL('/token', tokens.url));
      const client = newClient(registry.url);
      const response = await client.request('GET', '/v2/library/alpine/manifests/3.20', 'repository:library/alpine:pull');
      expect(response.status).toBe(200);
      await response.body.dump();
      expect(tokens.seen[0]!.headers.authorization).toBeUndefined();
      expect(registry.seen.at(-1)?.headers.authorization).toBe('Bearer token-anon');
    });

    it('resolves a relative realm against the base URL', async () => {
      const registry = await serve((req, res) => {
        if (req.url?.startsWith('/token')) {
          send(res, 200, JSON.stringify({ token: 'token-same-host' }), { 'content-type': 'application/json' });
        } else if (req.headers.authorization === 'Bearer token-same-host') {
          send(res, 200, 'ok');
        } else {
          send(res, 401, '', { 'www-authenticate': 'Bearer realm="/token",service="registry.test"' });
        }
      });
      const client = newClient(registry.url);
      const response = await client.request('GET', '/v2/team/app/manifests/1.0', SCOPE);
      expect(response.status).toBe(200);
      await response.body.dump();
      // Without a scope in the challenge, the caller's scope is asked for.
      expect(new URL(registry.hits('/token')[0]!.path, registry.url).searchParams.get('scope')).toBe(SCOPE);
    });

    it.each<[string, number, string, UpstreamFailure]>([
      ['garbage JSON', 200, '{"token": ', 'invalid'],
      ['HTML', 200, '<html>sign in</html>', 'invalid'],
      ['JSON without a token', 200, '{"expires_in": 300}', 'invalid'],
      ['an empty token', 200, '{"token": ""}', 'invalid'],
      ['a numeric token', 200, '{"token": 42}', 'invalid'],
      ['a server error', 500, '{"token": "x"}', 'status'],
      ['a refusal', 403, '', 'status'],
    ])('fails when the token endpoint answers %s', async (_label, status, body, failure) => {
      const tokens = await serve((_req, res) => send(res, status, body, { 'content-type': 'application/json' }));
      const registry = await bearerRegistry(new URL('/token', tokens.url));
      const client = newClient(registry.url, { credentials: CREDENTIALS });
      const result = await failureOf(client.request('GET', '/v2/team/app/manifests/1.0', SCOPE));
      expect(result.failure).toBe(failure);
      if (failure === 'status') expect(result.status).toBe(status);
      expect(registry.seen).toHaveLength(1);
    });

    it.each<[string, string, UpstreamFailure]>([
      ['no realm', 'Bearer service="registry.test"', 'invalid'],
      ['an empty realm', 'Bearer realm="",service="registry.test"', 'invalid'],
      ['a non-HTTP realm', 'Bearer realm="ftp://127.0.0.1/token"', 'destination'],
      ['an unparseable realm', 'Bearer realm="http://[oops/token"', 'invalid'],
    ])('fails on a challenge with %s', async (_label, challenge, failure) => {
      const registry = await serve((_req, res) => send(res, 401, '', { 'www-authenticate': challenge }));
      const client = newClient(registry.url, { credentials: CREDENTIALS });
      expect((await failureOf(client.request('GET', '/v2/', SCOPE))).failure).toBe(failure);
    });

    it('does not send the token to a storage origin it is redirected to', async () => {
      const storage = await serve((_req, res) => send(res, 200, 'layer bytes'));
      const tokens = await tokenServer();
      const registry = await bearerRegistry(new URL('/token', tokens.url), (_req, res) =>
        send(res, 307, '', { location: new URL('/blob?sig=abc', storage.url).href }),
      );
      const client = newClient(registry.url, { credentials: CREDENTIALS });
      const response = await client.request('GET', '/v2/team/app/blobs/sha256:0', SCOPE);
      expect(response.status).toBe(200);
      expect(await response.body.text()).toBe('layer bytes');
      expect(storage.seen).toEqual([expect.objectContaining({ path: '/blob?sig=abc' })]);
      expect(storage.seen[0]!.headers.authorization).toBeUndefined();
    });

    it('does not send the Basic credentials to another origin the token endpoint redirects to', async () => {
      const elsewhere = await serve((_req, res) => send(res, 200, JSON.stringify({ token: 'token-elsewhere' }), { 'content-type': 'application/json' }));
      const tokens = await serve((req, res) => send(res, 302, '', { location: new URL(req.url ?? '/', elsewhere.url).href }));
      const registry = await serve((req, res) => {
        if (req.headers.authorization === 'Bearer token-elsewhere') send(res, 200, 'ok');
        else send(res, 401, '', { 'www-authenticate': `Bearer realm="${new URL('/token', tokens.url).href}",service="registry.test"` });
      });
      const client = newClient(registry.url, { credentials: CREDENTIALS });
      const response = await client.request('GET', '/v2/team/app/manifests/1.0', SCOPE);
      expect(response.status).toBe(200);
      await response.body.dump();
      expect(tokens.seen[0]!.headers.authorization).toBe(basic(CREDENTIALS));
      expect(elsewhere.seen).toHaveLength(1);
      expect(elsewhere.seen[0]!.headers.authorization).toBeUndefined();
    });
  });

  describe('redirects', () => {
    it('follows a redirect to another origin without Authorization', async () => {
      const storage = await serve((_req, res) => send(res, 200, 'layer bytes'));
      const registry = await serve(basicRegistry((_req, res) => send(res, 302, '', { location: new URL('/blob?sig=abc', storage.url).href })));
      const client = newClient(registry.url, { credentials: CREDENTIALS });
      const response = await client.request('GET', '/v2/team/app/blobs/sha256:0', SCOPE);
      expect(response.status).toBe(200);
      expect(await response.body.text()).toBe('layer bytes');
      expect(response.url.href).toBe(new URL('/blob?sig=abc', storage.url).href);
      expect(storage.seen).toHaveLength(1);
      expect(storage.seen[0]!.headers.authorization).toBeUndefined();
      expect(storage.seen[0]!.headers['user-agent']).toBe('registry-proxy-agent');
    });

    it.each([301, 302, 303, 307, 308])('keeps Authorization on a same-origin %d redirect', async (status) => {
      const registry = await serve(
        basicRegistry((req, res) => {
          if (req.url === '/v2/team/app/blobs/sha256:0') send(res, status, '', { location: '/v2/moved/blob' });
          else send(res, 200, `at ${req.url}`);
        }),
      );
      const client = newClient(registry.url, { credentials: CREDENTIALS });
      const response = await client.request('GET', '/v2/team/app/blobs/sha256:0', SCOPE);
      expect(response.status).toBe(200);
      expect(await response.body.text()).toBe('at /v2/moved/blob');
      expect(response.url.pathname).toBe('/v2/moved/blob');
      expect(registry.hits('/v2/moved/blob').map((s) => s.headers.authorization)).toEqual([basic(CREDENTIALS)]);
    });

    it('returns a redirect without Location as it is', async () => {
      const registry = await serve((_req, res) => send(res, 302, 'no location'));
      const client = newClient(registry.url);
      const response = await client.request('GET', '/v2/', SCOPE);
      expect(response.status).toBe(302);
      expect(await response.body.text()).toBe('no location');
    });

    it('gives up on a redirect loop', async () => {
      const registry = await serve((_req, res) => send(res, 302, '', { location: '/v2/loop' }));
      const client = newClient(registry.url);
      const result = await failureOf(client.request('GET', '/v2/loop', SCOPE));
      expect(result.failure).toBe('redirect');
      // The first request and five redirects.
      expect(registry.seen).toHaveLength(6);
    });

    it.each<[string, string, UpstreamFailure]>([
      ['an unsupported scheme', 'ftp://127.0.0.1/blob', 'destination'],
      ['credentials in the Location', 'http://user:secret@127.0.0.1:1/blob', 'destination'],
      ['an unparseable Location', 'http://[oops/blob', 'redirect'],
    ])('refuses a redirect with %s', async (_label, location, failure) => {
      const registry = await serve((_req, res) => send(res, 302, '', { location }));
      const client = newClient(registry.url);
      expect((await failureOf(client.request('GET', '/v2/', SCOPE))).failure).toBe(failure);
    });
  });

  describe('transport failures', () => {
    it('reports a refused connection as unreachable', async () => {
      const gone = await serve(() => undefined);
      await gone.close();
      const client = newClient(gone.url, { timeouts: { connectMs: 2_000, headersMs: 2_000, bodyMs: 2_000 } });
      const result = await failureOf(client.request('GET', '/v2/', SCOPE));
      expect(result.failure).toBe('unreachable');
    });

    it('reports missing response headers as a timeout', async () => {
      // Accepts the request and never answers.
      const silent = await serve(() => undefined);
      const client = newClient(silent.url, { timeouts: { connectMs: 2_000, headersMs: 150, bodyMs: 2_000 } });
      const result = await failureOf(client.request('GET', '/v2/', SCOPE));
      expect(result.failure).toBe('timeout');
      expect(silent.seen).toHaveLength(1);
    });
  });
});
