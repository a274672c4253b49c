/**
 * Entitlement table: who gets which content through which mirror, upstream up and down.
 *
 * The access model under test: mirrors share ONE blob cache by digest, but entitlement is per
 * (mirror, repository, content). Content goes out through mirror M in repository R only when M's
 * upstream vouched for it in R: to the requester's own credential (passthrough) or to the agent's
 * configured credential (auth = "agent").
 *
 * Setup (real CNCF distribution registries; the agent in-process, one cache, four mirrors):
 * - T: distribution with token auth (fixtures/token-server.ts). The registry AND its token realm
 *   sit behind counting proxies, so "upstream down" takes both away (the tunnel is down).
 *     priv/app:v1     image I, private, one layer of distinctive random bytes
 *     priv/other:v1   image K
 *     public/base:v1  image B, anonymous pull allowed
 *   users: alice may pull priv/app; bob may pull priv/other only; svc (mirror A's own credential)
 *   may pull priv/app only.
 * - H: distribution with htpasswd (Basic), behind a counting proxy. priv/app:v1 is image J (H does
 *   not hold I's digests). users: carol (a puller) and company (mirror G's own credential);
 *   htpasswd lets every valid user read every repository.
 * - mirrors:  P  = passthrough → T    A = agent (svc)     → T
 *             P2 = passthrough → H    G = agent (company) → H
 * - established before the table, upstreams up: alice pulls I through P (I's manifest and blobs
 *   are then in the shared cache), bob pulls priv/other:v1 through P, carol pulls priv/app:v1 (J)
 *   through P2, A fetches I (tag, manifest, layer) in priv/app, G fetches priv/app:v1 (J),
 *   anonymous pulls public/base:v1 through P.
 *
 * Table: mode × row × content × requester × {upstream up, upstream down} = 2×3×3×4×2 = 144 cells.
 *   rows      passthrough: same repo = P priv/app, other repo = P priv/other, other mirror = P2 priv/app
 *             agent:       same repo = A priv/app, other repo = A priv/other, other mirror = G priv/app
 *   content   blob = I's layer digest, manifest = I's manifest digest, tag = "v1" in the row's
 *             repository (I in priv/app on T, K in priv/other, J in priv/app on H)
 *   requester relative to the row's repository on the row's upstream:
 *             anonymous; wrong credential (right user, wrong password); credential for another
 *             repository (T: bob for priv/app, alice for priv/other; H has no per-repository
 *             credentials, so alice's T credential, accepted for priv/app elsewhere, which H refuses);
 *             accepted credential (T: alice for priv/app, bob for priv/other; H: carol).
 *             Passthrough on T: containerd's token dance through the agent's /_token endpoint;
 *             on H: Basic. Agent mode: the requester's Basic header is sent and must not matter.
 * Plus 6 cells for anonymous pulls of the public repository through P (blob, manifest, tag × up, down),
 * and for every cell an "uncached twin": the same request for content that is in no cache and on no
 * upstream (a random digest, a tag never pushed): a requester who is not entitled must get the same
 * answer for cached and uncached content (no existence oracle). Last, per agent-mode row and phase,
 * one check that all four requesters got the same answer. 150 cells × 2 + 6 = 306 tests.
 *
 * Expected (cred = the requester's in passthrough, the mirror's own in agent mode; accepted = the
 * upstream accepts cred for R; holds = the upstream holds that content in R):
 *   up                 accepted ? (holds ? 200 : 404) : 401   (checked cell by cell against the upstream itself)
 *   down, passthrough  accepted ? (holds ? 200 : 503) : 401   (401 with the challenge)
 *   down, agent        accepted && holds ? 200 : 503
 * Every accepted (credential, repository) pair and every held content was confirmed to the agent
 * before the upstreams went down (see "established" above), within max_stale (24 h default).
 * Where the model was ambiguous:
 * - passthrough, down, credential accepted for R but the content never confirmed in R (cached or
 *   not): 503 like any uncached content for an entitled requester, not 401 (401 is for requesters
 *   whose credential was not accepted for R).
 * - agent mode, up, upstream refusing the agent's own credential (A in priv/other: T answers svc
 *   401): any of 401/403/404 is accepted (a refusal; no challenge is required, containerd has no
 *   credential to offer the agent's upstream); passthrough must match the upstream's status exactly.
 */
