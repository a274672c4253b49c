import type { KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { type KubeClient, KubeApiError, WatchIdleError, messageOf, statusOf } from './client.ts';

/** Restart delays after an informer error: doubling from `initialMs` up to `maxMs`, with jitter. */
export interface Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 1_000, maxMs: 30_000 };

export interface InformerOptions {
  readonly client: KubeClient;
  /** API path of the collection, e.g. `/api/v1/namespaces/x/secrets`. */
  readonly path: string;
  readonly labelSelector?: string;
  /** Named in the log. */
  readonly what: string;
  readonly log: Logger;
  /** Any add, update or delete, and every successful (re)list. */
  readonly onChange: () => void;
  /** A list succeeded (before `onChange`). */
  readonly onListed?: () => void;
  /** A list failed (after it, the informer backs off and retries). */
  readonly onListFailed?: (error: unknown) => void;
  readonly backoff?: Backoff;
}

/** How a watch stream ended. */
type WatchEnd = 'closed' | 'expired';

/**
 * A list-then-watch cache of one collection that survives the API server going away.
 *
 * It lists, then watches from the list's resourceVersion with bookmarks, so a quiet collection's
 * resourceVersion keeps up with the API server and a reconnect resumes instead of relisting. A watch
 * that ends (its timeoutSeconds, or WATCH_IDLE_TIMEOUT_MS without data) reconnects from the last
 * resourceVersion; 410 Expired relists. Any other error (connection refused, reset, 5xx, 403) restarts
 * it with backoff, resuming from the last resourceVersion. The cache is kept meanwhile: while the API server is unreachable the
 * last known objects stay, and nothing is reported as deleted. A relist replaces the cache at once.
 */
export class ResilientInformer<T extends KubernetesObject> {
  readonly #opts: InformerOptions;
  readonly #backoff: Backoff;
  #objects = new Map<string, T>();
  #resourceVersion = '';
  #synced = false;
  #waiters: Array<() => void> = [];
  #stopped = true;
  /** Counts start()s: a loop of an earlier start ends instead of running on beside the new one. */
  #generation = 0;
  #watch: AbortController | undefined;
  #retry: NodeJS.Timeout | undefined;
  #wakeRetry: (() => void) | undefined;
  /** Logged once per outage, not once per retry. */
  #failing = false;

  constructor(opts: InformerOptions) {
    this.#opts = opts;
    this.#backoff = opts.backoff ?? DEFAULT_BACKOFF;
  }

  /** A list has succeeded at least once: the cache reflects the API server (as of then). */
  get synced(): boolean {
    return this.#synced;
  }

