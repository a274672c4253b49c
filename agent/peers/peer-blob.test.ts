import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import pino from 'pino';
import type { Dispatcher } from 'undici';
import { describe, expect, it } from 'vitest';
import type { FillSource } from '../cache/fill.ts';
import type { Digest } from '../oci/digest.ts';
import type { RepositoryName } from '../oci/reference.ts';
import { type FallbackReason, PeerNetwork } from './network.ts';
import { PeerBlob, type UpstreamFallback } from './peer-blob.ts';
import type { PeerBlobRequest, PeerTransport } from './peer-client.ts';
import { type PeerMember, rankOwners } from './rendezvous.ts';

/**
 * The failover of a peer download, against scripted peers and a scripted upstream: which source is
 * asked for which bytes, in which order, and what the fill finally reads.
 */

const SIZE = 256 * 1024;
const NAME = 'team/app' as RepositoryName;
const log = pino({ level: 'silent' });

/** What a scripted peer does with a request. */
type Behaviour =
  | { kind: 'serve' }
  /** Sends this many bytes of what was asked, then breaks the connection. */
  | { kind: 'break'; after: number }
  | { kind: 'refuse' }
  | { kind: 'status'; status: number }
  /** Answers a Range request with a Content-Range for another offset. */
  | { kind: 'wrong-range' }
  /** Serves the right length of wrong bytes. */
  | { kind: 'corrupt' }
  /** Sends one byte every 20 ms: never idle for long, never done. */
  | { kind: 'drip' };

interface Asked {
  member: string;
  offset: number;
}

function sha(bytes: Buffer): Digest {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}` as Digest;
}

function members(count: number): PeerMember[] {
  return Array.from({ length: count }, (_, i) => ({ name: `node-${i}`, url: `https://10.0.0.${i + 1}:5443` }));
}

/** A blob, and the members ranked for it (owner first). */
function blobFor(list: readonly PeerMember[]): { bytes: Buffer; digest: Digest; ranked: PeerMember[] } {
  const bytes = randomBytes(SIZE);
  const digest = sha(bytes);
  return { bytes, digest, ranked: rankOwners(digest, list, list.length) };
}

function response(status: number, headers: Record<string, string>, body: Readable): Dispatcher.ResponseData {
  return { statusCode: status, headers, body, trailers: {}, opaque: null, context: {} } as unknown as Dispatcher.ResponseData;
}

/** A readable that sends `bytes` in 16 KiB chunks, then fails (or ends). */
function chunks(bytes: Buffer, failAfter?: number): Readable {
  const end = failAfter ?? bytes.length;
  let at = 0;
  return new Readable({
    read() {
      if (at >= end) {
        if (failAfter !== undefined) this.destroy(Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }));
        else this.push(null);
        return;
      }
      const next = Math.min(end, at + 16 * 1024);
      this.push(bytes.subarray(at, next));
      at = next;
    },
  });
}

class ScriptedPeers implements PeerTransport {
  readonly ready = true;
  readonly asked: Asked[] = [];
  readonly #bytes: Buffer;
  readonly #behaviours: Record<string, Behaviour>;

  constructor(bytes: Buffer, behaviours: Record<string, Behaviour>) {
    this.#bytes = bytes;
    this.#behaviours = behaviours;
  }

  async get(member: PeerMember, request: PeerBlobRequest, signal?: AbortSignal): Promise<Dispatcher.ResponseData> {
    this.asked.push({ member: member.name, offset: request.offset });
    signal?.throwIfAborted();
    const behaviour = this.#behaviours[member.name] ?? { kind: 'serve' };
    const bytes = this.#bytes;
    const rest = bytes.subarray(request.offset);
    const headers: Record<string, string> =
      request.offset === 0
        ? { 'content-length': String(rest.length) }
        : { 'content-length': String(rest.length), 'content-range': `bytes ${request.offset}-${bytes.length - 1}/${bytes.length}` };
    const status = request.offset === 0 ? 200 : 206;
    switch (behaviour.kind) {
      case 'serve':
        return response(status, headers, chunks(rest));
      case 'break':
        return response(status, headers, chunks(rest, behaviour.after));
      case 'refuse':
        throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
      case 'status':
        return response(behaviour.status, { 'content-length': '0' }, chunks(Buffer.alloc(0)));
      case 'wrong-range':
        return response(206, { ...headers, 'content-range': `bytes 0-${bytes.length - 1}/${bytes.length}` }, chunks(bytes));
      case 'corrupt':
        return response(status, headers, chunks(Buffer.from(rest.map((b) => b ^ 0x5a))));
      case 'drip': {
        let at = 0;
        const body = new Readable({
          read() {
            setTimeout(() => {
              if (!body.destroyed) body.push(rest.subarray(at, (at += 1)));
            }, 20);
          },
        });
        return response(status, headers, body);
      }
    }
  }
}

