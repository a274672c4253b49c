// Every way the SAP Connectivity Proxy (and the Cloud Connector behind it) can fail a pull, driven end
// to end through the agent: a puller's request → agent → Connectivity Proxy double → registry. For each
// failure the OCI error names cause and fix, registry_proxy_upstream_errors_total moves under its own
// cause, and the log says so once per change of state (not once per request), with cause and fix.
// Connection refused on the direct route is its own cause too.
import { randomBytes } from 'node:crypto';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InProcessAgent } from './fixtures/agent.ts';
import type { ConnectivityProxy } from './fixtures/connectivity-proxy.ts';
import { type CpStack, startCpStack } from './fixtures/cp-stack.ts';
import { type OciErrorBody, fetchAnswer, get } from './fixtures/http-client.ts';
import { makeImage, pushImage } from './fixtures/image.ts';
import { parseMetrics } from './fixtures/metrics-text.ts';
import { freePort } from './fixtures/net.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { type ScriptedRegistry, startScriptedRegistry } from './fixtures/scripted-registry.ts';

/** Exposed in the Cloud Connector: the real registry. */
const VIRTUAL = 'registry.virtual:5000';
/** Exposed too: a registry that redirects blobs to https storage, and answers some requests with its own 403. */
const SCRIPTED_VIRTUAL = 'scripted.virtual:5000';
/** Not in the Cloud Connector's access control. */
const NOT_EXPOSED = 'not-exposed.virtual:5000';

const CP_MIRROR = 'registry.corp.example:5000';
const DENIED_MIRROR = 'denied.corp.example:5000';
const REDIRECT_MIRROR = 'redirect.corp.example:5000';
const DIRECT_MIRROR = 'direct.corp.example:5000';

function randomDigest(): string {
  return `sha256:${randomBytes(32).toString('hex')}`;
}

