import { HttpMethod, KubeConfig, RequestContext } from '@kubernetes/client-node';
import { type Dispatcher, request } from 'undici';
import type { KubernetesConfig } from '../config/types.ts';
import { FIELD_MANAGER } from './resources.ts';

/** A collection as the API server lists it. */
export interface KubeList<T> {
  readonly metadata?: { readonly resourceVersion?: string };
  readonly items: T[];
}

/** The API server answered with an error status; `body` is its `Status` object as text. */
export class KubeApiError extends Error {
  readonly code: number;
  readonly body: string;

  constructor(method: string, path: string, code: number, body: string) {
    super(`${method} ${path}: HTTP ${code}`);
    this.name = 'KubeApiError';
    this.code = code;
    this.body = body;
  }
}

/** A watch stream sent nothing (no event, no bookmark) for the idle timeout: taken for a dead connection. */
export class WatchIdleError extends Error {
  constructor(path: string, ms: number) {
    super(`watch ${path}: no data for ${ms} ms`);
    this.name = 'WatchIdleError';
  }
}

type Query = Readonly<Record<string, string | undefined>>;

/**
 * A watch stream with no data for this long is taken for a dead connection and reopened. The API
 * server sends a bookmark about once a minute; client-node's Watch gives up after 30 s, which would
 * reopen every quiet watch of every node twice a minute.
 */
export const WATCH_IDLE_TIMEOUT_MS = 120_000;

/** The longest watch event line kept while it arrives (an object is at most ~1.5 MiB in etcd). */
const MAX_WATCH_LINE = 16 * 1024 * 1024;

interface Prepared {
  readonly url: URL;
  readonly headers: Record<string, string>;
  /** Made for this request from the kubeconfig's TLS options; to be closed with it. */
  readonly dispatcher: Dispatcher | undefined;
}

/**
 * The agent's Kubernetes client: `@kubernetes/client-node`'s KubeConfig for where the API server is
 * and how to authenticate (service account token, client certificates, CA, proxy), and plain undici
 * requests for the dozen calls the agent makes and its watch streams.
 *
 * Why not the package's generated API classes: each of them loads its model serializer, which loads
 * all ~900 models of every API group, whether used or not (6 MiB of idle RSS on every node, BENCHMARKS.md).
 * The objects here are the JSON the API server sent: where the package's types say `Date`, the value
 * is the RFC 3339 string (readers parse it); Dates written are sent as `toJSON` renders them (V1MicroTime
 * with microseconds).
 */
export class KubeClient {
  readonly kc: KubeConfig;
  readonly #watchIdleTimeoutMs: number;

  constructor(kc: KubeConfig, options: { watchIdleTimeoutMs?: number } = {}) {
    this.kc = kc;
    this.#watchIdleTimeoutMs = options.watchIdleTimeoutMs ?? WATCH_IDLE_TIMEOUT_MS;
  }

  /** From `kubeconfig` when set (tests, out-of-cluster), else the pod's service account. */
  static fromConfig(config: KubernetesConfig): KubeClient {
    const kc = new KubeConfig();
    if (config.kubeconfig !== undefined) kc.loadFromFile(config.kubeconfig);
    else kc.loadFromCluster();
    return new KubeClient(kc);
  }

  get<T>(path: string): Promise<T> {
    return this.#request<T>(HttpMethod.GET, path, {});
  }

  list<T>(path: string, query: Query = {}): Promise<KubeList<T>> {
    return this.#request<KubeList<T>>(HttpMethod.GET, path, query);
  }

  /** POST to a collection. */
  create<T>(path: string, body: T): Promise<T> {
    return this.#request<T>(HttpMethod.POST, path, { fieldManager: FIELD_MANAGER }, body);
  }

  /** PUT of a whole object; its `metadata.resourceVersion` makes it conditional (409 when it changed). */
  replace<T>(path: string, body: T): Promise<T> {
    return this.#request<T>(HttpMethod.PUT, path, { fieldManager: FIELD_MANAGER }, body);
  }

  /** Server-side apply of the fields in `body`, taking them over from other managers. */
  apply<T>(path: string, body: object): Promise<T> {
    return this.#request<T>(HttpMethod.PATCH, path, { fieldManager: FIELD_MANAGER, force: 'true' }, body, 'application/apply-patch+yaml');
  }

