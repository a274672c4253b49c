// AccessBroker against a real UpstreamClient (direct route, default destination policy: the
// upstream's own host and port are allowed, loopback included) and a scripted registry on
// 127.0.0.1. The clock is the broker's `now` hook: ACCESS_RECHECK_MS and max_stale are crossed
// without waiting. Requests the scripted upstream saw (method, path, Authorization) are the proof.
//
// "Upstream down" is mostly a 503 from the scripted upstream (an UpstreamError `status` ≥ 500,
// unavailable, answered at once); where a refused connection matters (the token realm, and one
// registry check) the server is really closed. A refused registry request is retried once by the
// client after 200 ms, so those are kept few: the token realm is a second scripted server (on
// another loopback port, allowed as allowed_destinations would), closed while the registry answers 503.
import { createHash } from 'node:crypto';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseDestinations } from '../config/destinations.ts';
import { BodyBudget } from '../memory/body-budget.ts';
import { type Digest, sha256Of } from '../oci/digest.ts';
import { toOciError } from '../http/errors.ts';
import { ContentUnknownError, OciError } from '../oci/errors.ts';
import { MANIFEST_ACCEPT } from '../oci/media-types.ts';
import { type RepositoryName, parseRepositoryName } from '../oci/reference.ts';
import { parseChallenge } from '../upstream/challenge.ts';
import { UpstreamClient } from '../upstream/client.ts';
import { UpstreamError } from '../upstream/errors.ts';
import { ACCESS_RECHECK_MS, AccessBroker, type Requester, type TokenAnswer, realmCredential } from './broker.ts';
import { AuthRequiredError, TokenRealmUnknownError } from './errors.ts';
import { ANONYMOUS_AT_REALM, hashCredential } from './access-memory.ts';
import { closeServer, listenLoopback } from '../../test/fixtures/http-server.ts';
import { manifestReferences } from '../oci/references.ts';

const REGISTRY = 'mirror.test';
const AGENT_BASE = 'http://agent.local:5050';
const APP: RepositoryName = parseRepositoryName('team/app');
const OTHER: RepositoryName = parseRepositoryName('team/other');
const PRIV: RepositoryName = parseRepositoryName('priv/app');
const PRIV_OTHER: RepositoryName = parseRepositoryName('priv/other');
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const MAX_STALE = HOUR;
/** A realm on another loopback port must be allowed, as an admin would list it. */
const LOOPBACK_ALLOWED = parseDestinations(['127.0.0.0/8']);
const T0 = 1_700_000_000_000;

const D1 = sha256Of('one');
const D2 = sha256Of('two');


function basic(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

const ALICE: Requester = { authorization: basic('alice', 'alice-pw') };
const BOB: Requester = { authorization: basic('bob', 'bob-pw') };
const CAROL: Requester = { authorization: basic('carol', 'carol-pw') };
/** Only ever refused: the one who makes the broker see a challenge. */
const DAVE: Requester = { authorization: basic('dave', 'dave-pw') };
const SEEN: RepositoryName = parseRepositoryName('seen/repo');
const ANON: Requester = {};

interface Seen {
  readonly method: string;
  readonly path: string;
  readonly authorization: string | undefined;
  readonly accept: string | undefined;
  readonly body: string;
}

interface Answer {
  readonly status: number;
  readonly headers?: Record<string, string>;
  readonly body?: string;
}

/** A registry (and token realm) on 127.0.0.1 answering what the test's `respond` says; records every request. */
class ScriptedUpstream {
  readonly seen: Seen[] = [];
  /** Default: nothing is there. */
  respond: (request: Seen) => Answer | Promise<Answer> = () => ({ status: 404 });
  /** Every request answered 503 (upstream unavailable, on its side). */
  unavailable = false;
  readonly url: URL;
  readonly #server: Server;

  private constructor(server: Server, port: number) {
    this.#server = server;
    this.url = new URL(`http://127.0.0.1:${port}/`);
    server.on('request', (req: IncomingMessage, res: ServerResponse) => this.#answer(req, res));
  }

  static async start(): Promise<ScriptedUpstream> {
    const server = createServer();
    return new ScriptedUpstream(server, await listenLoopback(server));
  }

  get realm(): string {
    return `${this.url.origin}/token`;
  }

  /** A Bearer challenge naming this server's /token as realm. */
  challenge(scope: string, extra = ''): string {
    return `Bearer realm="${this.realm}",service="s",scope="${scope}"${extra}`;
  }

  count(method?: string, path?: string): number {
    return this.seen.filter((s) => (method === undefined || s.method === method) && (path === undefined || s.path === path)).length;
  }

  /** Stops listening, drops open connections: from now on connections are refused. */
  stop(): Promise<void> {
    return closeServer(this.#server);
  }

  #answer(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const seen: Seen = {
        method: req.method ?? '',
        path: req.url ?? '',
        authorization: req.headers.authorization,
        accept: req.headers.accept,
        body: Buffer.concat(chunks).toString('utf8'),
      };
      this.seen.push(seen);
      void Promise.resolve(this.unavailable ? { status: 503 } : this.respond(seen)).then((answer) => {
        const body = answer.body ?? '';
        res.writeHead(answer.status, { 'content-length': String(Buffer.byteLength(body)), ...answer.headers });
        res.end(seen.method === 'HEAD' ? undefined : body);
      });
    });
  }
}

function blobPath(name: string, d: Digest): string {
  return `/v2/${name}/blobs/${d}`;
}

function manifestPath(name: string, d: Digest): string {
  return `/v2/${name}/manifests/${d}`;
}

async function failureOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (error: unknown) => error,
  );
}

function realmId(challenge: string | undefined): string {
  const realm = parseChallenge(challenge)?.params['realm'] ?? '';
  return realm.slice(realm.lastIndexOf('/') + 1);
}

function realmIdOf(href: string): string {
  return createHash('sha256').update(new URL(href).href).digest('hex').slice(0, 16);
}

