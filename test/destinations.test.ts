// The destination policy end to end, in network namespaces laid out like a cloud node (see
// fixtures/destination-lab.ts): the agent (production runtime, real config file) behind a loopback
// registry double that redirects blobs and names token realms at every forbidden kind of address,
// literally and by name, on the direct and the http-proxy (tinyproxy) route. Each must be refused
// with an OCI error naming the reason and never contacted (sentinels count TCP connections); the
// upstream itself, an allow-listed token server on another loopback port and a private address
// elsewhere must keep working; refusals are counted on /metrics and logged once per destination.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ALLOWED, FORBIDDEN, LAB, type Lab, type LabKind, type LabOutcome, type LabResult, type LabRoute, NOT_LISTED, createLab, removeStaleLabs } from './fixtures/destination-lab.ts';
import { pollUntil } from './fixtures/poll.ts';
import { type ManagedProcess, runCommand, startProcess, tailFile } from './fixtures/process.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';

const SCENARIO = new URL('./fixtures/destination-scenario.ts', import.meta.url).pathname;
const PEER = new URL('./fixtures/destination-peer.ts', import.meta.url).pathname;
const ROUTES: readonly LabRoute[] = ['direct', 'http-proxy'];
const KINDS: readonly LabKind[] = ['redirect', 'passthrough-realm', 'agent-realm'];

let lab: Lab | undefined;
let dir: string | undefined;
let peer: ManagedProcess | undefined;
let peerLog = '';
let result: LabResult;

beforeAll(async () => {
  // A killed earlier run may have left its namespaces behind.
  await removeStaleLabs();
  lab = await createLab();
  dir = await makeTempDir('rpa-dst');
  peerLog = join(dir, 'peer.log');
  peer = await startProcess(lab.exec(lab.peer)[0] ?? 'ip', [...lab.exec(lab.peer).slice(1), process.execPath, PEER], { logFile: peerLog });
  await pollUntil(async () => (await tailFile(peerLog)).includes('listening'), {
    timeoutMs: 15_000,
    what: 'peer storage listening',
    abort: () => (peer?.exitInfo() ? `peer exited: ${JSON.stringify(peer.exitInfo())}` : undefined),
  });
  const run = await runCommand(lab.exec(lab.ns)[0] ?? 'ip', [...lab.exec(lab.ns).slice(1), process.execPath, SCENARIO], { timeoutMs: 120_000 });
  const line = run.stdout.split('\n').find((l) => l.startsWith('RESULT '));
  if (run.code !== 0 || !line) throw new Error(`scenario failed (${run.code}${run.timedOut ? ', timed out' : ''}):\n${run.stderr}\n${run.stdout.slice(-4_000)}`);
  result = JSON.parse(line.slice('RESULT '.length)) as LabResult;
}, 180_000);

afterAll(async () => {
  await peer?.stop();
  await lab?.remove();
  if (dir) await removeTempDir(dir);
});

function find(list: readonly LabOutcome[], route: LabRoute, kind: LabKind, label: string): LabOutcome {
  const found = list.find((o) => o.route === route && o.kind === kind && o.label === label);
  if (!found) throw new Error(`no outcome for ${route} ${kind} ${label}`);
  return found;
}