class ScriptedUpstream implements UpstreamFallback {
  readonly key = 'requester';
  readonly from: number[] = [];
  received: number | undefined;
  readonly #bytes: Buffer;

  constructor(bytes: Buffer) {
    this.#bytes = bytes;
  }
  ownsFailure(): boolean {
    return false;
  }
  likely(): boolean {
    return false;
  }
  readonly fetch = (): Promise<FillSource> => this.fetchFrom(0);
  async fetchFrom(offset: number): Promise<FillSource> {
    this.from.push(offset);
    return { size: this.#bytes.length, body: chunks(this.#bytes.subarray(offset)), ended: (received) => (this.received = received) };
  }
}

interface Run {
  bytes: Buffer;
  fallbacks: Array<{ step: string; reason: FallbackReason }>;
  peerBytes: number;
  source: FillSource;
}

function network(self: string, list: readonly PeerMember[], peers: PeerTransport, now = () => 0, progressMs = 10_000): { net: PeerNetwork; fallbacks: Run['fallbacks']; peerBytes: () => number } {
  const fallbacks: Run['fallbacks'] = [];
  let peerBytes = 0;
  const net = new PeerNetwork({
    self,
    members: list,
    client: peers,
    log,
    now,
    progressMs,
    events: { lookup: () => undefined, fallback: (step, reason) => fallbacks.push({ step, reason }), received: (bytes) => (peerBytes += bytes) },
  });
  return { net, fallbacks, peerBytes: () => peerBytes };
}

/** Reads the source as the fill does (no resumes of its own), then ends it. */
async function drain(source: FillSource): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of source.body) parts.push(Buffer.from(chunk));
  const bytes = Buffer.concat(parts);
  source.ended?.(bytes.length);
  return bytes;
}

async function download(self: PeerMember, list: readonly PeerMember[], blob: { bytes: Buffer; digest: Digest }, behaviours: Record<string, Behaviour>, progressMs?: number) {
  const peers = new ScriptedPeers(blob.bytes, behaviours);
  const upstream = new ScriptedUpstream(blob.bytes);
  const { net, fallbacks, peerBytes } = network(self.name, list, peers, () => 0, progressMs);
  let checked = 0;
  const requester = new PeerBlob(net, upstream, async () => void (checked += 1), { registry: 'r.example', name: NAME, digest: blob.digest }, log);
  const source = await requester.fetch(new AbortController().signal);
  const bytes = await drain(source);
  return { bytes, peers, upstream, fallbacks, peerBytes: peerBytes(), checked, source };
}