describe('AccessBroker', () => {
  let upstream: ScriptedUpstream;
  /** The token realm, when a test starts one. */
  let realmServer: ScriptedUpstream | undefined;
  let clock: number;
  let bodies: BodyBudget;
  const clients: UpstreamClient[] = [];

  beforeEach(async () => {
    upstream = await ScriptedUpstream.start();
    clock = T0;
    bodies = new BodyBudget();
  });

  afterEach(async () => {
    // Every token answer the tests took was released.
    expect(bodies.state()).toEqual({ held: 0, waiting: 0 });
    await Promise.all(clients.splice(0).map((client) => client.close()));
    await upstream.stop();
    await realmServer?.stop();
    realmServer = undefined;
  });

  function newBroker(auth: 'agent' | 'passthrough', options: { maxStaleMs?: number; repositoryPrefix?: string } = {}): AccessBroker {
    const client = new UpstreamClient({ registry: REGISTRY, base: upstream.url, auth, allowedDestinations: LOOPBACK_ALLOWED });
    clients.push(client);
    return new AccessBroker({
      registry: REGISTRY,
      upstream: client,
      repositoryPrefix: options.repositoryPrefix ?? '',
      maxStaleMs: options.maxStaleMs ?? MAX_STALE,
      agentBase: () => AGENT_BASE,
      bodies,
      now: () => clock,
    });
  }

  /** Makes the broker see a Bearer challenge (a 401 to DAVE for D2 in seen/repo). */
  async function seeChallenge(broker: AccessBroker, extra = ''): Promise<AuthRequiredError> {
    const before = upstream.respond;
    upstream.respond = () => ({ status: 401, headers: { 'www-authenticate': upstream.challenge('repository:seen/repo:pull', extra) } });
    const error = await failureOf(broker.check(SEEN, 'blobs', D2, DAVE));
    upstream.respond = before;
    expect(error).toBeInstanceOf(AuthRequiredError);
    return error as AuthRequiredError;
  }

  function expectRewritten(error: unknown, scope: string): void {
    expect(error).toBeInstanceOf(AuthRequiredError);
    const challenge = parseChallenge((error as AuthRequiredError).challenge);
    expect(challenge?.scheme).toBe('bearer');
    expect(challenge?.params).toEqual({
      realm: `${AGENT_BASE}/_token/${REGISTRY}/${realmIdOf(upstream.realm)}`,
      service: 's',
      scope,
    });
  }

  describe('passthrough: remembered access', () => {
    it('confirm then check for the same credential, repository and digest asks nothing within ACCESS_RECHECK_MS, a HEAD with the credential after', async () => {
      const broker = newBroker('passthrough');
      upstream.respond = (r) => ({ status: r.method === 'HEAD' && r.authorization === ALICE.authorization ? 200 : 401 });
      broker.confirm(APP, 'blobs', D1, ALICE);
      clock = T0 + ACCESS_RECHECK_MS;
      await broker.check(APP, 'blobs', D1, ALICE);
      expect(upstream.seen).toHaveLength(0);

      clock = T0 + ACCESS_RECHECK_MS + 1;
      await broker.check(APP, 'blobs', D1, ALICE);
      expect(upstream.seen).toEqual([expect.objectContaining({ method: 'HEAD', path: blobPath(APP, D1), authorization: ALICE.authorization })]);

      // That HEAD confirmed again: the next 5 minutes ask nothing.
      clock += ACCESS_RECHECK_MS;
      await broker.check(APP, 'blobs', D1, ALICE);
      expect(upstream.seen).toHaveLength(1);
    });

    it('rechecks after max_stale when that is shorter than ACCESS_RECHECK_MS', async () => {
      const broker = newBroker('passthrough', { maxStaleMs: MINUTE });
      upstream.respond = () => ({ status: 200 });
      broker.confirm(APP, 'blobs', D1, ALICE);
      clock = T0 + MINUTE;
      await broker.check(APP, 'blobs', D1, ALICE);
      expect(upstream.seen).toHaveLength(0);
      clock = T0 + MINUTE + 1;
      await broker.check(APP, 'blobs', D1, ALICE);
      expect(upstream.count('HEAD', blobPath(APP, D1))).toBe(1);
    });

    it('another credential is always asked, with its own Authorization', async () => {
      const broker = newBroker('passthrough');
      upstream.respond = () => ({ status: 200 });
      broker.confirm(APP, 'blobs', D1, ALICE);
      await broker.check(APP, 'blobs', D1, BOB);
      await broker.check(APP, 'blobs', D1, ANON);
      expect(upstream.seen.map((s) => [s.method, s.path, s.authorization])).toEqual([
        ['HEAD', blobPath(APP, D1), BOB.authorization],
        ['HEAD', blobPath(APP, D1), undefined],
      ]);
    });

    it('another repository is asked: a 404 there is BLOB_UNKNOWN (MANIFEST_UNKNOWN for a manifest)', async () => {
      const broker = newBroker('passthrough');
      broker.confirm(APP, 'blobs', D1, ALICE);
      broker.confirm(APP, 'manifests', D1, ALICE);
      upstream.respond = () => ({ status: 404, body: '{"errors":[{"code":"BLOB_UNKNOWN"}]}' });
      const blob = await failureOf(broker.check(OTHER, 'blobs', D1, ALICE));
      expect(blob).toBeInstanceOf(ContentUnknownError);
      expect(toOciError(blob).code).toBe('BLOB_UNKNOWN');
      const manifest = await failureOf(broker.check(OTHER, 'manifests', D1, ALICE));
      expect(toOciError(manifest).code).toBe('MANIFEST_UNKNOWN');
      expect(upstream.seen.map((s) => [s.method, s.path, s.authorization])).toEqual([
        ['HEAD', blobPath(OTHER, D1), ALICE.authorization],
        ['HEAD', manifestPath(OTHER, D1), ALICE.authorization],
      ]);
      // A manifest is asked for with the manifest Accept.
      expect(upstream.seen[1]?.accept).toBe(MANIFEST_ACCEPT);
    });

    it('another repository answering 401: AuthRequiredError whose Bearer realm is the agent token endpoint', async () => {
      const broker = newBroker('passthrough');
      broker.confirm(APP, 'blobs', D1, ALICE);
      upstream.respond = () => ({ status: 401, headers: { 'www-authenticate': upstream.challenge('repository:team/other:pull') } });
      const error = await failureOf(broker.check(OTHER, 'blobs', D1, ALICE));
      expectRewritten(error, 'repository:team/other:pull');
      expect((error as AuthRequiredError).registry).toBe(REGISTRY);
      expect((error as AuthRequiredError).message).toBe('upstream refused the presented credential');
      expect(upstream.count('HEAD', blobPath(OTHER, D1))).toBe(1);
    });

    it('repository_prefix: the HEAD goes to the prefixed repository and the challenge scope loses the prefix', async () => {
      const broker = newBroker('passthrough', { repositoryPrefix: 'mirror' });
      upstream.respond = () => ({ status: 401, headers: { 'www-authenticate': upstream.challenge('repository:mirror/team/app:pull') } });
      const error = await failureOf(broker.check(APP, 'blobs', D1, ANON));
      expect(upstream.seen.map((s) => s.path)).toEqual([blobPath('mirror/team/app', D1)]);
      expectRewritten(error, 'repository:team/app:pull');
    });

    it('concurrent checks of one credential and content share one HEAD; another credential has its own', async () => {
      const broker = newBroker('passthrough');
      const gate = Promise.withResolvers<void>();
      upstream.respond = async () => {
        await gate.promise;
        return { status: 200 };
      };
      const checks = [broker.check(APP, 'blobs', D1, ALICE), broker.check(APP, 'blobs', D1, ALICE), broker.check(APP, 'blobs', D1, ALICE)];
      const bob = broker.check(APP, 'blobs', D1, BOB);
      // Both distinct HEADs arrive; nothing more does.
      for (let i = 0; i < 200 && upstream.seen.length < 2; i += 1) await new Promise((resolve) => setTimeout(resolve, 2));
      await new Promise((resolve) => setTimeout(resolve, 10));
      expect(upstream.seen.map((s) => s.authorization).sort()).toEqual([ALICE.authorization, BOB.authorization].sort());
      gate.resolve();
      await Promise.all([...checks, bob]);
      expect(upstream.count('HEAD')).toBe(2);

      // A shared check that failed is over: the next one asks again.
      upstream.respond = () => ({ status: 404 });
      await failureOf(broker.check(APP, 'blobs', D2, ALICE));
      await failureOf(broker.check(APP, 'blobs', D2, ALICE));
      expect(upstream.count('HEAD', blobPath(APP, D2))).toBe(2);
    });
  });

  describe('upstream down', () => {
    it("content shown in one repository displaces only that repository's: 60,000 blobs bob reads in bob/app leave alice's priv/app readable offline", async () => {
      const broker = newBroker('passthrough');
      await seeChallenge(broker);
      broker.confirm(PRIV, 'blobs', D1, ALICE);
      const bobs = parseRepositoryName('bob/app');
      for (let i = 0; i < 60_000; i += 1) broker.confirm(bobs, 'blobs', sha256Of(`bob-${i}`), BOB);
      upstream.unavailable = true;
      clock = T0 + 30 * MINUTE;
      await broker.check(PRIV, 'blobs', D1, ALICE);
      // The memory is bounded: bob's oldest went (offline: not served, as for uncached content).
      const oldest = await failureOf(broker.check(bobs, 'blobs', sha256Of('bob-0'), BOB));
      expect(oldest).toBeInstanceOf(UpstreamError);
      await broker.check(bobs, 'blobs', sha256Of('bob-59999'), BOB);
    });

    it('passthrough: a confirmed credential passes within max_stale of its confirmation, not after (then 401 with the last challenge)', async () => {
      const broker = newBroker('passthrough');
      await seeChallenge(broker);
      broker.confirm(APP, 'blobs', D1, ALICE);
      upstream.unavailable = true;

      clock = T0 + 30 * MINUTE;
      await broker.check(APP, 'blobs', D1, ALICE);
      expect(upstream.count('HEAD', blobPath(APP, D1))).toBe(1);
      clock = T0 + MAX_STALE;
      await broker.check(APP, 'blobs', D1, ALICE);

      clock = T0 + MAX_STALE + 1;
      const late = await failureOf(broker.check(APP, 'blobs', D1, ALICE));
      // The remembered challenge, scoped to the repository asked for.
      expectRewritten(late, 'repository:team/app:pull');

      // Someone upstream never accepted: refused even within max_stale.
      clock = T0 + 30 * MINUTE;
      expectRewritten(await failureOf(broker.check(APP, 'blobs', D1, BOB)), 'repository:team/app:pull');
      const anonymous = await failureOf(broker.check(APP, 'blobs', D1, ANON));
      expect(anonymous).toBeInstanceOf(AuthRequiredError);
      expect((anonymous as Error).message).toBe('upstream unavailable: present a credential');
    });

    it('passthrough: no challenge ever seen: an anonymous requester gets the UpstreamError itself, a credential gets 401 without challenge', async () => {
      const broker = newBroker('passthrough');
      broker.confirm(APP, 'blobs', D1, ALICE);
      upstream.unavailable = true;
      clock = T0 + 30 * MINUTE;
      const anonymous = await failureOf(broker.check(APP, 'blobs', D1, ANON));
      expect(anonymous).toBeInstanceOf(UpstreamError);
      expect(anonymous).not.toBeInstanceOf(AuthRequiredError);
      expect((anonymous as UpstreamError).status).toBe(503);
      expect((anonymous as UpstreamError).unavailable).toBe(true);
      const bob = await failureOf(broker.check(APP, 'blobs', D1, BOB));
      expect(bob).toBeInstanceOf(AuthRequiredError);
      expect((bob as AuthRequiredError).challenge).toBeUndefined();
      // unavailable() says the same.
      const error = new UpstreamError(REGISTRY, 'unreachable', 'upstream unreachable (ECONNRESET)');
      expect(broker.unavailable(APP, ANON, error)).toBe(error);
      expect(broker.unavailable(APP, BOB, error)).toBeInstanceOf(AuthRequiredError);
      expect(broker.unavailable(APP, ALICE, error)).toBe(error);
    });

    it('passthrough: the confirmation is per credential and per repository', async () => {
      const broker = newBroker('passthrough');
      await seeChallenge(broker);
      broker.confirm(APP, 'blobs', D1, ALICE);
      broker.confirm(OTHER, 'blobs', D2, BOB);
      upstream.unavailable = true;
      clock = T0 + 30 * MINUTE;
      // Alice: content shown in team/other (to Bob), but Alice was never accepted there.
      expect(await failureOf(broker.check(OTHER, 'blobs', D2, ALICE))).toBeInstanceOf(AuthRequiredError);
      // Alice is accepted in team/app, but D2 was never shown there: not served (the error is the 503).
      const unknown = await failureOf(broker.check(APP, 'blobs', D2, ALICE));
      expect(unknown).toBeInstanceOf(UpstreamError);
      expect(unknown).not.toBeInstanceOf(AuthRequiredError);
      await broker.check(OTHER, 'blobs', D2, BOB);
    });

    it('passthrough: an ANONYMOUS acceptance counts for everyone', async () => {
      const broker = newBroker('passthrough');
      await seeChallenge(broker);
      broker.confirm(APP, 'blobs', D1, ANON);
      upstream.unavailable = true;
      clock = T0 + 30 * MINUTE;
      await broker.check(APP, 'blobs', D1, BOB);
      await broker.check(APP, 'blobs', D1, ALICE);
      await broker.check(APP, 'blobs', D1, ANON);
      expect(upstream.count('HEAD', blobPath(APP, D1))).toBe(3);
      clock = T0 + MAX_STALE + 1;
      expect(await failureOf(broker.check(APP, 'blobs', D1, BOB))).toBeInstanceOf(AuthRequiredError);
      // Not in another repository.
      clock = T0 + 30 * MINUTE;
      expect(await failureOf(broker.check(OTHER, 'blobs', D1, BOB))).toBeInstanceOf(AuthRequiredError);
    });

    it('passthrough: a refused connection counts as down too', async () => {
      const broker = newBroker('passthrough');
      broker.confirm(APP, 'blobs', D1, ALICE);
      await upstream.stop();
      clock = T0 + 30 * MINUTE;
      // Asked (and refused twice: the client retries a refused connection once), then served.
      await broker.check(APP, 'blobs', D1, ALICE);
    });

    it('agent mode: confirmed content passes within max_stale; otherwise the UpstreamError (503), never AuthRequiredError', async () => {
      const broker = newBroker('agent');
      broker.confirm(APP, 'blobs', D1, ALICE);
      upstream.unavailable = true;
      clock = T0 + 30 * MINUTE;
      await broker.check(APP, 'blobs', D1, ANON);
      await broker.check(APP, 'blobs', D1, BOB);
      expect(upstream.count('HEAD', blobPath(APP, D1))).toBe(2);

      for (const requester of [ANON, ALICE, BOB]) {
        const unconfirmed = await failureOf(broker.check(APP, 'blobs', D2, requester));
        expect(unconfirmed).toBeInstanceOf(UpstreamError);
        expect((unconfirmed as UpstreamError).status).toBe(503);
      }
      clock = T0 + MAX_STALE + 1;
      const late = await failureOf(broker.check(APP, 'blobs', D1, ALICE));
      expect(late).toBeInstanceOf(UpstreamError);
      expect(late).not.toBeInstanceOf(AuthRequiredError);
    });
  });

  describe('refusal withdraws access', () => {
    for (const status of [401, 403] as const) {
      it(`passthrough: a ${status} for a credential withdraws its remembered access at once (asked again; offline refused)`, async () => {
        const broker = newBroker('passthrough');
        broker.confirm(APP, 'blobs', D1, ALICE);
        broker.confirm(APP, 'blobs', D1, BOB);
        clock = T0 + MINUTE;
        const headers: Record<string, string> = status === 401 ? { 'www-authenticate': upstream.challenge('repository:team/app:pull') } : {};
        upstream.respond = () => ({ status, headers });
        const refused = await failureOf(broker.check(APP, 'blobs', D2, ALICE));
        if (status === 401) expect(refused).toBeInstanceOf(AuthRequiredError);
        else expect(toOciError(refused).code).toBe('DENIED');

        // Within 5 minutes of the confirmation, yet asked again; upstream is down now.
        upstream.unavailable = true;
        clock = T0 + 2 * MINUTE;
        const offline = await failureOf(broker.check(APP, 'blobs', D1, ALICE));
        expect(offline).toBeInstanceOf(AuthRequiredError);
        expect(upstream.count('HEAD', blobPath(APP, D1))).toBe(1);
        // Bob was not refused: still remembered, nothing asked.
        await broker.check(APP, 'blobs', D1, BOB);
        expect(upstream.count('HEAD', blobPath(APP, D1))).toBe(1);
      });
    }

    it('passthrough: a refusal seen through failure() withdraws it too; a new confirmation restores it', async () => {
      const broker = newBroker('passthrough');
      broker.confirm(APP, 'blobs', D1, ALICE);
      upstream.respond = () => ({ status: 403 });
      const response = await broker.request('GET', APP, 'tags/list', ALICE);
      const error = await broker.failure(APP, response, ALICE, () => new OciError('NAME_UNKNOWN', 'x'));
      expect(toOciError(error).code).toBe('DENIED');
      upstream.seen.length = 0;
      upstream.respond = () => ({ status: 200 });
      clock = T0 + 1;
      await broker.check(APP, 'blobs', D1, ALICE);
      expect(upstream.count('HEAD', blobPath(APP, D1))).toBe(1);
      await broker.check(APP, 'blobs', D1, ALICE);
      expect(upstream.count('HEAD', blobPath(APP, D1))).toBe(1);
    });

    it('agent mode: a 403 withdraws the content links for the agent (asked again within 5 min)', async () => {
      const broker = newBroker('agent');
      broker.confirm(APP, 'blobs', D1, ANON);
      clock = T0 + MINUTE;
      upstream.respond = () => ({ status: 403 });
      expect(toOciError(await failureOf(broker.check(APP, 'blobs', D2, ANON))).code).toBe('DENIED');
      upstream.unavailable = true;
      const offline = await failureOf(broker.check(APP, 'blobs', D1, ANON));
      expect(offline).toBeInstanceOf(UpstreamError);
      expect(upstream.count('HEAD', blobPath(APP, D1))).toBe(1);
    });
  });

  describe('agent mode entitlement', () => {
    it('confirm entitles every requester for that repository and content, not another repository or the other kind', async () => {
      const broker = newBroker('agent');
      broker.confirm(APP, 'blobs', D1, ALICE);
      for (const requester of [ALICE, BOB, ANON]) await broker.check(APP, 'blobs', D1, requester);
      expect(upstream.seen).toHaveLength(0);

      const other = await failureOf(broker.check(OTHER, 'blobs', D1, ALICE));
      expect(toOciError(other).code).toBe('BLOB_UNKNOWN');
      const kind = await failureOf(broker.check(APP, 'manifests', D1, ALICE));
      expect(toOciError(kind).code).toBe('MANIFEST_UNKNOWN');
      expect(upstream.seen.map((s) => [s.method, s.path])).toEqual([
        ['HEAD', blobPath(OTHER, D1)],
        ['HEAD', manifestPath(APP, D1)],
      ]);
      // The agent's own credential (none here), never the requester's.
      expect(upstream.seen.map((s) => s.authorization)).toEqual([undefined, undefined]);

      // The other way round: a manifest confirmation does not entitle the blob of that digest.
      broker.confirm(APP, 'manifests', D2, ANON);
      await broker.check(APP, 'manifests', D2, BOB);
      expect(upstream.seen).toHaveLength(2);
      await failureOf(broker.check(APP, 'blobs', D2, BOB));
      expect(upstream.count('HEAD', blobPath(APP, D2))).toBe(1);
    });
  });

  describe('vouch and derive', () => {
    const config = sha256Of('config');
    const layer = sha256Of('layer');
    const manifestBody = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config, size: 2 },
        layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layer, size: 5 }],
      }),
    );
    const M = sha256Of(manifestBody.toString());

    it("vouch: a tag record's date entitles an agent-mode manifest offline within max_stale of that date, not after", async () => {
      const broker = newBroker('agent');
      broker.vouch(APP, 'manifests', M, T0);
      upstream.unavailable = true;
      clock = T0 + 30 * MINUTE;
      await broker.check(APP, 'manifests', M, ANON);
      expect(upstream.count('HEAD', manifestPath(APP, M))).toBe(1);
      clock = T0 + MAX_STALE + 1;
      const late = await failureOf(broker.check(APP, 'manifests', M, ANON));
      expect(late).toBeInstanceOf(UpstreamError);
      // Only where vouched.
      clock = T0 + 30 * MINUTE;
      expect(await failureOf(broker.check(OTHER, 'manifests', M, ANON))).toBeInstanceOf(UpstreamError);
    });

    it('vouch: an older date never moves a newer confirmation back', async () => {
      const broker = newBroker('agent');
      clock = T0 + 50 * MINUTE;
      broker.confirm(APP, 'manifests', M, ANON);
      broker.vouch(APP, 'manifests', M, T0);
      upstream.unavailable = true;
      clock = T0 + MAX_STALE + 10 * MINUTE;
      await broker.check(APP, 'manifests', M, ANON);
    });

    it("derive: a manifest's references count offline only, within max_stale of the manifest's confirmation", async () => {
      expect(manifestReferences(manifestBody)).toEqual([
        { kind: 'blobs', digest: config },
        { kind: 'blobs', digest: layer },
      ]);
      const broker = newBroker('agent');
      // A manifest never shown in a repository vouches for nothing there.
      broker.derive(OTHER, M, manifestBody);
      broker.confirm(APP, 'manifests', M, ANON);
      broker.derive(APP, M, manifestBody);

      // Online, even within 5 minutes: asked.
      upstream.respond = () => ({ status: 200 });
      clock = T0 + MINUTE;
      await broker.check(APP, 'blobs', config, ANON);
      expect(upstream.count('HEAD', blobPath(APP, config))).toBe(1);

      // Offline: the layer counts (never confirmed itself), as of the manifest's date.
      upstream.unavailable = true;
      clock = T0 + 30 * MINUTE;
      await broker.check(APP, 'blobs', layer, ANON);
      expect(upstream.count('HEAD', blobPath(APP, layer))).toBe(1);
      // Not a digest the manifest does not name, not in another repository.
      expect(await failureOf(broker.check(APP, 'blobs', D1, ANON))).toBeInstanceOf(UpstreamError);
      expect(await failureOf(broker.check(OTHER, 'blobs', layer, ANON))).toBeInstanceOf(UpstreamError);
      expect(upstream.count('HEAD', blobPath(OTHER, layer))).toBe(1);
      clock = T0 + MAX_STALE + 1;
      expect(await failureOf(broker.check(APP, 'blobs', layer, ANON))).toBeInstanceOf(UpstreamError);
    });

    it('derive: a 404 for a derived reference drops it', async () => {
      const broker = newBroker('agent');
      broker.confirm(APP, 'manifests', M, ANON);
      broker.derive(APP, M, manifestBody);
      clock = T0 + MINUTE;
      expect(toOciError(await failureOf(broker.check(APP, 'blobs', layer, ANON))).code).toBe('BLOB_UNKNOWN');
      upstream.unavailable = true;
      expect(await failureOf(broker.check(APP, 'blobs', layer, ANON))).toBeInstanceOf(UpstreamError);
    });

    it('passthrough: nothing is derived (each requester is confirmed by upstream itself, piece by piece)', async () => {
      const broker = newBroker('passthrough');
      await seeChallenge(broker);
      broker.confirm(APP, 'manifests', M, ALICE);
      broker.derive(APP, M, manifestBody);
      upstream.unavailable = true;
      clock = T0 + 30 * MINUTE;
      // Alice is accepted for the repository, but the layer was never shown to anyone there: 503, as uncached.
      const error = await failureOf(broker.check(APP, 'blobs', layer, ALICE));
      expect(error).toBeInstanceOf(UpstreamError);
      expect(await failureOf(broker.check(APP, 'blobs', layer, BOB))).toBeInstanceOf(AuthRequiredError);
    });
  });

  describe('unavailable', () => {
    const down = (): UpstreamError => new UpstreamError(REGISTRY, 'unreachable', 'upstream unreachable (ECONNRESET)');

    it('passthrough, after a challenge: 401 for a requester not accepted for the repository; the error itself for an accepted one', async () => {
      const broker = newBroker('passthrough');
      await seeChallenge(broker, ',error="insufficient_scope"');
      broker.confirm(APP, 'blobs', D1, ALICE);
      const error = down();
      expect(broker.unavailable(APP, ALICE, error)).toBe(error);
      const bob = broker.unavailable(APP, BOB, error);
      // Scoped to the repository asked for; another puller's error= dropped.
      expectRewritten(bob, 'repository:team/app:pull');
      expect((bob as Error).message).toBe('upstream is unavailable and upstream did not accept this credential for this repository within max_stale');
      expectRewritten(broker.unavailable(APP, ANON, error), 'repository:team/app:pull');
      // Alice, in a repository she was not accepted for.
      expect(broker.unavailable(OTHER, ALICE, error)).toBeInstanceOf(AuthRequiredError);
      // Alice past max_stale.
      clock = T0 + MAX_STALE + 1;
      expect(broker.unavailable(APP, ALICE, error)).toBeInstanceOf(AuthRequiredError);
    });

    it('anything but an unavailable UpstreamError comes back as it is', async () => {
      const broker = newBroker('passthrough');
      await seeChallenge(broker);
      for (const error of [new Error('internal'), new OciError('BLOB_UNKNOWN', 'blob unknown'), new UpstreamError(REGISTRY, 'status', 'answered 400', { status: 400 })]) {
        expect(broker.unavailable(APP, BOB, error)).toBe(error);
      }
      const five = new UpstreamError(REGISTRY, 'status', 'answered 502', { status: 502 });
      expect(broker.unavailable(APP, BOB, five)).toBeInstanceOf(AuthRequiredError);
    });

    it('agent mode: always the error itself', () => {
      const broker = newBroker('agent');
      const error = down();
      expect(broker.unavailable(APP, ANON, error)).toBe(error);
      expect(broker.unavailable(APP, BOB, error)).toBe(error);
    });
  });

  describe('token endpoint', () => {
    const PW = 'alice-pw';
    const SCOPE = 'repository:priv/app:pull';
    const form = (fields: Record<string, string>): Buffer => Buffer.from(new URLSearchParams(fields).toString());

    function tokenBody(answer: TokenAnswer): { token: string; access_token?: string; expires_in: number } {
      const parsed = JSON.parse(answer.body.bytes.toString('utf8')) as { token: string; access_token?: string; expires_in: number };
      answer.body.release();
      return parsed;
    }

    /**
     * A token realm on its own loopback port: alice (Basic or password form) gets token T, bob (Basic)
     * gets TB, anyone else 401. The registry challenges every request but one presenting T.
     */
    async function startRealm(): Promise<ScriptedUpstream> {
      const realm = await ScriptedUpstream.start();
      realmServer = realm;
      realm.respond = (r): Answer => {
        const fields = new URLSearchParams(r.body);
        const alice = r.authorization === basic('alice', PW) || (fields.get('username') === 'alice' && fields.get('password') === PW);
        const who = alice ? 'T' : r.authorization === BOB.authorization ? 'TB' : undefined;
        if (!r.path.startsWith('/token') || who === undefined) {
          return { status: 401, headers: { 'content-type': 'application/json', 'www-authenticate': 'Basic realm="token"' }, body: '{"details":"bad"}' };
        }
        return { status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: who, expires_in: 300 }) };
      };
      upstream.respond = (r) =>
        r.authorization === 'Bearer T'
          ? { status: 200 }
          : { status: 401, headers: { 'www-authenticate': `Bearer realm="${realm.realm}",service="s",scope="${SCOPE}"` } };
      return realm;
    }

    /** A 401 from the registry teaches the broker the realm: its id, as handed to the puller. */
    async function learnRealm(broker: AccessBroker, realm: ScriptedUpstream): Promise<string> {
      const challenged = await failureOf(broker.check(PRIV, 'blobs', D1, ANON));
      expect(challenged).toBeInstanceOf(AuthRequiredError);
      const challenge = parseChallenge((challenged as AuthRequiredError).challenge);
      expect(challenge?.params['realm']).toBe(`${AGENT_BASE}/_token/${REGISTRY}/${realmIdOf(realm.realm)}`);
      return realmId((challenged as AuthRequiredError).challenge);
    }

    /** Upstream accepted alice's token T for priv/app at T0; then the realm and the registry are down, `downAt` ms later. */
    async function aliceAcceptedThenDown(downAt: number): Promise<{ broker: AccessBroker; id: string }> {
      const realm = await startRealm();
      const broker = newBroker('passthrough');
      const id = await learnRealm(broker, realm);
      tokenBody(await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization: basic('alice', PW) }));
      broker.confirm(PRIV, 'blobs', D1, { authorization: 'Bearer T' });
      await realm.stop();
      upstream.unavailable = true;
      clock = T0 + downAt;
      return { broker, id };
    }

    /** The token the agent's token endpoint answers `authorization` with (a realm's, or offline one of its own). */
    async function tokenOf(broker: AccessBroker, id: string, authorization: string): Promise<string> {
      return tokenBody(await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization })).token;
    }

    it('an unknown realm id is TokenRealmUnknownError', async () => {
      const broker = newBroker('passthrough');
      await expect(broker.token({ realmId: realmIdOf(upstream.realm), method: 'GET', query: '' })).rejects.toBeInstanceOf(TokenRealmUnknownError);
      await expect(broker.token({ realmId: 'nope', method: 'GET', query: '' })).rejects.toBeInstanceOf(TokenRealmUnknownError);
      expect(upstream.seen).toHaveLength(0);
    });

    it('an agent-mode mirror has no token endpoint, whatever challenge it saw', async () => {
      const realm = await startRealm();
      const broker = newBroker('agent');
      upstream.respond = () => ({ status: 401, headers: { 'www-authenticate': `Bearer realm="${realm.realm}",service="s",scope="${SCOPE}"` } });
      // The client fetches its own (anonymous) token from the realm, which refuses it: no realm learned for pullers.
      await failureOf(broker.check(PRIV, 'blobs', D1, ANON));
      await expect(broker.token({ realmId: realmIdOf(realm.realm), method: 'GET', query: `scope=${SCOPE}` })).rejects.toBeInstanceOf(TokenRealmUnknownError);
    });

    it('forwards a token request (GET with query, POST with form) to a realm learned from a challenge and returns its answer', async () => {
      const realm = await startRealm();
      const broker = newBroker('passthrough');
      const id = await learnRealm(broker, realm);

      const answer = await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}&service=s`, authorization: basic('alice', PW) });
      expect(answer.status).toBe(200);
      expect(answer.headers).toEqual({ 'content-type': 'application/json', 'cache-control': 'no-store' });
      expect(tokenBody(answer)).toEqual({ token: 'T', expires_in: 300 });
      const asked = realm.seen.at(-1)!;
      expect(asked.method).toBe('GET');
      expect(asked.authorization).toBe(basic('alice', PW));
      const url = new URL(asked.path, realm.url);
      expect(url.pathname).toBe('/token');
      expect(url.searchParams.get('scope')).toBe(SCOPE);
      expect(url.searchParams.get('service')).toBe('s');

      const posted = await broker.token({ realmId: id, method: 'POST', query: '', form: form({ grant_type: 'password', username: 'alice', password: PW, scope: SCOPE }) });
      expect(posted.status).toBe(200);
      expect(tokenBody(posted).token).toBe('T');
      const sent = realm.seen.at(-1)!;
      expect(sent.method).toBe('POST');
      // The service is upstream's own (the challenge's), added when the puller left it out.
      expect(Object.fromEntries(new URLSearchParams(sent.body))).toEqual({ grant_type: 'password', username: 'alice', password: PW, scope: SCOPE, service: 's' });

      // A refusal comes back as it is: status, type, challenge, body.
      const refused = await broker.token({ realmId: id, method: 'POST', query: '', form: form({ grant_type: 'password', username: 'alice', password: 'nope', scope: SCOPE }) });
      expect(refused.status).toBe(401);
      expect(refused.headers).toEqual({ 'content-type': 'application/json', 'cache-control': 'no-store', 'www-authenticate': 'Basic realm="token"' });
      expect(refused.body.bytes.toString()).toBe('{"details":"bad"}');
      refused.body.release();
      // The registry was asked once (the challenge); the realm three times.
      expect(upstream.seen).toHaveLength(1);
      expect(realm.seen).toHaveLength(3);
    });

    it('a challenge seen through failure() teaches the realm too', async () => {
      const realm = await startRealm();
      const broker = newBroker('passthrough');
      const response = await broker.request('GET', PRIV, `manifests/${D1}`, ANON);
      const error = await broker.failure(PRIV, response, ANON, () => new OciError('MANIFEST_UNKNOWN', 'x'));
      expect(error).toBeInstanceOf(AuthRequiredError);
      const answer = await broker.token({ realmId: realmId((error as AuthRequiredError).challenge), method: 'GET', query: `scope=${SCOPE}`, authorization: basic('alice', PW) });
      expect(tokenBody(answer).token).toBe('T');
      expect(realm.count('GET')).toBe(1);
    });

    it('the realm down: a credential whose token upstream accepted gets an offline token (form or Basic), good for that repository only', async () => {
      const realm = await startRealm();
      const broker = newBroker('passthrough');
      const id = await learnRealm(broker, realm);
      tokenBody(await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}&service=s`, authorization: basic('alice', PW) }));
      // Upstream accepted token T for priv/app (as the mirror confirms after serving with it).
      broker.confirm(PRIV, 'blobs', D1, { authorization: 'Bearer T' });
      // Bob got a token too, but upstream never accepted it: the realm's 200 alone is nothing.
      tokenBody(await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}&service=s`, authorization: BOB.authorization }));
      // D1 shown in priv/other too (to carol): only the offline token's own acceptance tells the repositories apart.
      broker.confirm(PRIV_OTHER, 'blobs', D1, CAROL);

      await realm.stop();
      upstream.unavailable = true;
      clock = T0 + 10 * MINUTE;

      const byForm = await broker.token({ realmId: id, method: 'POST', query: '', form: form({ grant_type: 'password', username: 'alice', password: PW, scope: SCOPE }) });
      const byBasic = await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}&service=s`, authorization: basic('alice', PW) });
      const tokens: string[] = [];
      for (const answer of [byForm, byBasic]) {
        expect(answer.status).toBe(200);
        expect(answer.headers).toEqual({ 'content-type': 'application/json', 'cache-control': 'no-store' });
        const body = tokenBody(answer);
        expect(body.token).toMatch(/^rpa-offline\./);
        expect(body.access_token).toBe(body.token);
        expect(body.expires_in).toBe(300);
        tokens.push(body.token);
      }

      // Past ACCESS_RECHECK_MS: check asks upstream (503) and falls back to what it remembers.
      const heads = upstream.count('HEAD', blobPath(PRIV, D1));
      for (const token of tokens) {
        await broker.check(PRIV, 'blobs', D1, { authorization: `Bearer ${token}` });
        expect(await failureOf(broker.check(PRIV_OTHER, 'blobs', D1, { authorization: `Bearer ${token}` }))).toBeInstanceOf(AuthRequiredError);
      }
      expect(upstream.count('HEAD', blobPath(PRIV, D1))).toBe(heads + 2);
      // Carol's own confirmation still stands.
      await broker.check(PRIV_OTHER, 'blobs', D1, CAROL);

      // A wrong password (form or Basic), bob's unconfirmed token, another repository: no offline token, the realm's failure.
      const attempts = [
        broker.token({ realmId: id, method: 'POST', query: '', form: form({ grant_type: 'password', username: 'alice', password: 'wrong', scope: SCOPE }) }),
        broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization: basic('alice', 'wrong') }),
        broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization: BOB.authorization }),
        broker.token({ realmId: id, method: 'GET', query: 'scope=repository:priv/other:pull', authorization: basic('alice', PW) }),
        broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}&scope=repository:priv/other:pull`, authorization: basic('alice', PW) }),
        broker.token({ realmId: id, method: 'GET', query: '', authorization: basic('alice', PW) }),
      ];
      for (const attempt of attempts) {
        const error = await failureOf(attempt);
        expect(error).toBeInstanceOf(UpstreamError);
        expect((error as UpstreamError).unavailable).toBe(true);
      }

      // Past max_stale of the realm acceptance: none either.
      clock = T0 + MAX_STALE + 1;
      expect(await failureOf(broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization: basic('alice', PW) }))).toBeInstanceOf(UpstreamError);
    });

    it('the registry down, its realm up: a new token the realm issued to a credential upstream accepted counts as that credential', async () => {
      const realm = await startRealm();
      const broker = newBroker('passthrough');
      const id = await learnRealm(broker, realm);
      tokenBody(await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization: basic('alice', PW) }));
      broker.confirm(PRIV, 'blobs', D1, { authorization: 'Bearer T' });
      // The registry goes away; the realm keeps issuing (new tokens: T2 for alice, TB for bob).
      upstream.unavailable = true;
      clock = T0 + 10 * MINUTE;
      const issue = realm.respond;
      realm.respond = async (r) => {
        const answer = await issue(r);
        return answer.body === JSON.stringify({ token: 'T', expires_in: 300 }) ? { ...answer, body: JSON.stringify({ token: 'T2', expires_in: 300 }) } : answer;
      };
      expect(await tokenOf(broker, id, basic('alice', PW))).toBe('T2');
      expect(await tokenOf(broker, id, BOB.authorization!)).toBe('TB');
      await broker.check(PRIV, 'blobs', D1, { authorization: 'Bearer T2' });
      // Bob's token was issued by the realm but upstream never accepted bob for priv/app.
      expect(await failureOf(broker.check(PRIV, 'blobs', D1, { authorization: 'Bearer TB' }))).toBeInstanceOf(AuthRequiredError);
      // T2 was asked for priv/app only.
      expect(await failureOf(broker.check(PRIV_OTHER, 'blobs', D1, { authorization: 'Bearer T2' }))).toBeInstanceOf(AuthRequiredError);
    });

    it('an offline token is dated like the realm acceptance it rests on: it does not outlive max_stale', async () => {
      const { broker, id } = await aliceAcceptedThenDown(MAX_STALE - MINUTE);
      const offline = await tokenOf(broker, id, basic('alice', PW));
      await broker.check(PRIV, 'blobs', D1, { authorization: `Bearer ${offline}` });
      clock = T0 + MAX_STALE + 1;
      expect(await failureOf(broker.check(PRIV, 'blobs', D1, { authorization: `Bearer ${offline}` }))).toBeInstanceOf(AuthRequiredError);
    });

    it('an offline token is not accepted past its announced expires_in (300 s)', async () => {
      const { broker, id } = await aliceAcceptedThenDown(10 * MINUTE);
      const answer = tokenBody(await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization: basic('alice', PW) }));
      await broker.check(PRIV, 'blobs', D1, { authorization: `Bearer ${answer.token}` });
      clock += answer.expires_in * 1000 + 1_000;
      expect(clock - T0).toBeLessThan(MAX_STALE);
      expect(await failureOf(broker.check(PRIV, 'blobs', D1, { authorization: `Bearer ${answer.token}` }))).toBeInstanceOf(AuthRequiredError);
    });

    describe('tokens are cheap: minting many displaces nobody else', () => {
      const PUB: RepositoryName = parseRepositoryName('pub/app');

      /**
       * startRealm, plus: an anonymous request gets two new tokens each time (token, access_token),
       * and so does one with an Authorization the realm cannot parse (`Junk <n>`: as lenient realms
       * do, taken for anonymous); upstream accepts those tokens for pub/app.
       */
      async function startFloodableRealm(): Promise<ScriptedUpstream> {
        const realm = await startRealm();
        let minted = 0;
        const issue = realm.respond;
        realm.respond = (r) =>
          (r.authorization === undefined || r.authorization.startsWith('Junk ')) && r.body === ''
            ? { status: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: `anon-${minted++}`, access_token: `anon-${minted++}`, expires_in: 300 }) }
            : issue(r);
        const registry = upstream.respond;
        upstream.respond = (r) => (r.authorization?.startsWith('Bearer anon-') && r.path.startsWith('/v2/pub/app/') ? { status: 200 } : registry(r));
        return realm;
      }

      it('55,000 anonymous tokens from the token endpoint (half of them for distinct junk credentials), each accepted for a public repository: alice is still served from the cache offline, and still gets an offline token', async () => {
        const realm = await startFloodableRealm();
        const broker = newBroker('passthrough');
        const id = await learnRealm(broker, realm);
        tokenBody(await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization: basic('alice', PW) }));
        broker.confirm(PRIV, 'blobs', D1, { authorization: 'Bearer T' });

        // More tokens than any of the broker's memories holds, each shown to (and accepted by) upstream;
        // half of them for as many distinct "credentials" (what the realm took for anonymous).
        const FLOOD = 55_000;
        for (let i = 0; i < FLOOD; i += 100) {
          const answers = await Promise.all(
            Array.from({ length: 50 }, (_, j) =>
              broker.token({ realmId: id, method: 'GET', query: 'scope=repository:pub/app:pull', ...(j % 2 === 0 ? { authorization: `Junk ${i + j}` } : {}) }),
            ),
          );
          for (const answer of answers) {
            const body = tokenBody(answer);
            for (const token of [body.token, body.access_token]) broker.confirm(PUB, 'blobs', D2, { authorization: `Bearer ${token}` });
          }
        }
        expect(realm.count('GET')).toBe(FLOOD / 2 + 1);

        await realm.stop();
        upstream.unavailable = true;
        // Within T's announced life (300 s) it counts as alice; past it, as itself: upstream accepted
        // it for priv/app, and a flood accepted for pub/app displaces nothing of priv/app's.
        clock = T0 + 4 * MINUTE;
        await broker.check(PRIV, 'blobs', D1, { authorization: 'Bearer T' });
        clock = T0 + 10 * MINUTE;
        await broker.check(PRIV, 'blobs', D1, { authorization: 'Bearer T' });
        const offline = await tokenOf(broker, id, basic('alice', PW));
        expect(offline).toMatch(/^rpa-offline\./);
        await broker.check(PRIV, 'blobs', D1, { authorization: `Bearer ${offline}` });
        // The flood opened the public repository to its own tokens, and nothing else.
        expect(await failureOf(broker.check(PRIV, 'blobs', D1, { authorization: 'Bearer anon-54999' }))).toBeInstanceOf(AuthRequiredError);
        await broker.check(PUB, 'blobs', D2, { authorization: 'Bearer anon-54999' });
      });

      it('60,000 tokens the agent never handed out, each accepted upstream: credentials and handed-out tokens stay remembered', async () => {
        const realm = await startRealm();
        const broker = newBroker('passthrough');
        const id = await learnRealm(broker, realm);
        tokenBody(await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization: basic('alice', PW) }));
        broker.confirm(PRIV, 'blobs', D1, { authorization: 'Bearer T' });
        broker.confirm(APP, 'blobs', D1, CAROL);
        for (let i = 0; i < 60_000; i += 1) broker.confirm(PUB, 'blobs', D2, { authorization: `Bearer outside-${i}` });

        await realm.stop();
        upstream.unavailable = true;
        clock = T0 + 4 * MINUTE;
        await broker.check(PRIV, 'blobs', D1, { authorization: 'Bearer T' });
        clock = T0 + 10 * MINUTE;
        await broker.check(APP, 'blobs', D1, CAROL);
        expect(await tokenOf(broker, id, basic('alice', PW))).toMatch(/^rpa-offline\./);
        // The memory of such tokens is bounded: the oldest went, the newest is there.
        expect(await failureOf(broker.check(PUB, 'blobs', D2, { authorization: 'Bearer outside-0' }))).toBeInstanceOf(AuthRequiredError);
        await broker.check(PUB, 'blobs', D2, { authorization: 'Bearer outside-59999' });
      });

      it('an offline token the mirror no longer knows opens nothing: 10,000 newer ones for the same repository displace it', async () => {
        const realm = await startRealm();
        const registry = upstream.respond;
        upstream.respond = (r) => (r.authorization === 'Bearer TB' ? { status: 200 } : registry(r));
        const broker = newBroker('passthrough');
        const id = await learnRealm(broker, realm);
        tokenBody(await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization: basic('alice', PW) }));
        tokenBody(await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization: BOB.authorization }));
        broker.confirm(PRIV, 'blobs', D1, { authorization: 'Bearer T' });
        broker.confirm(PRIV, 'blobs', D1, { authorization: 'Bearer TB' });
        await realm.stop();
        upstream.unavailable = true;
        clock = T0 + 10 * MINUTE;

        const first = await tokenOf(broker, id, basic('alice', PW));
        await broker.check(PRIV, 'blobs', D1, { authorization: `Bearer ${first}` });
        let latest = '';
        for (let i = 0; i < 10_000; i += 1) latest = await tokenOf(broker, id, BOB.authorization!);
        await broker.check(PRIV, 'blobs', D1, { authorization: `Bearer ${latest}` });
        // Forgotten means refused, well within its announced 300 s and max_stale alike.
        expect(await failureOf(broker.check(PRIV, 'blobs', D1, { authorization: `Bearer ${first}` }))).toBeInstanceOf(AuthRequiredError);
      });

      it("upstream refusing an offline token (back online) withdraws that token only, not its credential's acceptance", async () => {
        const { broker, id } = await aliceAcceptedThenDown(10 * MINUTE);
        const offline = await tokenOf(broker, id, basic('alice', PW));

        // Upstream is back and does not know the agent's token: 401 for it.
        upstream.unavailable = false;
        expect(await failureOf(broker.check(PRIV, 'blobs', D1, { authorization: `Bearer ${offline}` }))).toBeInstanceOf(AuthRequiredError);
        // Down again: alice's realm acceptance still stands (her token, and a new offline token).
        upstream.unavailable = true;
        await broker.check(PRIV, 'blobs', D1, { authorization: 'Bearer T' });
        expect(await tokenOf(broker, id, basic('alice', PW))).toMatch(/^rpa-offline\./);
      });

      /** Upstream answers 401 to a GET of D2 in pub/app with `authorization`, at the broker's present time. */
      async function refusedOnce(broker: AccessBroker, authorization: string | undefined): Promise<void> {
        const respond = upstream.respond;
        upstream.respond = () => ({ status: 401, headers: { 'www-authenticate': upstream.challenge('repository:pub/app:pull') } });
        const requester = authorization === undefined ? ANON : { authorization };
        const response = await broker.request('GET', PUB, `blobs/${D2}`, requester);
        expect(await broker.failure(PUB, response, requester, () => new OciError('BLOB_UNKNOWN', 'x'))).toBeInstanceOf(AuthRequiredError);
        upstream.respond = respond;
      }

      it("a refusal anyone can provoke withdraws nothing of the shared anonymous credential: a header form upstream does not parse, a token near its end, a credential-less request's challenge; and the token endpoint asks for upstream's own service", async () => {
        const realm = await startFloodableRealm();
        const broker = newBroker('passthrough');
        const id = await learnRealm(broker, realm);
        const anonymousToken = async (query = 'scope=repository:pub/app:pull'): Promise<string> => tokenBody(await broker.token({ realmId: id, method: 'GET', query })).token;
        // A victim's anonymous pull: upstream accepts its token for pub/app, which is now public.
        const victim = await anonymousToken();
        broker.confirm(PUB, 'blobs', D2, { authorization: `Bearer ${victim}` });

        // A token asked for another service (upstream would refuse it) is asked for upstream's.
        const other = await anonymousToken('scope=repository:pub/app:pull&service=elsewhere');
        expect(new URL(realm.seen.at(-1)!.path, realm.url).searchParams.getAll('service')).toEqual(['s']);
        const posted = await broker.token({ realmId: id, method: 'POST', query: '', form: Buffer.from('grant_type=password&username=x&password=y&scope=repository:pub/app:pull') });
        expect(new URLSearchParams(realm.seen.at(-1)!.body).get('service')).toBe('s');
        posted.body.release();

        clock = T0 + MINUTE;
        for (const authorization of [`Bearer  ${other}`, `Bearer\t${other}`, `bearer ${other}`, `Bearer ${other} `, undefined]) await refusedOnce(broker, authorization);
        // Past half its life (300 s), a refusal of even a well-formed token may be the clocks'.
        clock = T0 + 3 * MINUTE;
        await refusedOnce(broker, `Bearer ${victim}`);

        // Offline, anonymous pullers are still served pub/app, and get an offline token for it.
        await realm.stop();
        upstream.unavailable = true;
        await broker.check(PUB, 'blobs', D2, ANON);
        const offline = await anonymousToken();
        expect(offline).toMatch(/^rpa-offline\./);
        await broker.check(PUB, 'blobs', D2, { authorization: `Bearer ${offline}` });
        // A public repository opens nothing else.
        expect(await failureOf(broker.check(PRIV, 'blobs', D1, { authorization: `Bearer ${offline}` }))).toBeInstanceOf(AuthRequiredError);
      });

      it("a token asked with a scope the realm does not grant anonymously (`*`, a resource class) counts for nothing: its refusal leaves the repository public", async () => {
        const realm = await startFloodableRealm();
        const broker = newBroker('passthrough');
        const id = await learnRealm(broker, realm);
        const anonymousToken = async (scope: string): Promise<string> => tokenBody(await broker.token({ realmId: id, method: 'GET', query: `scope=${scope}` })).token;
        broker.confirm(PUB, 'blobs', D2, { authorization: `Bearer ${await anonymousToken('repository:pub/app:pull')}` });
        clock = T0 + MINUTE;
        for (const scope of ['repository:pub/app:*', 'repository(plugin):pub/app:pull']) await refusedOnce(broker, `Bearer ${await anonymousToken(scope)}`);
        await realm.stop();
        upstream.unavailable = true;
        await broker.check(PUB, 'blobs', D2, ANON);
        expect(await anonymousToken('repository:pub/app:pull')).toMatch(/^rpa-offline\./);
      });

      it('a repository made private: the refusal of a fresh anonymous token for it withdraws its public readability, online and offline', async () => {
        const realm = await startFloodableRealm();
        const broker = newBroker('passthrough');
        const id = await learnRealm(broker, realm);
        const anonymousToken = async (): Promise<string> => tokenBody(await broker.token({ realmId: id, method: 'GET', query: 'scope=repository:pub/app:pull' })).token;
        broker.confirm(PUB, 'blobs', D2, { authorization: `Bearer ${await anonymousToken()}` });
        expect(broker.knownToRead(PUB, ANON)).toBe(true);

        // pub/app is closed: the realm still answers anonymous requests (an empty grant), upstream refuses the token.
        clock = T0 + MINUTE;
        await refusedOnce(broker, `Bearer ${await anonymousToken()}`);
        expect(broker.knownToRead(PUB, ANON)).toBe(false);
        await realm.stop();
        upstream.unavailable = true;
        expect(await failureOf(broker.check(PUB, 'blobs', D2, ANON))).toBeInstanceOf(AuthRequiredError);
        expect(await failureOf(broker.token({ realmId: id, method: 'GET', query: 'scope=repository:pub/app:pull' }))).toBeInstanceOf(UpstreamError);
      });

      it('upstream refusing (401) a token it accepted before, sent as pullers send it, withdraws its credential for that repository', async () => {
        const realm = await startRealm();
        const broker = newBroker('passthrough');
        const id = await learnRealm(broker, realm);
        tokenBody(await broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization: basic('alice', PW) }));
        broker.confirm(PRIV, 'blobs', D1, { authorization: 'Bearer T' });
        // Within T's life (300 s), a GET with it answered 401.
        upstream.respond = () => ({ status: 401, headers: { 'www-authenticate': upstream.challenge(SCOPE) } });
        clock = T0 + MINUTE;
        const response = await broker.request('GET', PRIV, `blobs/${D1}`, { authorization: 'Bearer T' });
        expect(await broker.failure(PRIV, response, { authorization: 'Bearer T' }, () => new OciError('BLOB_UNKNOWN', 'x'))).toBeInstanceOf(AuthRequiredError);
        await realm.stop();
        upstream.unavailable = true;
        // No offline token for alice any more: upstream withdrew her access.
        expect(await failureOf(broker.token({ realmId: id, method: 'GET', query: `scope=${SCOPE}`, authorization: basic('alice', PW) }))).toBeInstanceOf(UpstreamError);
      });
    });
  });
});

describe('realmCredential', () => {
  it('a Basic header and the password form give the same value', () => {
    const header = realmCredential(basic('alice', 'pa:ss'), undefined);
    const fields = realmCredential(undefined, Buffer.from(new URLSearchParams({ grant_type: 'password', username: 'alice', password: 'pa:ss' }).toString()));
    expect(fields).toBe(header);
    expect(realmCredential('basic   ' + Buffer.from('alice:pa:ss').toString('base64'), undefined)).toBe(header);
    expect(realmCredential(basic('alice', 'other'), undefined)).not.toBe(header);
    expect(realmCredential(basic('bob', 'pa:ss'), undefined)).not.toBe(header);
  });

  it('the form wins over the header', () => {
    const form = Buffer.from('grant_type=password&username=alice&password=x');
    expect(realmCredential(basic('bob', 'y'), form)).toBe(realmCredential(basic('alice', 'x'), undefined));
  });

  it('a refresh_token form and other headers are their own credentials', () => {
    const password = realmCredential(basic('alice', 'x'), undefined);
    const refresh = realmCredential(undefined, Buffer.from('grant_type=refresh_token&refresh_token=r1'));
    const refresh2 = realmCredential(undefined, Buffer.from('grant_type=refresh_token&refresh_token=r2'));
    const bearer = realmCredential('Bearer abc', undefined);
    const notBasic = realmCredential('Basic !!!', undefined);
    const noColon = realmCredential(`Basic ${Buffer.from('alice').toString('base64')}`, undefined);
    const values = [password, refresh, refresh2, bearer, notBasic, noColon, realmCredential(undefined, undefined)];
    expect(new Set(values).size).toBe(values.length);
    expect(bearer).toBe(realmCredential('Bearer abc', undefined));
    // A refresh token value that looks like a password field is still not that password.
    expect(realmCredential(undefined, Buffer.from('refresh_token=alice'))).not.toBe(realmCredential(undefined, Buffer.from('username=alice&password=')));
  });

  it('anonymous: no header, no form, or a form without credentials', () => {
    expect(realmCredential(undefined, undefined)).toBe('anonymous');
    expect(realmCredential(undefined, Buffer.from('grant_type=client_credentials&scope=x'))).toBe('anonymous');
    expect(realmCredential('', undefined)).toBe('anonymous');
    expect(realmCredential('Bearer x', undefined)).not.toBe('anonymous');
    // The access memory keeps this credential apart from others (no flood displaces it).
    expect(hashCredential(realmCredential(undefined, undefined))).toBe(ANONYMOUS_AT_REALM);
  });
});
