import type { Dispatcher } from 'undici';
import type { Logger } from 'pino';
import type { FillBody, FillSource } from '../cache/fill.ts';
import type { FillRequester } from '../cache/fill-start.ts';
import type { UpstreamBlob } from '../mirror/upstream-blob.ts';

/** What a peer download needs of the upstream download: the fallback after the candidates. */
export type UpstreamFallback = Pick<UpstreamBlob, 'fetch' | 'fetchFrom' | 'key' | 'ownsFailure' | 'likely'> & Partial<Pick<UpstreamBlob, 'priority' | 'raise'>>;
import type { FallbackReason, PeerNetwork } from './network.ts';
import type { PeerBlobRequest } from './peer-client.ts';
import type { PeerMember } from './rendezvous.ts';

/**
 * A blob that is not cached here, as the cache's fill reads it when peers are on: from upstream
 * when this agent owns the digest (or peers cannot be used); otherwise, once the local access
 * decision let the requester through, from the owner's peer listener, then its fallbacks, then
 * upstream directly. The cache cannot tell which source it was: it verifies the digest as always.
 */
export class PeerBlob implements FillRequester {
  readonly #network: PeerNetwork;
  readonly #upstream: UpstreamFallback;
  /** The local access decision (the broker's check for this requester); throws when not entitled. */
  readonly #check: () => Promise<void>;
  readonly #request: Omit<PeerBlobRequest, 'offset'>;
  readonly #log: Logger;

  constructor(network: PeerNetwork, upstream: UpstreamFallback, check: () => Promise<void>, request: Omit<PeerBlobRequest, 'offset'>, log: Logger) {
    this.#network = network;
    this.#upstream = upstream;
    this.#check = check;
    this.#request = request;
    this.#log = log;
  }

  get key(): string {
    return this.#upstream.key;
  }

  ownsFailure(error: unknown): boolean {
    return this.#upstream.ownsFailure(error);
  }

  likely(): boolean {
    return this.#upstream.likely();
  }

  /** The upstream fallback's rank in the tunnel budget (peers' bytes do not cross the tunnel). */
  get priority(): 'live' | 'background' | undefined {
    return this.#upstream.priority;
  }

  raise(): void {
    this.#upstream.raise?.();
  }

  readonly fetch = async (unwanted: AbortSignal): Promise<FillSource> => {
    const route = this.#network.route(this.#request.digest);
    if (route.kind === 'upstream') return this.#upstream.fetch(unwanted);
    // No peer byte before the requester is known to be entitled: the same decision as for upstream.
    await this.#check();
    return new PeerDownload(this.#network, this.#upstream, this.#request, route.candidates, this.#log).start(unwanted);
  };
}

/** Never aborts: a download under way continues through its fallbacks whoever still reads it. */
const UNDER_WAY = new AbortController().signal;

/**
 * One download through the candidates: a peer that fails (cannot be reached, stalls, breaks off)
 * is left for the next one, which continues with a Range request from the bytes already received;
 * after the candidates, upstream. Presented to the fill as one body.
 */
class PeerDownload {
  readonly #network: PeerNetwork;
  readonly #upstreamBlob: UpstreamFallback;
  readonly #request: Omit<PeerBlobRequest, 'offset'>;
  readonly #candidates: PeerMember[];
  readonly #log: Logger;
  /** Bytes received so far (all from peers while #upstream is undefined). */
  #offset = 0;
  #size: number | undefined;
  #peer: { readonly member: PeerMember; readonly body: Dispatcher.ResponseData['body'] } | undefined;
  #upstream: FillSource | undefined;
  /** Peers whose bytes went into this download (penalised if the digest does not match). */
  readonly #contributors = new Set<PeerMember>();
  #destroyed = false;

  constructor(network: PeerNetwork, upstream: UpstreamFallback, request: Omit<PeerBlobRequest, 'offset'>, candidates: readonly PeerMember[], log: Logger) {
    this.#network = network;
    this.#upstreamBlob = upstream;
    this.#request = request;
    this.#candidates = [...candidates];
    this.#log = log;
  }