describe('PeerBlob: where a blob not cached here comes from', () => {
  const list = members(5);

  it('the owner fetches upstream itself, without asking a peer or making a second access decision', async () => {
    const blob = blobFor(list);
    const run = await download(blob.ranked[0]!, list, blob, {});
    expect(run.bytes.equals(blob.bytes)).toBe(true);
    expect(run.peers.asked).toEqual([]);
    expect(run.upstream.from).toEqual([0]);
    expect(run.checked).toBe(0);
  });

  it('another member: decided locally first, then the whole blob from the owner; upstream is not asked', async () => {
    const blob = blobFor(list);
    const run = await download(blob.ranked[4]!, list, blob, {});
    expect(run.checked).toBe(1);
    expect(run.bytes.equals(blob.bytes)).toBe(true);
    expect(run.peers.asked).toEqual([{ member: blob.ranked[0]!.name, offset: 0 }]);
    expect(run.upstream.from).toEqual([]);
    expect(run.peerBytes).toBe(SIZE);
  });

  it('the owner breaks off: the next candidate continues with Range from the bytes received', async () => {
    const blob = blobFor(list);
    const run = await download(blob.ranked[4]!, list, blob, { [blob.ranked[0]!.name]: { kind: 'break', after: 64 * 1024 } });
    expect(run.bytes.equals(blob.bytes)).toBe(true);
    expect(run.peers.asked).toEqual([
      { member: blob.ranked[0]!.name, offset: 0 },
      { member: blob.ranked[1]!.name, offset: 64 * 1024 },
    ]);
    expect(run.fallbacks).toEqual([{ step: 'peer', reason: 'broken' }]);
    expect(run.upstream.from).toEqual([]);
  });

  it('every candidate fails: upstream continues from the bytes received, and counts only its own bytes', async () => {
    const blob = blobFor(list);
    const [owner, second, third] = blob.ranked;
    const run = await download(blob.ranked[4]!, list, blob, {
      [owner!.name]: { kind: 'break', after: 32 * 1024 },
      [second!.name]: { kind: 'refuse' },
      [third!.name]: { kind: 'break', after: 16 * 1024 },
    });
    expect(run.bytes.equals(blob.bytes)).toBe(true);
    expect(run.upstream.from).toEqual([48 * 1024]);
    expect(run.upstream.received).toBe(SIZE - 48 * 1024);
    expect(run.peerBytes).toBe(48 * 1024);
    expect(run.fallbacks).toEqual([
      { step: 'peer', reason: 'broken' },
      { step: 'peer', reason: 'connect' },
      { step: 'upstream', reason: 'broken' },
    ]);
  });

  it('answers that are not the bytes asked for (an error status, a Range answer for another offset) are skipped', async () => {
    const blob = blobFor(list);
    const [owner, second, third] = blob.ranked;
    const run = await download(blob.ranked[4]!, list, blob, {
      [owner!.name]: { kind: 'break', after: 16 * 1024 },
      [second!.name]: { kind: 'wrong-range' },
      [third!.name]: { kind: 'status', status: 502 },
    });
    expect(run.bytes.equals(blob.bytes)).toBe(true);
    expect(run.fallbacks.map((f) => f.reason)).toEqual(['broken', 'status', 'status']);
    expect(run.upstream.from).toEqual([16 * 1024]);
  });

  it('a peer that trickles (a byte now and then, never idle for a whole timeout) is left once a window passes with less than 1 MiB', async () => {
    const blob = blobFor(list);
    const run = await download(blob.ranked[4]!, list, blob, { [blob.ranked[0]!.name]: { kind: 'drip' } }, 150);
    expect(run.bytes.equals(blob.bytes)).toBe(true);
    expect(run.fallbacks).toEqual([{ step: 'peer', reason: 'stalled' }]);
    expect(run.peers.asked[1]!.member).toBe(blob.ranked[1]!.name);
    expect(run.peers.asked[1]!.offset).toBeGreaterThan(0);
  });

  it('a slow reader is not the peer\'s fault: time the fill spends on a chunk does not count against the peer', async () => {
    const blob = blobFor(list);
    const peers = new ScriptedPeers(blob.bytes, {});
    const { net, fallbacks } = network(blob.ranked[4]!.name, list, peers, () => 0, 50);
    const requester = new PeerBlob(net, new ScriptedUpstream(blob.bytes), async () => undefined, { registry: 'r.example', name: NAME, digest: blob.digest }, log);
    const source = await requester.fetch(new AbortController().signal);
    const parts: Buffer[] = [];
    for await (const chunk of source.body) {
      parts.push(Buffer.from(chunk));
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(Buffer.concat(parts).equals(blob.bytes)).toBe(true);
    expect(fallbacks).toEqual([]);
    expect(peers.asked).toHaveLength(1);
  });

  it('every reader left while the access decision was made: the peer is still asked (the download is under way, a client joining now is served)', async () => {
    const blob = blobFor(list);
    const peers = new ScriptedPeers(blob.bytes, {});
    const { net } = network(blob.ranked[4]!.name, list, peers);
    const unwanted = new AbortController();
    const check = async (): Promise<void> => unwanted.abort();
    const requester = new PeerBlob(net, new ScriptedUpstream(blob.bytes), check, { registry: 'r.example', name: NAME, digest: blob.digest }, log);
    const source = await requester.fetch(unwanted.signal);
    expect((await drain(source)).equals(blob.bytes)).toBe(true);
  });

  it('a member listed at a new address is no longer passed over for what the old address did', async () => {
    const blob = blobFor(list);
    const owner = blob.ranked[0]!;
    const peers = new ScriptedPeers(blob.bytes, { [owner.name]: { kind: 'refuse' } });
    const { net } = network(blob.ranked[4]!.name, list, peers);
    await drain(await new PeerBlob(net, new ScriptedUpstream(blob.bytes), async () => undefined, { registry: 'r.example', name: NAME, digest: blob.digest }, log).fetch(new AbortController().signal));
    const passedOver = net.route(blob.digest);
    expect(passedOver.kind === 'peers' && passedOver.candidates.map((c) => c.name)).not.toContain(owner.name);
    net.setMembers(list);
    const same = net.route(blob.digest);
    expect(same.kind === 'peers' && same.candidates.map((c) => c.name)).not.toContain(owner.name);
    net.setMembers(list.map((m) => (m.name === owner.name ? { ...m, url: 'https://10.0.9.9:5443' } : m)));
    const moved = net.route(blob.digest);
    expect(moved.kind === 'peers' && moved.candidates[0]!.name).toBe(owner.name);
  });

  it('a member ranked second asks only the owner, then fetches upstream itself (never a member ranked below it)', async () => {
    const blob = blobFor(list);
    const run = await download(blob.ranked[1]!, list, blob, { [blob.ranked[0]!.name]: { kind: 'refuse' } });
    expect(run.peers.asked.map((a) => a.member)).toEqual([blob.ranked[0]!.name]);
    expect(run.upstream.from).toEqual([0]);
    expect(run.fallbacks).toEqual([{ step: 'upstream', reason: 'connect' }]);
  });

  it('wrong bytes: the source is told (the fill rejects them) and every peer that contributed is passed over for 10 minutes', async () => {
    const blob = blobFor(list);
    const owner = blob.ranked[0]!;
    let now = 0;
    const peers = new ScriptedPeers(blob.bytes, { [owner.name]: { kind: 'corrupt' } });
    const { net, fallbacks } = network(blob.ranked[4]!.name, list, peers, () => now);
    const requester = new PeerBlob(net, new ScriptedUpstream(blob.bytes), async () => undefined, { registry: 'r.example', name: NAME, digest: blob.digest }, log);
    const source = await requester.fetch(new AbortController().signal);
    const bytes = await drain(source);
    expect(sha(bytes)).not.toBe(blob.digest);
    source.rejected?.(new Error('digest mismatch'));
    expect(fallbacks).toEqual([{ step: 'upstream', reason: 'corrupt' }]);
    const route = net.route(blob.digest);
    expect(route.kind === 'peers' && route.candidates.map((c) => c.name)).toEqual([blob.ranked[1]!.name, blob.ranked[2]!.name]);
    now = 10 * 60_000 + 1;
    const later = net.route(blob.digest);
    expect(later.kind === 'peers' && later.candidates[0]!.name).toBe(owner.name);
  });

  it('a requester that is not entitled: the local decision refuses, no peer and no upstream is asked', async () => {
    const blob = blobFor(list);
    const peers = new ScriptedPeers(blob.bytes, {});
    const upstream = new ScriptedUpstream(blob.bytes);
    const { net } = network(blob.ranked[4]!.name, list, peers);
    const refusal = new Error('401 from upstream');
    const requester = new PeerBlob(net, upstream, async () => Promise.reject(refusal), { registry: 'r.example', name: NAME, digest: blob.digest }, log);
    await expect(requester.fetch(new AbortController().signal)).rejects.toBe(refusal);
    expect(peers.asked).toEqual([]);
    expect(upstream.from).toEqual([]);
  });

  it('alone, or without key material: upstream, as without peers', async () => {
    const blob = blobFor(list);
    const alone = network('node-0', [list[0]!], new ScriptedPeers(blob.bytes, {}));
    expect(alone.net.route(blob.digest)).toEqual({ kind: 'upstream', why: 'alone' });
    const notReady = network('node-0', list, { ready: false, get: () => Promise.reject(new Error('unused')) });
    expect(notReady.net.route(blob.digest)).toEqual({ kind: 'upstream', why: 'no_identity' });
    expect(notReady.fallbacks).toEqual([{ step: 'upstream', reason: 'no_identity' }]);
  });
});
