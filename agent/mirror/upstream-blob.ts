import type { Logger } from 'pino';
import type { AccessBroker, Requester } from '../auth/broker.ts';
import type { FillRequester, FillSource } from '../cache/blob-cache.ts';
import type { Digest } from '../oci/digest.ts';
import { ContentUnknownError } from '../oci/errors.ts';
import type { RepositoryName } from '../oci/reference.ts';
import type { UpstreamResponse } from '../upstream/client.ts';
import { UpstreamError, bodyFailure } from '../upstream/errors.ts';
import { contentLength, discard } from '../upstream/status.ts';
import { firstHeader } from '../upstream/client.ts';
import { Lane, type Priority } from '../admission/priority.ts';
import type { FetchBudget } from './fetch-budget.ts';

/** How an upstream download is counted and ranked. */
export interface UpstreamBlobOptions {
  /** Told the bytes the download brought (tunnel bytes), once it ended. */
  readonly received?: ((bytes: number) => void) | undefined;
  /** `live` (default) or `background` (preload): its rank in the tunnel budget, until raised. */
  readonly priority?: Priority | undefined;
}

/**
 * One requester's download of a blob from the mirror's upstream, as the cache's fill reads it: a
 * download slot first (the mirror's, and the tunnel's on the Connectivity Proxy route; held until
 * the body ended, resumes included), then GET with the requester's credential (passthrough) or the
 * agent's; a 200 vouches for the blob in that repository. Every body, a resume's too, is paced by
 * the budgets' byte rates. A body that breaks off is resumed with a Range request; which failures
 * count as broken is upstream's knowledge, not the cache's. The bytes it brought are told to
 * `received` (tunnel bytes).
 */
export class UpstreamBlob implements FillRequester {
  readonly #access: AccessBroker;
  readonly #budget: FetchBudget;
  readonly #name: RepositoryName;
  readonly #digest: Digest;
  readonly #requester: Requester;
  readonly #log: Logger;
  readonly #received: ((bytes: number) => void) | undefined;
  /** This download's rank in the budgets: background until a live request joins it. */
  readonly #lane: Lane;

  constructor(access: AccessBroker, budget: FetchBudget, name: RepositoryName, digest: Digest, requester: Requester, log: Logger, options: UpstreamBlobOptions = {}) {
    this.#access = access;
    this.#budget = budget;
    this.#name = name;
    this.#digest = digest;
    this.#requester = requester;
    this.#log = log;
    this.#received = options.received;
    this.#lane = new Lane(options.priority ?? 'live');
  }

  get priority(): Priority {
    return this.#lane.priority;
  }

  /**
   * Someone waits for this download now: it runs as live from here on, a slot request still
   * waiting moves ahead of every background one, and its next bytes are live bytes.
   */
  raise(): void {
    this.#lane.raise();
  }

  /** Asked only when a download starts or is joined (never for a cache hit). */
  get key(): string {
    return this.#access.requesterKey(this.#name, this.#requester);
  }

  ownsFailure(error: unknown): boolean {
    return this.#access.ownsFailure(error);
  }

  likely(): boolean {
    return this.#access.knownToRead(this.#name, this.#requester);
  }

  readonly fetch = (unwanted: AbortSignal): Promise<FillSource> => this.fetchFrom(0, unwanted);

  /**
   * The download from byte `offset` on (0: all of it; more: a Range request, for a download another
   * source began and broke off). Takes a download slot, held until the body ended.
   */
  async fetchFrom(offset: number, unwanted: AbortSignal): Promise<FillSource> {
    // A requester that would wait for a slot (or be refused for a full queue) is first asked about
    // upstream without one: otherwise the wait, or a 429, would tell it apart from a cached blob's
    // refusal, whether it may read the blob or not. With a slot free, the GET itself decides.
    if (!this.#budget.free(this.#lane.priority)) await this.#access.check(this.#name, 'blobs', this.#digest, this.#requester);
    const hold = await this.#budget.acquire(this.#lane, unwanted);
    try {
      const { body, size } = offset === 0 ? await this.#whole() : await this.#rest(offset, undefined);
      return {
        size,
        body: this.#budget.throttle(body, this.#lane),
        resume: async (at: number) => {
          const rest = await this.#rest(at, size);
          return { ...rest, body: this.#budget.throttle(rest.body, this.#lane) };
        },
        resumable: (error: unknown) => bodyFailure(error) !== undefined,
        ended: (received: number) => {
          hold.release();
          this.#received?.(received);
        },
        contended: () => this.#budget.contended,
      };
    } catch (error) {
      hold.release();
      throw error;
    }
  }

  async #whole(): Promise<{ body: UpstreamResponse['body']; size: number | undefined }> {
    const response = await this.#access.request('GET', this.#name, `blobs/${this.#digest}`, this.#requester);
    if (response.status !== 200) throw await this.#access.failure(this.#name, response, this.#requester, () => new ContentUnknownError('blob', this.#digest));
    this.#access.confirm(this.#name, 'blobs', this.#digest, this.#requester);
    return { body: response.body, size: contentLength(response) };
  }

  /**
   * The rest of the blob from `offset` (Range request); only a 206 for exactly that offset is
   * accepted. `size` is the whole blob's, when known; the answer's Content-Range tells it otherwise.
   */
  async #rest(offset: number, size: number | undefined): Promise<{ body: UpstreamResponse['body']; size: number | undefined }> {
    const response = await this.#access.request('GET', this.#name, `blobs/${this.#digest}`, this.#requester, { range: `bytes=${offset}-` });
    const range = firstHeader(response.headers['content-range']);
    const match = range ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(range) : null;
    const total = match?.[3] === '*' ? undefined : Number(match?.[3]);
    if (response.status !== 206 || !match || Number(match[1]) !== offset || (size !== undefined && total !== undefined && total !== size)) {
      await discard(response);
      throw new UpstreamError(this.#access.registry, 'invalid', `upstream cannot resume ${this.#digest} at byte ${offset} (status ${response.status})`);
    }
    this.#log.info({ digest: this.#digest, offset }, 'resuming a blob download that broke off');
    return { body: response.body, size: size ?? total };
  }
}