  /** Resolves true once synced, false when `timeoutMs` passes first. */
  whenSynced(timeoutMs: number): Promise<boolean> {
    if (this.#synced) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.#waiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  list(): T[] {
    return [...this.#objects.values()];
  }

  get(name: string, namespace?: string): T | undefined {
    return this.#objects.get(keyOf(namespace, name));
  }

  /** Starts listing and watching in the background; failures are retried, never thrown. */
  start(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    void this.#loop(++this.#generation);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#retry);
    this.#wakeRetry?.();
    this.#watch?.abort();
    this.#watch = undefined;
  }

  async #loop(generation: number): Promise<void> {
    const running = (): boolean => !this.#stopped && generation === this.#generation;
    let failures = 0;
    let quietEnds = 0;
    while (running()) {
      try {
        if (this.#resourceVersion === '') await this.#relist(running);
        if (!running()) return;
        const { end, events } = await this.#watchOnce(running);
        failures = 0;
        if (end === 'expired') {
          this.#resourceVersion = '';
          continue;
        }
        // A stream the server ends at once, again and again, must not become a tight loop.
        quietEnds = events > 0 ? 0 : quietEnds + 1;
        if (quietEnds > 1) await this.#sleep(Math.min(this.#backoff.initialMs * 2 ** (quietEnds - 2), this.#backoff.maxMs), running);
      } catch (error) {
        if (!running()) return;
        if (statusOf(error) === 410) {
          this.#resourceVersion = '';
          continue;
        }
        failures += 1;
        await this.#sleep(this.#failed(error, failures), running);
      }
    }
  }

  async #relist(running: () => boolean): Promise<void> {
    const { client, path, labelSelector } = this.#opts;
    let list;
    try {
      list = await client.list<T>(path, { labelSelector });
    } catch (error) {
      if (running()) this.#opts.onListFailed?.(error);
      throw error;
    }
    if (!running()) return;
    const objects = new Map<string, T>();
    for (const item of list.items) objects.set(keyOf(item.metadata?.namespace, item.metadata?.name ?? ''), item);
    this.#objects = objects;
    this.#resourceVersion = list.metadata?.resourceVersion ?? '';
    this.#restored();
    this.#opts.onListed?.();
    this.#synced = true;
    for (const wake of this.#waiters.splice(0)) wake();
    this.#opts.onChange();
  }

  /** One watch stream, from the current resourceVersion until it ends; rejects on errors. */
  async #watchOnce(running: () => boolean): Promise<{ end: WatchEnd; events: number }> {
    const { client, path, labelSelector } = this.#opts;
    let events = 0;
    let expired = false;
    let failure: unknown;
    let finished = false;
    let ended!: (error: unknown) => void;
    const done = new Promise<unknown>((resolve) => (ended = resolve));
    const onEvent = (type: string, object: unknown): void => {
      if (failure !== undefined || expired) return;
      const obj = object as T & { code?: number };
      if (type === 'ERROR') {
        // The stream is over: resume (410) or back off; do not wait for the server to close it.
        if (obj.code === 410) expired = true;
        else failure = new KubeApiError('WATCH', path, obj.code ?? 500, JSON.stringify(obj));
        this.#watch?.abort();
        return;
      }
      events += 1;
      const version = obj.metadata?.resourceVersion;
      if (type === 'ADDED' || type === 'MODIFIED') this.#put(obj);
      else if (type === 'DELETED') this.#delete(obj);
      if (version !== undefined && version !== '') this.#resourceVersion = version;
    };
    // As client-go: the server ends the stream after 5 to 10 minutes, so reconnects spread out.
    const timeoutSeconds = String(300 + Math.floor(Math.random() * 300));
    const query = { resourceVersion: this.#resourceVersion, allowWatchBookmarks: 'true', timeoutSeconds, labelSelector };
    const controller = await client.watch(path, query, onEvent, (error) => {
      finished = true;
      ended(error);
    });
    this.#watch = controller;
    if (!running() || expired || failure !== undefined) controller.abort();
    // Not finished when the call returns: the API server answered 200 and the stream is open.
    else if (!finished) this.#restored();
    const error = await done;
    if (this.#watch === controller) this.#watch = undefined;
    if (expired) return { end: 'expired', events };
    if (failure !== undefined) throw failure;
    // A stream quiet for too long is reopened like one the server ended, not counted as a failure.
    if (error !== null && !(error instanceof WatchIdleError)) throw error;
    return { end: 'closed', events };
  }

  #put(obj: T): void {
    const key = keyOf(obj.metadata?.namespace, obj.metadata?.name ?? '');
    const known = this.#objects.get(key);
    const version = obj.metadata?.resourceVersion;
    if (known !== undefined && version !== undefined && known.metadata?.resourceVersion === version) return;
    this.#objects.set(key, obj);
    this.#opts.onChange();
  }

  #delete(obj: T): void {
    if (this.#objects.delete(keyOf(obj.metadata?.namespace, obj.metadata?.name ?? ''))) this.#opts.onChange();
  }

  #restored(): void {
    if (!this.#failing) return;
    this.#failing = false;
    this.#opts.log.info({ informer: this.#opts.what }, 'Kubernetes watch restored');
  }

  /** Logs the failure (once per outage) and returns how long to wait before the next attempt. */
  #failed(error: unknown, failures: number): number {
    const delayMs = Math.round(Math.min(this.#backoff.initialMs * 2 ** (failures - 1), this.#backoff.maxMs) * (0.8 + Math.random() * 0.4));
    const line = { informer: this.#opts.what, err: messageOf(error), retryInMs: delayMs };
    if (this.#failing) this.#opts.log.debug(line, 'Kubernetes watch still failing');
    else this.#opts.log.warn(line, 'Kubernetes watch failed: keeping the last known objects and retrying');
    this.#failing = true;
    return delayMs;
  }

  #sleep(ms: number, running: () => boolean): Promise<void> {
    if (!running()) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.#wakeRetry = resolve;
      this.#retry = setTimeout(resolve, ms);
      this.#retry.unref();
    }).then(() => {
      this.#retry = undefined;
      this.#wakeRetry = undefined;
    });
  }
}

function keyOf(namespace: string | undefined, name: string): string {
  return `${namespace ?? ''}/${name}`;
}