import { X509Certificate, createPrivateKey, randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type InProcessAgent, startAgent } from './fixtures/agent.ts';
import { type BasicAuth, basicAuthHeader } from './fixtures/auth.ts';
import { type CountingProxy, startCountingProxy } from './fixtures/counting-proxy.ts';
import { sha256 } from './fixtures/digest.ts';
import { type Answer, get as httpGet } from './fixtures/http-client.ts';
import { type TestImage, makeImage, pushImage } from './fixtures/image.ts';
import { runCommand } from './fixtures/process.ts';
import { type RegistryHandle, startRegistry } from './fixtures/registry.ts';
import { makeTempDir, removeTempDir } from './fixtures/tmp.ts';
import { type TokenServer, startTokenServer } from './fixtures/token-server.ts';

// ---------------------------------------------------------------------------------------------
// Who is who

const alice: BasicAuth = { username: 'alice', password: 'alice-secret-1' };
const bob: BasicAuth = { username: 'bob', password: 'bob-secret-2' };
const svc: BasicAuth = { username: 'svc-puller', password: 'svc-secret-3' };
const carol: BasicAuth = { username: 'carol', password: 'carol-secret-4' };
const company: BasicAuth = { username: 'company', password: 'company-secret-5' };
const wrong = (user: BasicAuth): BasicAuth => ({ username: user.username, password: `${user.password}-wrong` });

/** T's access lists: user → repositories the user may pull (anonymous: public/base only). */
const T_USERS: Record<string, { password: string; repositories: string[] }> = {
  [alice.username]: { password: alice.password, repositories: ['priv/app'] },
  [bob.username]: { password: bob.password, repositories: ['priv/other'] },
  [svc.username]: { password: svc.password, repositories: ['priv/app'] },
};
const T_PUBLIC = ['public/base'];
/** H's htpasswd users; each may read every repository. */
const H_USERS: Record<string, string> = { [carol.username]: carol.password, [company.username]: company.password };

type Upstream = 'T' | 'H';

/** Whether the upstream itself accepts `cred` (undefined: anonymous) for pulls from `repository`. */
function accepts(upstream: Upstream, cred: BasicAuth | undefined, repository: string): boolean {
  if (upstream === 'T') {
    if (cred === undefined) return T_PUBLIC.includes(repository);
    const user = T_USERS[cred.username];
    return user !== undefined && user.password === cred.password && (user.repositories.includes(repository) || T_PUBLIC.includes(repository));
  }
  return cred !== undefined && H_USERS[cred.username] === cred.password;
}

// ---------------------------------------------------------------------------------------------
// Mirrors and the table

const MIRROR_P = 'token.corp.example:5000';
const MIRROR_A = 'token-agent.corp.example:5000';
const MIRROR_P2 = 'basic.corp.example:5000';
const MIRROR_G = 'basic-agent.corp.example:5000';

type Mode = 'passthrough' | 'agent';
type RowKind = 'same repo' | 'other repo' | 'other mirror' | 'public repo';
type ContentKind = 'blob' | 'manifest' | 'tag';
type Who = 'anonymous' | 'wrong credential' | 'credential for another repo' | 'accepted credential';
type Phase = 'up' | 'down';
type ImageKey = 'I' | 'K' | 'J' | 'B';

interface Row {
  mode: Mode;
  kind: RowKind;
  registry: string;
  upstream: Upstream;
  repository: string;
  /** The requester's credential per column (passthrough: sent through the token dance or as Basic; agent: sent, must not matter). */
  creds: Partial<Record<Who, BasicAuth | undefined>>;
  /** auth = "agent": the mirror's own upstream credential. */
  agentCredential?: BasicAuth;
  /** Whose blob and manifest digests the row asks for. */
  digestsOf: ImageKey;
  /** Whether the row's upstream holds those digests in the row's repository. */
  upstreamHoldsDigests: boolean;
  /** What "v1" is in the row's repository on the row's upstream. */
  tagImage: ImageKey;
}

const WHO: readonly Who[] = ['anonymous', 'wrong credential', 'credential for another repo', 'accepted credential'];
const CONTENTS: readonly ContentKind[] = ['blob', 'manifest', 'tag'];

const appCreds = { anonymous: undefined, 'wrong credential': wrong(alice), 'credential for another repo': bob, 'accepted credential': alice };
const otherCreds = { anonymous: undefined, 'wrong credential': wrong(bob), 'credential for another repo': alice, 'accepted credential': bob };
const hCreds = { anonymous: undefined, 'wrong credential': wrong(carol), 'credential for another repo': alice, 'accepted credential': carol };