  async start(unwanted: AbortSignal): Promise<FillSource> {
    await this.#openNext(unwanted);
    // Straight to upstream (every candidate failed before a byte): its source as it is.
    if (this.#upstream) return this.#upstream;
    const body: FillBody = {
      [Symbol.asyncIterator]: () => this.#chunks(),
      destroy: (error?: Error) => this.#destroy(error),
    };
    return {
      size: this.#size,
      body,
      // Only upstream's failures reach the fill (peers' are handled here): upstream resumes them.
      resume: (offset: number) => this.#upstream!.resume!(offset),
      resumable: (error: unknown) => this.#upstream?.resume !== undefined && this.#upstream.resumable?.(error) === true,
      ended: (received: number) => this.#ended(received),
      rejected: (error: Error) => {
        for (const member of this.#contributors) this.#network.corrupt(member, { digest: this.#request.digest, err: error.message });
      },
      contended: () => this.#upstream?.contended?.() ?? false,
    };
  }

  async *#chunks(): AsyncGenerator<Uint8Array> {
    for (;;) {
      if (this.#upstream) {
        yield* this.#upstream.body;
        return;
      }
      const { member, body } = this.#peer!;
      const pace = new Pace(this.#network.progressMs);
      try {
        for await (const chunk of body as AsyncIterable<Uint8Array>) {
          pace.received(chunk.length);
          this.#offset += chunk.length;
          this.#contributors.add(member);
          yield chunk;
          // Time the fill spent on the chunk (a slow reader, a full queue) is not the peer's.
          pace.waiting();
        }
        if (this.#size !== undefined && this.#offset < this.#size) throw new Error(`answer ended at byte ${this.#offset} of ${this.#size}`);
        return;
      } catch (error) {
        if (this.#destroyed) throw error;
        this.#leave(member, classify(error), { offset: this.#offset, err: messageOf(error) });
        await this.#openNext(UNDER_WAY);
      }
    }
  }

  /** The next candidate that answers with the right bytes range, or upstream once none is left. */
  async #openNext(unwanted: AbortSignal): Promise<void> {
    this.#peer = undefined;
    for (let member = this.#candidates.shift(); member; member = this.#candidates.shift()) {
      let response: Dispatcher.ResponseData;
      try {
        // Not `unwanted`: past the access decision the download is under way, like an upstream GET
        // already sent. A client that joins after the first one left is served, not told the
        // download was dropped.
        // The rank when each request is sent: a download raised to live asks the next peer as live.
        response = await this.#network.client.get(member, { ...this.#request, offset: this.#offset, background: this.#upstreamBlob.priority === 'background' });
      } catch (error) {
        this.#leave(member, classify(error), { offset: this.#offset, err: messageOf(error) });
        continue;
      }
      const problem = this.#check(response);
      if (problem === undefined) {
        this.#peer = { member, body: response.body };
        return;
      }
      response.body.destroy();
      this.#leave(member, 'status', { offset: this.#offset, status: response.statusCode, err: problem });
    }
    this.#upstream = await this.#upstreamBlob.fetchFrom(this.#offset, unwanted);
    this.#size ??= this.#upstream.size;
  }

  /** Undefined when the answer is the bytes asked for (and of the size known so far); else why not. */
  #check(response: Dispatcher.ResponseData): string | undefined {
    const header = (name: string): string | undefined => {
      const value = response.headers[name];
      return Array.isArray(value) ? value[0] : value;
    };
    if (this.#offset === 0) {
      if (response.statusCode !== 200) return `answered ${response.statusCode}`;
      const length = Number(header('content-length'));
      if (!Number.isSafeInteger(length) || length < 0) return 'answered without a Content-Length';
      if (this.#size !== undefined && length !== this.#size) return `announced ${length} bytes, expected ${this.#size}`;
      this.#size = length;
      return undefined;
    }
    if (response.statusCode !== 206) return `answered ${response.statusCode} to a Range request`;
    const match = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(header('content-range') ?? '');
    if (!match || Number(match[1]) !== this.#offset || (this.#size !== undefined && Number(match[3]) !== this.#size)) {
      return `answered Content-Range ${header('content-range') ?? '(none)'} for bytes ${this.#offset}-`;
    }
    this.#size ??= Number(match[3]);
    return undefined;
  }

  #leave(member: PeerMember, reason: FallbackReason, detail: Record<string, unknown>): void {
    const step = this.#candidates.length > 0 ? 'peer' : 'upstream';
    this.#network.failed(member, reason, step, { digest: this.#request.digest, ...detail });
  }

  #destroy(error?: Error): void {
    this.#destroyed = true;
    this.#peer?.body.destroy(error);
    this.#upstream?.body.destroy?.(error);
  }

  #ended(received: number): void {
    const fromPeers = this.#upstream ? this.#offset : received;
    this.#network.received(fromPeers);
    this.#upstream?.ended?.(received - fromPeers);
    if (this.#upstream && fromPeers > 0) this.#log.info({ digest: this.#request.digest, fromPeers, fromUpstream: received - fromPeers }, 'blob completed from upstream after peers failed');
  }
}

/**
 * A peer must send at least MIN_PROGRESS_BYTES per progress window: the idle timeout alone lets a
 * peer that trickles a byte every few seconds hold a download for ever.
 */
const MIN_PROGRESS_BYTES = 1024 * 1024;

/** The time spent waiting for a peer's bytes, and the bytes it sent meanwhile, window by window. */
class Pace {
  readonly #windowMs: number;
  #since = performance.now();
  #waited = 0;
  #bytes = 0;

  constructor(windowMs: number) {
    this.#windowMs = windowMs;
  }

  /** The reader asks for the next bytes: waiting for the peer starts. */
  waiting(): void {
    this.#since = performance.now();
  }

  /** Bytes arrived; throws (reason stalled) when a whole window of waiting brought fewer than MIN_PROGRESS_BYTES. */
  received(bytes: number): void {
    this.#waited += performance.now() - this.#since;
    this.#bytes += bytes;
    if (this.#waited < this.#windowMs) return;
    if (this.#bytes < MIN_PROGRESS_BYTES) {
      throw Object.assign(new Error(`sent ${this.#bytes} bytes in ${Math.round(this.#waited)} ms of waiting (at least ${MIN_PROGRESS_BYTES} per ${this.#windowMs} ms)`), {
        code: 'PEER_TOO_SLOW',
      });
    }
    this.#waited = 0;
    this.#bytes = 0;
  }
}

function classify(error: unknown): FallbackReason {
  const code = (error as { code?: unknown } | undefined)?.code;
  const text = typeof code === 'string' ? code : '';
  if (text === 'UND_ERR_HEADERS_TIMEOUT' || text === 'UND_ERR_BODY_TIMEOUT' || text === 'PEER_TOO_SLOW') return 'stalled';
  if (text === 'PEER_HANDSHAKE_TIMEOUT' || text.startsWith('ERR_TLS') || text.includes('CERT') || /certificate|handshake|alert/i.test(messageOf(error))) return 'tls';
  if (['UND_ERR_CONNECT_TIMEOUT', 'ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT'].includes(text)) return 'connect';
  return 'broken';
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