describe('Connectivity Proxy failures, end to end: OCI error, metric, one log line per change of state', () => {
  let stack: CpStack | undefined;
  let registry: RegistryHandle;
  let scripted: ScriptedRegistry;
  let cp: ConnectivityProxy;
  let agent: InProcessAgent;

  const blobUrl = (mirror: string, digest = randomDigest()) => `${agent.url}/v2/team/app/blobs/${digest}?ns=${mirror}`;

  async function upstreamErrors(mirror: string, cause: string): Promise<number> {
    const response = await request(`${agent.runtime.healthUrl}/metrics`);
    const metrics = parseMetrics(await response.body.text());
    return metrics.get(`registry_proxy_upstream_errors_total{registry="${mirror}",cause="${cause}"}`) ?? 0;
  }

  function failingLines(mirror: string, cause: string): Array<Record<string, unknown>> {
    return agent.logs.filter((l) => l['msg'] === 'upstream failing' && l['registry'] === mirror && l['cause'] === cause);
  }

  /**
   * Sends `count` requests that must each fail with `cause`, and checks the OCI error of each, the
   * metric (at least one error per request) and the log (one line for the state, with cause and fix).
   */
  async function expectFailure(
    mirror: string,
    cause: string,
    expected: { status: number; message: RegExp; fix?: RegExp; logDetail?: RegExp },
    send: () => Promise<{ status: number; json: () => OciErrorBody }> = () => get(blobUrl(mirror)),
    count = 3,
  ): Promise<OciErrorBody['errors'][number]> {
    const before = await upstreamErrors(mirror, cause);
    let last: OciErrorBody['errors'][number] | undefined;
    for (let i = 0; i < count; i += 1) {
      const response = await send();
      expect(response.status).toBe(expected.status);
      last = response.json().errors[0];
      expect(last?.code).toBe('UNAVAILABLE');
      if (expected.fix) {
        expect(last?.detail?.['reason']).toBe(cause);
        expect(String(last?.detail?.['fix'])).toMatch(expected.fix);
      }
      expect(last?.message).toMatch(expected.message);
    }
    expect(await upstreamErrors(mirror, cause)).toBeGreaterThanOrEqual(before + count);
    const lines = failingLines(mirror, cause);
    expect(lines, `"upstream failing" lines for ${mirror} ${cause}`).toHaveLength(1);
    expect(String(lines[0]?.['detail'])).toMatch(expected.logDetail ?? expected.message);
    if (expected.fix) expect(String(lines[0]?.['fix'])).toMatch(expected.fix);
    return last as OciErrorBody['errors'][number];
  }

  beforeAll(async () => {
    const [reg, scr, image, closedPort] = await Promise.all([startRegistry(), startScriptedRegistry(), makeImage({ layers: 1, layerBytes: 1024 }), freePort()]);
    registry = reg;
    scripted = scr;
    await pushImage(registry.url, 'team/app', 'v1', image);
    // A registry that keeps its blobs on https storage elsewhere, as many do.
    scripted.on('GET', /^\/v2\/team\/app\/blobs\//, (req, res) => {
      req.resume();
      res.writeHead(307, { location: `https://storage.example.com/blobs${req.url ?? ''}`, 'content-length': '0' });
      res.end();
    });
    // The registry's own 403: an OCI JSON error, which must stay the registry's DENIED.
    scripted.on('*', '/v2/team/private/manifests/v1', (req, res) => {
      req.resume();
      const body = JSON.stringify({ errors: [{ code: 'DENIED', message: 'requested access to the resource is denied' }] });
      res.writeHead(403, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) });
      res.end(req.method === 'HEAD' ? undefined : body);
    });
    ({ cp, agent } = stack = await startCpStack({
      dir: { name: 'rpa-cp-errors' },
      virtualHosts: { [VIRTUAL]: registry.url, [SCRIPTED_VIRTUAL]: scripted.url },
      locations: { 'loc-1': 'connected' },
      locationId: 'loc-1',
      agent: {
        mirrors: [
          { registry: CP_MIRROR, upstream: `http://${VIRTUAL}`, route: 'connectivity-proxy' },
          { registry: DENIED_MIRROR, upstream: `http://${NOT_EXPOSED}`, route: 'connectivity-proxy' },
          { registry: REDIRECT_MIRROR, upstream: `http://${SCRIPTED_VIRTUAL}`, route: 'connectivity-proxy' },
          { registry: DIRECT_MIRROR, upstream: `http://127.0.0.1:${closedPort}` },
        ],
      },
    }));
    // The start-up probe (GET /v2/ per mirror) sets each mirror's first state; wait for all of them so
    // that no late probe answer interleaves with a test's requests.
    const probed = (registryName: string) => agent.logs.some((l) => l['registry'] === registryName && /^upstream (?:reachable|unreachable \(probe\))$/.test(String(l['msg'])));
    await pollUntil(() => [CP_MIRROR, DENIED_MIRROR, REDIRECT_MIRROR, DIRECT_MIRROR].every(probed), { timeoutMs: 10_000, what: 'start-up probe of every mirror' });
  });

  afterAll(async () => {
    await stack?.stop();
    await Promise.all([scripted?.stop(), registry?.stop()]);
  });

  it('serves through the proxy while it is healthy', async () => {
    const response = await get(`${agent.url}/v2/team/app/manifests/v1?ns=${CP_MIRROR}`);
    expect(response.status).toBe(200);
    expect(failingLines(CP_MIRROR, 'cp_no_cloud_connector')).toHaveLength(0);
  });

  it('405: a redirect to https on the proxy route names the http:// virtual host as the fix', async () => {
    const error = await expectFailure(REDIRECT_MIRROR, 'cp_https_refused', {
      status: 502,
      message: /only forwards plain http:\/\//,
      fix: /http:\/\/<virtual-host>:<port>.*Cloud Connector does TLS/,
    });
    expect(error.detail?.['registry']).toBe(REDIRECT_MIRROR);
    // The https URL never went to the proxy: the agent refuses it itself.
    expect(cp.requests.some((r) => r.target.startsWith('https:'))).toBe(false);
  });

  it('407: a proxy in non-trusted mode without a token names the OAuth settings as the fix', async () => {
    cp.setTrusted(false);
    try {
      await expectFailure(CP_MIRROR, 'cp_auth_failed', { status: 502, message: /non-trusted mode/, fix: /token_url, client_id and client_secret_file/ });
      expect(cp.requests.filter((r) => r.rejected === 'proxy-auth').length).toBeGreaterThanOrEqual(3);
    } finally {
      cp.setTrusted(true);
    }
    expect((await get(`${agent.url}/v2/team/app/manifests/v1?ns=${CP_MIRROR}`)).status).toBe(200);
    expect(agent.logs.filter((l) => l['msg'] === 'upstream answering again' && l['registry'] === CP_MIRROR && l['previous'] === 'cp_auth_failed')).toHaveLength(1);
  });

  it('503: no Cloud Connector connected for the location quotes the proxy and names location_id as the fix', async () => {
    cp.setLocation('loc-1', 'disconnected');
    try {
      const error = await expectFailure(CP_MIRROR, 'cp_no_cloud_connector', {
        status: 502,
        message: /no Cloud Connector is connected for location ID "loc-1".*There is no SAP Cloud Connector \(SCC\) connected/,
        fix: /location_id/,
      });
      expect(error.detail?.['reason']).toBe('cp_no_cloud_connector');
    } finally {
      cp.setLocation('loc-1', 'connected');
    }
    expect((await get(`${agent.url}/v2/team/app/manifests/v1?ns=${CP_MIRROR}`)).status).toBe(200);
  });

  it('403: a virtual host not exposed in the Cloud Connector is "access denied", not the registry\'s DENIED', async () => {
    const fix = /expose not-exposed\.virtual:5000 in the Cloud Connector.*Access Control/;
    // GET carries SAP's text; HEAD has only the headers, and is still told apart by its media type.
    await expectFailure(DENIED_MIRROR, 'cp_denied', { status: 502, message: /denied access to the virtual host not-exposed\.virtual:5000.*Access denied to system/, fix });
    const head = await fetchAnswer(`${agent.url}/v2/team/app/manifests/v1?ns=${DENIED_MIRROR}`, { method: 'HEAD' });
    expect(head.status).toBe(502);
    expect(cp.requests.filter((r) => r.rejected === 'access-denied').length).toBeGreaterThanOrEqual(4);
    // The log line was written by the start-up probe (the first failure); nothing since.
    expect(failingLines(DENIED_MIRROR, 'cp_denied')).toHaveLength(1);

    // A 403 the registry itself sends through the proxy (OCI JSON) stays the registry's answer.
    const own = await get(`${agent.url}/v2/team/private/manifests/v1?ns=${REDIRECT_MIRROR}`);
    expect(own.status).toBe(403);
    expect(own.json().errors[0]?.code).toBe('DENIED');
    expect(await upstreamErrors(REDIRECT_MIRROR, 'cp_denied')).toBe(0);
  });

  it('connection refused on the direct route is its own cause, apart from DNS failures and resets', async () => {
    await expectFailure(DIRECT_MIRROR, 'refused', {
      status: 503,
      message: /unreachable and the content is not cached/,
      logDetail: /refused the connection \(ECONNREFUSED\): nothing listens on that host and port/,
    });
    expect(await upstreamErrors(DIRECT_MIRROR, 'unreachable')).toBe(0);
    const response = await get(blobUrl(DIRECT_MIRROR));
    expect(String(response.json().errors[0]?.detail?.['cause'])).toMatch(/refused the connection \(ECONNREFUSED\)/);
  });

  // Last: the proxy stays down.
  it('connection refused by the Connectivity Proxy (proxy down) names [connectivity_proxy] url as the fix', async () => {
    await cp.stop();
    await expectFailure(CP_MIRROR, 'cp_unreachable', {
      status: 502,
      message: /Connectivity Proxy at 127\.0\.0\.1:\d+ refused the connection: nothing listens on that port/,
      fix: /\[connectivity_proxy\] url/,
    });
    expect(await upstreamErrors(CP_MIRROR, 'refused')).toBe(0);
  });
});