const ROWS: readonly Row[] = [
  { mode: 'passthrough', kind: 'same repo', registry: MIRROR_P, upstream: 'T', repository: 'priv/app', creds: appCreds, digestsOf: 'I', upstreamHoldsDigests: true, tagImage: 'I' },
  { mode: 'passthrough', kind: 'other repo', registry: MIRROR_P, upstream: 'T', repository: 'priv/other', creds: otherCreds, digestsOf: 'I', upstreamHoldsDigests: false, tagImage: 'K' },
  { mode: 'passthrough', kind: 'other mirror', registry: MIRROR_P2, upstream: 'H', repository: 'priv/app', creds: hCreds, digestsOf: 'I', upstreamHoldsDigests: false, tagImage: 'J' },
  { mode: 'agent', kind: 'same repo', registry: MIRROR_A, upstream: 'T', repository: 'priv/app', creds: appCreds, agentCredential: svc, digestsOf: 'I', upstreamHoldsDigests: true, tagImage: 'I' },
  { mode: 'agent', kind: 'other repo', registry: MIRROR_A, upstream: 'T', repository: 'priv/other', creds: otherCreds, agentCredential: svc, digestsOf: 'I', upstreamHoldsDigests: false, tagImage: 'K' },
  { mode: 'agent', kind: 'other mirror', registry: MIRROR_G, upstream: 'H', repository: 'priv/app', creds: hCreds, agentCredential: company, digestsOf: 'I', upstreamHoldsDigests: false, tagImage: 'J' },
];
const PUBLIC_ROW: Row = {
  mode: 'passthrough', kind: 'public repo', registry: MIRROR_P, upstream: 'T', repository: 'public/base', creds: { anonymous: undefined }, digestsOf: 'B', upstreamHoldsDigests: true, tagImage: 'B',
};

interface Cell {
  name: string;
  row: Row;
  content: ContentKind;
  who: Who;
  phase: Phase;
  /** The uncached twin: content no cache and no upstream has. */
  twin: boolean;
}

function cellsFor(phase: Phase): Cell[] {
  const cells: Cell[] = [];
  const add = (row: Row, content: ContentKind, who: Who): void => {
    for (const twin of [false, true]) {
      const name = `${row.mode} | ${row.kind} (${row.registry} ${row.repository}) | ${content} | ${who} | upstream ${phase}${twin ? ' | uncached twin' : ''}`;
      cells.push({ name, row, content, who, phase, twin });
    }
  };
  for (const row of ROWS) for (const content of CONTENTS) for (const who of WHO) add(row, content, who);
  for (const content of CONTENTS) add(PUBLIC_ROW, content, 'anonymous');
  return cells;
}

function credentialOf(cell: Cell): BasicAuth | undefined {
  return cell.row.creds[cell.who];
}

/** The credential the upstream sees: the requester's (passthrough) or the mirror's own (agent). */
function upstreamCredential(cell: Cell): BasicAuth | undefined {
  return cell.row.mode === 'agent' ? cell.row.agentCredential : credentialOf(cell);
}

function upstreamHolds(cell: Cell): boolean {
  return !cell.twin && (cell.content === 'tag' || cell.row.upstreamHoldsDigests);
}

/** The model: the status this cell must get. */
function expectedStatus(cell: Cell): 200 | 401 | 404 | 503 {
  const accepted = accepts(cell.row.upstream, upstreamCredential(cell), cell.row.repository);
  const holds = upstreamHolds(cell);
  if (cell.phase === 'up') return accepted ? (holds ? 200 : 404) : 401;
  if (cell.row.mode === 'passthrough') return accepted ? (holds ? 200 : 503) : 401;
  return accepted && holds ? 200 : 503;
}

// ---------------------------------------------------------------------------------------------
// HTTP: plain requests, and containerd's token dance

const ACCEPT = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  '*/*',
].join(', ');

/** The final answer a puller ends up with, and every body it received on the way. */
interface Pull extends Answer {
  seen: Buffer[];
}

/** A GET accepting every manifest type, as a puller sends it. */
function get(url: string, headers: Record<string, string> = {}): Promise<Answer> {
  return httpGet(url, { accept: ACCEPT, ...headers });
}