  /**
   * Opens a watch stream: one JSON event per line, each handed to `onEvent` as it arrives. `done` is
   * called once: null when the server ended the stream, else the error (a refusal as KubeApiError,
   * WatchIdleError after the idle timeout, the abort when the returned controller aborts).
   */
  async watch(path: string, query: Query, onEvent: (type: string, object: unknown) => void, done: (error: unknown) => void): Promise<AbortController> {
    const controller = new AbortController();
    let finished = false;
    let timer: NodeJS.Timeout | undefined;
    let dispatcher: Dispatcher | undefined;
    const finish = (error: unknown): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      controller.abort();
      if (dispatcher !== undefined) void dispatcher.close().catch(() => undefined);
      done(error);
    };
    const stillAlive = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => finish(new WatchIdleError(path, this.#watchIdleTimeoutMs)), this.#watchIdleTimeoutMs);
      timer.unref();
    };
    try {
      stillAlive();
      const prepared = await this.#prepare(HttpMethod.GET, path, { ...query, watch: 'true' });
      dispatcher = prepared.dispatcher;
      // No body timeout of undici's: a quiet stream is the idle timer's to judge.
      const response = await request(prepared.url, { headers: prepared.headers, signal: controller.signal, bodyTimeout: 0, ...(dispatcher === undefined ? {} : { dispatcher }) });
      if (response.statusCode !== 200) throw new KubeApiError('WATCH', path, response.statusCode, await response.body.text());
      stillAlive();
      let pending = '';
      response.body.setEncoding('utf8');
      response.body.on('data', (chunk: string) => {
        stillAlive();
        // Only the new chunk can hold the next newline: a large event is not rescanned chunk by chunk.
        const scanned = pending.length;
        pending += chunk;
        for (let nl = pending.indexOf('\n', scanned); nl >= 0 && !finished; nl = pending.indexOf('\n')) {
          const line = pending.slice(0, nl);
          pending = pending.slice(nl + 1);
          if (line.trim() === '') continue;
          let event: { type?: unknown; object?: unknown };
          try {
            event = JSON.parse(line) as typeof event;
          } catch {
            finish(new Error(`watch ${path}: a line that is not JSON`));
            return;
          }
          onEvent(String(event.type), event.object);
        }
        if (pending.length > MAX_WATCH_LINE) finish(new Error(`watch ${path}: an event longer than ${MAX_WATCH_LINE} bytes`));
      });
      response.body.on('end', () => finish(null));
      response.body.on('error', (error) => finish(error));
    } catch (error) {
      finish(error);
    }
    return controller;
  }

  async #request<T>(method: HttpMethod, path: string, query: Query, body?: unknown, contentType = 'application/json'): Promise<T> {
    const { url, headers, dispatcher } = await this.#prepare(method, path, query);
    if (body !== undefined) headers['content-type'] = contentType;
    try {
      const response = await request(url, {
        method,
        headers,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        ...(dispatcher === undefined ? {} : { dispatcher }),
      });
      const text = await response.body.text();
      if (response.statusCode < 200 || response.statusCode > 299) throw new KubeApiError(method, path, response.statusCode, text);
      return JSON.parse(text) as T;
    } finally {
      if (dispatcher !== undefined) void dispatcher.close().catch(() => undefined);
    }
  }

  /** The URL, and the headers and dispatcher the kubeconfig's authentication gives a request to it. */
  async #prepare(method: HttpMethod, path: string, query: Query): Promise<Prepared> {
    const cluster = this.kc.getCurrentCluster();
    if (cluster === null) throw new Error('the kubeconfig has no current cluster');
    const url = new URL(cluster.server + path);
    for (const [key, value] of Object.entries(query)) if (value !== undefined) url.searchParams.set(key, value);
    const context = new RequestContext(url.toString(), method);
    await this.kc.applySecurityAuthentication(context);
    return { url, headers: { ...context.getHeaders(), accept: 'application/json' }, dispatcher: context.getDispatcher() };
  }
}

/** The path of a namespaced collection, or of one object in it. `group` is empty for the core API. */
function namespacedPath(group: string, version: string, plural: string, namespace: string, name?: string): string {
  const base = group === '' ? `/api/${version}` : `/apis/${group}/${version}`;
  const collection = `${base}/namespaces/${encodeURIComponent(namespace)}/${plural}`;
  return name === undefined ? collection : `${collection}/${encodeURIComponent(name)}`;
}

/** API paths of the namespaced resources the agent reads and writes: the collection, or one object with `name`. */
export const paths = {
  leases: (namespace: string, name?: string): string => namespacedPath('coordination.k8s.io', 'v1', 'leases', namespace, name),
  secrets: (namespace: string, name?: string): string => namespacedPath('', 'v1', 'secrets', namespace, name),
  events: (namespace: string): string => namespacedPath('', 'v1', 'events', namespace),
  endpointSlices: (namespace: string): string => namespacedPath('discovery.k8s.io', 'v1', 'endpointslices', namespace),
};

/** The HTTP status of a failed API call, or undefined when it never got an answer. */
export function statusOf(error: unknown): number | undefined {
  if (error instanceof KubeApiError) return error.code;
  if (typeof error === 'object' && error !== null && 'statusCode' in error && typeof error.statusCode === 'number') return error.statusCode;
  return undefined;
}

/** A short description for the log: the status code and the API server's `Status` message, not the whole answer. */
export function messageOf(error: unknown): string {
  if (!(error instanceof KubeApiError)) return error instanceof Error ? error.message : String(error);
  let detail = '';
  try {
    const status = JSON.parse(error.body) as { message?: unknown };
    if (typeof status.message === 'string') detail = `: ${status.message}`;
  } catch {
    // not a Status body
  }
  return `HTTP ${error.code}${detail}`;
}

/** Rejects when `promise` takes longer than `ms` (API requests have no timeout of their own). */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
