import { readFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { BlobCache } from './cache/blob-cache.ts';
import type { AgentConfig, ListenAddress, MirrorConfig } from './config/types.ts';
import { createHealthServer } from './health.ts';
import { MirrorSet } from './http/mirror-set.ts';
import { type RequestRecord, causeChain, createMirrorServer } from './http/server.ts';
import { Mirror } from './mirror/mirror.ts';
import { TagStore } from './mirror/tag-store.ts';
import { UpstreamClient } from './upstream/client.ts';

export interface RuntimeOptions {
  readonly onRequest?: (record: RequestRecord) => void;
}

/**
 * A running agent: cache, mirrors, the mirror listener and the health listener. `main.ts` adds
 * process concerns (CLI, signals); tests start this directly.
 */
export class AgentRuntime {
  readonly config: AgentConfig;
  readonly cache: BlobCache;
  readonly mirrors: MirrorSet;
  readonly #log: Logger;
  readonly #mirrorServer: Server;
  readonly #healthServer: Server;
  #listening = false;
  #scan: Promise<void> = Promise.resolve();

  private constructor(config: AgentConfig, log: Logger, cache: BlobCache, mirrors: MirrorSet, options: RuntimeOptions) {
    this.config = config;
    this.#log = log;
    this.cache = cache;
    this.mirrors = mirrors;
    this.#mirrorServer = createMirrorServer({ mirrors, log: log.child({ component: 'mirror' }), ...(options.onRequest ? { onRequest: options.onRequest } : {}) });
    this.#healthServer = createHealthServer({ ready: () => this.#readiness() });
  }

  static async start(config: AgentConfig, log: Logger, options: RuntimeOptions = {}): Promise<AgentRuntime> {
    const cache = new BlobCache(config.cacheDir, config.cacheMaxBytes, {
      corrupt: (digest, error) => log.error({ digest, err: error.message }, 'cached blob failed verification: removed, will refetch'),
      fillFailed: (digest, error) => log.warn({ digest, err: causeChain(error) }, 'blob fetch failed: nothing cached'),
      evicted: (digest) => log.debug({ digest }, 'evicted'),
      storeError: (operation, error) => log.error({ operation, err: error.message }, 'cache store error'),
    });
    const { removedTemp } = await cache.init();
    if (removedTemp > 0) log.info({ removedTemp }, 'removed partial downloads left by an earlier run');
    const tags = new TagStore(join(config.cacheDir, 'tags'));
    await tags.init();
    const mirrors = new MirrorSet(await Promise.all(config.mirrors.map((m) => buildMirror(m, cache, tags, log))));
    const runtime = new AgentRuntime(config, log, cache, mirrors, options);
    await runtime.#listen();
    runtime.#scan = runtime.#rebuildIndex();
    return runtime;
  }

  /** The mirror endpoint containerd is pointed at, with the port actually bound. */
  get mirrorUrl(): string {
    return urlOf(this.#mirrorServer);
  }

  get healthUrl(): string {
    return urlOf(this.#healthServer);
  }

  /** Resolves when the start-up index rebuild finished (tests). */
  scanned(): Promise<void> {
    return this.#scan;
  }

  /** Stops accepting connections and waits (bounded) for in-flight responses to finish. */
  async stop(graceMs = 25_000): Promise<void> {
    this.#listening = false;
    const timer = setTimeout(() => this.#mirrorServer.closeAllConnections(), graceMs);
    this.#mirrorServer.closeIdleConnections();
    await Promise.all([closeServer(this.#mirrorServer), closeServer(this.#healthServer)]);
    clearTimeout(timer);
    await Promise.all(this.mirrors.list().map((m) => m.upstream.close().catch(() => undefined)));
  }

  async #listen(): Promise<void> {
    await listen(this.#mirrorServer, this.config.listen);
    await listen(this.#healthServer, this.config.metricsListen);
    this.#listening = true;
    this.#log.info(
      { listen: this.mirrorUrl, health: this.healthUrl, registries: this.mirrors.list().map((m) => m.registry), config: this.config.source },
      'mirror listening',
    );
  }

  async #rebuildIndex(): Promise<void> {
    try {
      const { blobs, bytes } = await this.cache.scan();
      const { bytes: kept, entries } = this.cache.stats();
      this.#log.info({ found: blobs, foundBytes: bytes, entries, bytes: kept, maxBytes: this.config.cacheMaxBytes }, 'cache index rebuilt');
    } catch (error) {
      this.#log.error({ err: (error as Error).message }, 'cache index rebuild failed');
    }
  }

  #readiness(): { ok: boolean; reason?: string } {
    if (!this.#listening) return { ok: false, reason: 'mirror listener is not up' };
    if (!this.cache.ready) return { ok: false, reason: 'cache index is being rebuilt' };
    return { ok: true };
  }
}

async function buildMirror(config: MirrorConfig, cache: BlobCache, tags: TagStore, log: Logger): Promise<Mirror> {
  const credentials = config.username && config.passwordFile ? { username: config.username, password: await readPassword(config.passwordFile) } : undefined;
  const upstream = new UpstreamClient({ registry: config.registry, base: config.upstream, credentials });
  return new Mirror({ config, upstream, cache, tags, log: log.child({ component: 'mirror', registry: config.registry }) });
}

async function readPassword(file: string): Promise<string> {
  return (await readFile(file, 'utf8')).replace(/\r?\n$/, '');
}

function listen(server: Server, address: ListenAddress): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(address.port, address.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

function urlOf(server: Server): string {
  const address = server.address() as AddressInfo | null;
  if (!address) return '';
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return `http://${host}:${address.port}`;
}