function header(answer: Answer, name: string): string | undefined {
  const value = answer.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

/** One request, with Basic credentials when there are any. */
async function plainPull(url: string, cred: BasicAuth | undefined): Promise<Pull> {
  const answer = await get(url, cred ? { authorization: basicAuthHeader(cred) } : {});
  return { ...answer, seen: [answer.body] };
}

/**
 * containerd against a token-auth registry: ask without credentials; on a Bearer challenge fetch a
 * token from its realm (with Basic when the puller has a credential, anonymously otherwise) and
 * ask again with it. No token: the puller is left with the 401 challenge.
 */
async function tokenPull(url: string, cred: BasicAuth | undefined): Promise<Pull> {
  const first = await get(url);
  const challenge = header(first, 'www-authenticate');
  if (first.status !== 401 || !challenge?.startsWith('Bearer ')) return { ...first, seen: [first.body] };
  const param = (name: string): string | undefined => new RegExp(`${name}="([^"]*)"`).exec(challenge)?.[1];
  const realm = param('realm');
  if (realm === undefined) return { ...first, seen: [first.body] };
  const tokenUrl = new URL(realm);
  for (const name of ['service', 'scope']) {
    const value = param(name);
    if (value !== undefined) tokenUrl.searchParams.set(name, value);
  }
  const answer = await get(tokenUrl.href, cred ? { authorization: basicAuthHeader(cred) } : {});
  let token: string | undefined;
  if (answer.status === 200) {
    try {
      token = (JSON.parse(answer.body.toString('utf8')) as { token?: string }).token;
    } catch {
      token = undefined;
    }
  }
  if (token === undefined) return { ...first, seen: [first.body, answer.body] };
  const content = await get(url, { authorization: `Bearer ${token}` });
  return { ...content, seen: [first.body, answer.body, content.body] };
}

interface OciErrorBody {
  errors?: Array<{ code?: string }>;
}

function ociCode(body: Buffer): string | undefined {
  try {
    return (JSON.parse(body.toString('utf8')) as OciErrorBody).errors?.[0]?.code;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Fixture composition: T with its realm behind a proxy of its own, so both can go down

/** A self-signed P-256 certificate for the token server's signatures (as fixtures/token-registry.ts does). */
async function makeSigner(dir: string): Promise<{ signer: { privateKey: ReturnType<typeof createPrivateKey>; x5c: string[] }; certPath: string }> {
  const keyPath = join(dir, 'token-key.pem');
  const certPath = join(dir, 'token-cert.pem');
  const result = await runCommand(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-sha256', '-days', '2', '-subj', '/CN=entitlement-issuer', '-keyout', keyPath, '-out', certPath],
    { timeoutMs: 15_000 },
  );
  if (result.code !== 0) throw new Error(`openssl req failed (${result.code}): ${result.stderr}`);
  const [keyPem, certPem] = await Promise.all([readFile(keyPath), readFile(certPath)]);
  return { signer: { privateKey: createPrivateKey(keyPem), x5c: [new X509Certificate(certPem).raw.toString('base64')] }, certPath };
}

const SERVICE = 'entitlement-registry';
const ISSUER = 'entitlement-issuer';
const ADMIN = 'entitlement-admin';

// ---------------------------------------------------------------------------------------------
// The suite

describe('entitlement: per (mirror, repository, content) over one shared cache', () => {
  let dir: string | undefined;
  let signerDir: string | undefined;
  let tokenServer: TokenServer | undefined;
  let tRegistry: RegistryHandle | undefined;
  let hRegistry: RegistryHandle | undefined;
  let tProxy: CountingProxy;
  let realmProxy: CountingProxy;
  let hProxy: CountingProxy;
  const proxies: CountingProxy[] = [];
  let agent: InProcessAgent | undefined;
  const images = {} as Record<ImageKey, TestImage>;
  /** Content that exists nowhere: the uncached twins ask for it. */
  const nowhere = { blob: `sha256:${randomBytes(32).toString('hex')}`, manifest: `sha256:${randomBytes(32).toString('hex')}`, tag: 'never-pushed' };
  /** The private layer, and a slice of it that no error body may contain. */
  let privateLayer: Buffer;
  let privateSlice: Buffer;

  function upstreamUrl(upstream: Upstream): string {
    return upstream === 'T' ? tProxy.url : hProxy.url;
  }

  function path(cell: Cell): string {
    const image = images[cell.row.digestsOf];
    switch (cell.content) {
      case 'blob':
        return `blobs/${cell.twin ? nowhere.blob : image.layers[0]!.digest}`;
      case 'manifest':
        return `manifests/${cell.twin ? nowhere.manifest : image.manifestDigest}`;
      case 'tag':
        return `manifests/${cell.twin ? nowhere.tag : 'v1'}`;
    }
  }

  /** The bytes a 200 must carry. */
  function expectedBody(cell: Cell): Buffer {
    if (cell.content === 'blob') return images[cell.row.digestsOf].layers[0]!.bytes;
    if (cell.content === 'manifest') return images[cell.row.digestsOf].manifest;
    return images[cell.row.tagImage].manifest;
  }

  /** A request through the agent, the way containerd would make it for this requester. */
  function throughAgent(cell: Cell): Promise<Pull> {
    const url = `${agent!.url}/v2/${cell.row.repository}/${path(cell)}?ns=${encodeURIComponent(cell.row.registry)}`;
    const cred = credentialOf(cell);
    if (cell.row.mode === 'passthrough' && cell.row.upstream === 'T') return tokenPull(url, cred);
    return plainPull(url, cred);
  }

  /** The same request made directly to the upstream with the credential the upstream would see: the oracle. */
  function direct(cell: Cell): Promise<Pull> {
    const url = `${upstreamUrl(cell.row.upstream)}/v2/${cell.row.repository}/${path(cell)}`;
    const cred = upstreamCredential(cell);
    return cell.row.upstream === 'T' ? tokenPull(url, cred) : plainPull(url, cred);
  }

  /** Fails unless the pull is a 200 carrying exactly `bytes` (used to establish entitlements). */
  async function establish(what: string, pull: Promise<Pull>, bytes: Buffer): Promise<void> {
    const got = await pull;
    if (got.status !== 200 || !got.body.equals(bytes)) {
      throw new Error(`establishing "${what}": got ${got.status} ${got.body.subarray(0, 300).toString('utf8')}`);
    }
  }

  beforeAll(async () => {
    dir = await makeTempDir('rpa-entitlement');
    signerDir = await makeTempDir('rpa-entitlement-signer');
    const [I, K, J, B] = await Promise.all([
      makeImage({ layers: 1, layerBytes: 8 * 1024 }),
      makeImage({ layers: 1, layerBytes: 4 * 1024 }),
      makeImage({ layers: 1, layerBytes: 4 * 1024 }),
      makeImage({ layers: 1, layerBytes: 4 * 1024 }),
    ]);
    Object.assign(images, { I, K, J, B });
    privateLayer = I.layers[0]!.bytes;
    privateSlice = privateLayer.subarray(privateLayer.length >> 1, (privateLayer.length >> 1) + 64);

    // T: token server, its proxy (the realm clients see), the registry trusting it, the registry's proxy.
    const { signer, certPath } = await makeSigner(signerDir);
    tokenServer = await startTokenServer({
      service: SERVICE,
      issuer: ISSUER,
      signer,
      users: Object.fromEntries(Object.entries(T_USERS).map(([user, { password }]) => [user, password])),
      publicRepositories: T_PUBLIC,
      access: Object.fromEntries(Object.entries(T_USERS).map(([user, { repositories }]) => [user, repositories])),
    });
    realmProxy = await startCountingProxy(tokenServer.url);
    proxies.push(realmProxy);
    const realmUrl = `${realmProxy.url}${new URL(tokenServer.url).pathname}`;
    // Assigned as each one starts, so that afterAll stops whichever did when the other fails.
    await Promise.all([
      startRegistry({ tokenAuth: { realm: realmUrl, service: SERVICE, issuer: ISSUER, rootCertBundle: certPath } }).then((r) => (tRegistry = r)),
      startRegistry({ auth: carol }).then((r) => (hRegistry = r)),
    ]);
    const t = tRegistry!;
    const h = hRegistry!;
    // H: a second htpasswd user (the company account mirror G uses).
    const added = await runCommand('htpasswd', ['-Bb', join(h.dir, 'htpasswd'), company.username, company.password], { timeoutMs: 10_000 });
    if (added.code !== 0) throw new Error(`htpasswd failed: ${added.stderr}`);
    await h.restart();
    tProxy = await startCountingProxy(t.url);
    proxies.push(tProxy);
    hProxy = await startCountingProxy(h.url);
    proxies.push(hProxy);

    const minter = tokenServer;
    const push = (repo: string, image: TestImage): Promise<void> =>
      pushImage(t.url, repo, 'v1', image, { token: minter.mint(ADMIN, [{ type: 'repository', name: repo, actions: ['pull', 'push'] }]) });
    await Promise.all([push('priv/app', I), push('priv/other', K), push('public/base', B), pushImage(h.url, 'priv/app', 'v1', J, carol)]);

    agent = await startAgent({
      dir,
      mirrors: [
        { registry: MIRROR_P, upstream: tProxy.url, auth: 'passthrough', allowedDestinations: [realmProxy.host] },
        { registry: MIRROR_A, upstream: tProxy.url, auth: 'agent', username: svc.username, password: svc.password, allowedDestinations: [realmProxy.host] },
        { registry: MIRROR_P2, upstream: hProxy.url, auth: 'passthrough' },
        { registry: MIRROR_G, upstream: hProxy.url, auth: 'agent', username: company.username, password: company.password },
      ],
    });

    const via = (registry: string, repository: string, rest: string): string => `${agent!.url}/v2/${repository}/${rest}?ns=${encodeURIComponent(registry)}`;
    // alice pulls I through P: tag, then every blob. I is in the shared cache from here on.
    await establish('alice pulls priv/app:v1 through P', tokenPull(via(MIRROR_P, 'priv/app', 'manifests/v1'), alice), I.manifest);
    for (const blob of [I.config, ...I.layers]) await establish(`alice pulls ${blob.digest} through P`, tokenPull(via(MIRROR_P, 'priv/app', `blobs/${blob.digest}`), alice), blob.bytes);
    await establish('bob pulls priv/other:v1 through P', tokenPull(via(MIRROR_P, 'priv/other', 'manifests/v1'), bob), K.manifest);
    await establish('anonymous pulls public/base:v1 through P', tokenPull(via(MIRROR_P, 'public/base', 'manifests/v1'), undefined), B.manifest);
    await establish('anonymous pulls public/base blob through P', tokenPull(via(MIRROR_P, 'public/base', `blobs/${B.layers[0]!.digest}`), undefined), B.layers[0]!.bytes);
    await establish('carol pulls priv/app:v1 (J) through P2', plainPull(via(MIRROR_P2, 'priv/app', 'manifests/v1'), carol), J.manifest);
    // The agent-auth mirrors fetch what their own upstream holds for their own credential.
    await establish('A: priv/app:v1', plainPull(via(MIRROR_A, 'priv/app', 'manifests/v1'), undefined), I.manifest);
    await establish('A: I by digest', plainPull(via(MIRROR_A, 'priv/app', `manifests/${I.manifestDigest}`), undefined), I.manifest);
    await establish("A: I's layer", plainPull(via(MIRROR_A, 'priv/app', `blobs/${I.layers[0]!.digest}`), undefined), privateLayer);
    await establish('G: priv/app:v1 (J)', plainPull(via(MIRROR_G, 'priv/app', 'manifests/v1'), undefined), J.manifest);
  });

  afterAll(async () => {
    await agent?.stop().catch(() => undefined);
    await Promise.allSettled(proxies.map((proxy) => proxy.stop()));
    await Promise.allSettled([tRegistry?.stop(), hRegistry?.stop(), tokenServer?.stop()]);
    await Promise.allSettled([dir && removeTempDir(dir), signerDir && removeTempDir(signerDir)]);
  });

  /** Agent-mode answers per (phase, row), to check that the requester's credential made no difference. */
  const agentAnswers = new Map<string, Map<string, Array<{ who: Who; status: number; body: string }>>>();

  function recordAgentAnswer(cell: Cell, got: Pull): void {
    if (cell.row.mode !== 'agent') return;
    const rowKey = `${cell.phase}|${cell.row.kind}`;
    const byRequest = agentAnswers.get(rowKey) ?? new Map<string, Array<{ who: Who; status: number; body: string }>>();
    agentAnswers.set(rowKey, byRequest);
    const requestKey = `${cell.content}${cell.twin ? ' (uncached twin)' : ''}`;
    const list = byRequest.get(requestKey) ?? [];
    byRequest.set(requestKey, list);
    list.push({ who: cell.who, status: got.status, body: got.status === 200 ? sha256(got.body) : '(error)' });
  }

  /** No body the requester saw may carry the private layer or the private manifest, unless the cell is entitled to exactly that. */
  function expectNoPrivateBytes(cell: Cell, got: Pull, label: string): void {
    const entitledToPrivate = got.status === 200 && expectedStatus(cell) === 200 && (expectedBody(cell).equals(privateLayer) || expectedBody(cell).equals(images.I.manifest));
    const bodies = entitledToPrivate ? got.seen.slice(0, -1) : got.seen;
    for (const [index, body] of bodies.entries()) {
      expect(body.includes(privateSlice), `${label}: body #${index} carries the private layer's bytes`).toBe(false);
      expect(body.includes(images.I.manifest), `${label}: body #${index} carries the private manifest`).toBe(false);
    }
  }

  async function runCell(cell: Cell): Promise<void> {
    const want = expectedStatus(cell);
    if (cell.phase === 'up') {
      // The oracle: the upstream's own answer to the credential it would see. A mismatch here is a test bug.
      const oracle = await direct(cell);
      expect(oracle.status, `test setup: upstream itself answered ${oracle.status}, the table says ${want}`).toBe(want);
      if (want === 200) expect(sha256(oracle.body), 'test setup: upstream body').toBe(sha256(expectedBody(cell)));
    }
    const got = await throughAgent(cell);
    recordAgentAnswer(cell, got);
    const summary = `agent answered ${got.status} ${got.status === 200 ? `(${got.body.length} bytes)` : got.body.subarray(0, 200).toString('utf8')}`;
    expectNoPrivateBytes(cell, got, summary);
    if (want === 401 && cell.row.mode === 'agent') {
      // The upstream refuses the agent's own credential: a refusal, never content. The agent reports
      // it as 502 UNAUTHORIZED ("upstream refused the agent's credentials": the node's credential is
      // the one at fault, and containerd has no credential of its own to offer).
      expect([401, 403, 404, 502], summary).toContain(got.status);
      if (got.status === 502) expect(ociCode(got.body), summary).toBe('UNAUTHORIZED');
      return;
    }
    expect(got.status, summary).toBe(want);
    switch (want) {
      case 200:
        expect(sha256(got.body), 'the content served').toBe(sha256(expectedBody(cell)));
        break;
      case 404:
        expect(ociCode(got.body), summary).toBe(cell.content === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN');
        break;
      case 503:
        expect(ociCode(got.body), summary).toBe('UNAVAILABLE');
        break;
      case 401: {
        // passthrough: 401 with the challenge containerd needs to authenticate.
        const challenge = header(got, 'www-authenticate') ?? '';
        if (cell.row.upstream === 'T') {
          expect(challenge, 'the Bearer realm points at the agent').toMatch(/^Bearer realm="http:\/\/127\.0\.0\.1:\d+\/_token\//);
          expect(challenge, 'the challenge is scoped to the requested repository').toContain(`repository:${cell.row.repository}:pull`);
        } else {
          expect(challenge, 'the Basic challenge').toMatch(/^Basic /);
        }
        break;
      }
    }
  }

  function agentModeSameForEveryone(phase: Phase): void {
    for (const row of ROWS.filter((r) => r.mode === 'agent')) {
      it(`agent | ${row.kind} (${row.registry} ${row.repository}) | upstream ${phase}: every requester got the same answer`, () => {
        const byRequest = agentAnswers.get(`${phase}|${row.kind}`);
        expect(byRequest, 'the cells of this row ran').toBeDefined();
        for (const [request, answers] of byRequest!) {
          expect(answers.map((a) => a.who).sort(), request).toEqual([...WHO].sort());
          const distinct = new Set(answers.map((a) => `${a.status} ${a.body}`));
          expect([...distinct], `${request}: ${answers.map((a) => `${a.who}=${a.status}`).join(', ')}`).toHaveLength(1);
        }
      });
    }
  }

  describe('upstream up', () => {
    it.each(cellsFor('up').map((cell) => [cell.name, cell] as const))('%s', async (_name, cell) => {
      await runCell(cell);
    });
    agentModeSameForEveryone('up');
  });

  describe('upstream down (registries and token realm unreachable)', () => {
    beforeAll(async () => {
      await Promise.all([tProxy.setFault({ kind: 'down' }), realmProxy.setFault({ kind: 'down' }), hProxy.setFault({ kind: 'down' })]);
    });

    afterAll(async () => {
      await Promise.allSettled(proxies.map((proxy) => proxy.setFault(undefined)));
    });

    it.each(cellsFor('down').map((cell) => [cell.name, cell] as const))('%s', async (_name, cell) => {
      await runCell(cell);
    });
    agentModeSameForEveryone('down');
  });
});