describe.each(ROUTES)('route %s', (route) => {
  describe.each(KINDS)('%s', (kind) => {
    it.each(FORBIDDEN.map((f) => [f.label, f.reason] as const))('to %s: refused (%s) with an OCI error', (label, reason) => {
      const outcome = find(result.refused, route, kind, label);
      expect(outcome, JSON.stringify(outcome)).toMatchObject({ status: 502, code: 'UNAVAILABLE', reason });
      expect(outcome.message).toMatch(/may not lead to .*; fix: /);
    });
  });

  it('refuses an address in a URL at the challenge already; a name when the token request is forwarded', () => {
    for (const f of FORBIDDEN) {
      const outcome = find(result.refused, route, 'passthrough-realm', f.label);
      expect(outcome.refusedAtChallenge, f.label).toBe(!f.host.endsWith('.test'));
    }
  });

  it('with allowed_destinations set, refuses a private address that is not listed (not_allowed), and never contacts it', () => {
    expect(find(result.refused, route, 'agent-realm', NOT_LISTED)).toMatchObject({ status: 502, code: 'UNAVAILABLE', reason: 'not_allowed' });
    expect(peerLog).not.toBe('');
  });

  it.each(ALLOWED)('%s: works', (label) => {
    const outcome = result.allowed.find((o) => o.route === route && o.label === label);
    expect(outcome, JSON.stringify(result.allowed)).toMatchObject({ status: 200, bodyOk: true });
  });
});

describe('never contacted', () => {
  it('no sentinel on a forbidden address saw a single TCP connection', () => {
    expect(Object.keys(result.sentinelHits).sort()).toEqual(['10.251.0.1', '100.100.100.200', '127.0.0.1', '169.254.169.254', 'fd00:251::1', 'fd00:ec2::254']);
    for (const [address, hits] of Object.entries(result.sentinelHits)) expect(hits, address).toEqual([]);
  });

  it('tinyproxy forwarded the allowed targets and none of the refused ones', async () => {
    const targets = result.proxied.map((r) => r.target);
    // The http-proxy route really went through tinyproxy.
    expect(targets.some((t) => t.startsWith(`http://${result.upstream}/storage/`))).toBe(true);
    expect(targets.some((t) => t.startsWith(`http://${result.tokenServer}/token`))).toBe(true);
    expect(targets.some((t) => t.startsWith(`http://private.test:${LAB.peerPort}/blob/`))).toBe(true);
    // Nothing else: every forbidden target was refused before the proxy saw it.
    const allowedHosts = [result.upstream, result.tokenServer, `${LAB.peerAddress}:${LAB.peerPort}`, `private.test:${LAB.peerPort}`];
    for (const target of targets) expect(allowedHosts, target).toContain(new URL(target.includes('://') ? target : `http://${target}`).host);
  });

  it('the private peer got the allowed requests and never the refused one', async () => {
    const log = await tailFile(peerLog, 64 * 1024);
    expect(log).toContain('request GET /blob/');
    expect(log).toContain('request GET /token');
    expect(log).not.toContain('/token-never');
  });

  it('the allow-listed token server was asked for the allowed agent realms only', () => {
    expect(result.tokenServerRequests).toBe(ROUTES.length);
  });
});

describe('counted and logged', () => {
  it('registry_proxy_destinations_refused_total counts every refusal, by registry and reason', () => {
    const expected: Record<string, number> = {};
    for (const outcome of result.refused) {
      const key = `${outcome.registry} ${outcome.reason ?? 'none'}`;
      expected[key] = (expected[key] ?? 0) + 1;
    }
    expect(result.refusalMetrics).toEqual(expected);
    expect(result.refusalMetrics['open-direct.test loopback']).toBeGreaterThanOrEqual(5);
  });

  it('logs each refused destination once per state, with what to change', () => {
    const { registry, destination } = result.repeated;
    const lines = result.refusalLogs.filter((l) => l['registry'] === registry && l['destination'] === destination);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 'warn', reason: 'loopback' });
    expect(String(lines[0]?.['fix'])).toContain(`add "${destination}" to allowed_destinations of mirror ${registry}`);
    const metadata = result.refusalLogs.find((l) => l['reason'] === 'metadata');
    expect(String(metadata?.['fix'])).toMatch(/never allowed, not even through allowed_destinations/);
    // Once per state: no two lines for the same registry, destination, address and reason.
    const keys = result.refusalLogs.map((l) => `${String(l['registry'])} ${String(l['destination'])} ${String(l['address'])} ${String(l['reason'])}`);
    expect(new Set(keys).size).toBe(keys.length);
  });
});
