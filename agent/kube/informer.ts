import { ListWatch, Watch, type KubeConfig, type KubernetesListObject, type KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { messageOf } from './client.ts';

/** Restart delays after an informer error: doubling from `initialMs` up to `maxMs`, with jitter. */
export interface Backoff {
  readonly initialMs: number;
  readonly maxMs: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 1_000, maxMs: 30_000 };

export interface InformerOptions<T extends KubernetesObject> {
  readonly kc: KubeConfig;
  /** API path of the collection, e.g. `/api/v1/namespaces/x/secrets`. */
  readonly path: string;
  readonly list: () => Promise<KubernetesListObject<T>>;
  readonly labelSelector?: string;
  /** Named in the log. */
  readonly what: string;
  readonly log: Logger;
  /** Any add, update or delete, and every successful (re)list. */
  readonly onChange: () => void;
  readonly backoff?: Backoff;
}

/**
 * A client-node informer that survives the API server going away. client-node relists by itself on
 * 410 Expired and reconnects after watch timeouts, but it stops for good on any other error (connection
 * refused, reset, 5xx); this restarts it with backoff. The cache is kept meanwhile: while the API server
 * is unreachable the last known objects stay, and nothing is reported as deleted.
 */
export class ResilientInformer<T extends KubernetesObject> {
  readonly #lw: ListWatch<T>;
  readonly #opts: InformerOptions<T>;
  readonly #backoff: Backoff;
  #synced = false;
  #waiters: Array<() => void> = [];
  #stopped = true;
  #retry: NodeJS.Timeout | undefined;
  #delayMs = 0;
  #attempt = 0;
  #failedAttempt = -1;
  /** Logged once per outage, not once per retry. */
  #failing = false;

  constructor(opts: InformerOptions<T>) {
    this.#opts = opts;
    this.#backoff = opts.backoff ?? DEFAULT_BACKOFF;
    const list = async (): Promise<KubernetesListObject<T>> => {
      const result = await opts.list();
      this.#listed();
      return result;
    };
    this.#lw = new ListWatch<T>(opts.path, new Watch(opts.kc), list, false, opts.labelSelector);
    this.#lw.on('add', () => opts.onChange());
    this.#lw.on('update', () => opts.onChange());
    this.#lw.on('delete', () => opts.onChange());
    this.#lw.on('error', (error: unknown) => this.#failed(error));
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
    return [...this.#lw.list()];
  }

  get(name: string, namespace?: string): T | undefined {
    return this.#lw.get(name, namespace);
  }

  /** Starts listing and watching in the background; failures are retried, never thrown. */
  start(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    void this.#run();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#retry);
    this.#retry = undefined;
    await this.#lw.stop();
  }

  async #run(): Promise<void> {
    this.#retry = undefined;
    if (this.#stopped) return;
    const attempt = ++this.#attempt;
    try {
      await this.#lw.start();
    } catch (error) {
      this.#failed(error);
      return;
    }
    if (this.#failedAttempt === attempt || this.#stopped) return;
    this.#delayMs = 0;
    if (this.#failing) {
      this.#failing = false;
      this.#opts.log.info({ informer: this.#opts.what }, 'Kubernetes watch restored');
    }
  }

  #listed(): void {
    this.#synced = true;
    for (const wake of this.#waiters.splice(0)) wake();
    this.#opts.onChange();
  }

  #failed(error: unknown): void {
    this.#failedAttempt = this.#attempt;
    // stop() aborts the watch, which client-node reports as an error too.
    if (this.#stopped || this.#retry !== undefined) return;
    this.#delayMs = this.#delayMs === 0 ? this.#backoff.initialMs : Math.min(this.#delayMs * 2, this.#backoff.maxMs);
    const delayMs = Math.round(this.#delayMs * (0.8 + Math.random() * 0.4));
    const line = { informer: this.#opts.what, err: messageOf(error), retryInMs: delayMs };
    if (this.#failing) this.#opts.log.debug(line, 'Kubernetes watch still failing');
    else this.#opts.log.warn(line, 'Kubernetes watch failed: keeping the last known objects and retrying');
    this.#failing = true;
    this.#retry = setTimeout(() => void this.#run(), delayMs);
    this.#retry.unref();
  }
}
