import type { Logger } from 'pino';
import type { BlobCache } from '../cache/blob-cache.ts';
import type { Platform, PreloadImage } from '../config/types.ts';
import type { Mirror, PullContext } from '../mirror/mirror.ts';
import type { TagStore } from '../mirror/tag-store.ts';
import { type Digest, isDigest } from '../oci/digest.ts';
import { type Reference, type RepositoryName, parseRepositoryName } from '../oci/reference.ts';
import { choosePins, type PinGroup } from './pins.ts';
import { platformMatches, platformText } from './platform.ts';
import type { PreloadImageState, PreloadReport } from './state.ts';
import { importedContent } from './imported.ts';

/** A failed entry is tried again after this (or its mirror's preload_interval, when shorter). */
const RETRY_MS = 60_000;
/** Blobs of one image fetched at once: the mirror's fetch slots bound the tunnel anyway. */
const BLOBS_AT_ONCE = 3;
/** Error texts in states and logs are cut to this. */
const ERROR_MAX = 300;

export interface PreloaderDeps {
  /** The mirrors serving now (they change on reloads and RegistryMirror updates). */
  readonly mirrors: () => readonly Mirror[];
  readonly cache: BlobCache;
  readonly tags: TagStore;
  /** `pin_max_bytes`. */
  readonly pinMaxBytes: number;
  /** The node's platform: what an index is preloaded for when an entry names none. */
  readonly platform: Platform;
  readonly log: Logger;
  readonly now?: () => number;
  readonly retryMs?: number;
  /** Told after any entry's state or the pins changed (metrics, the node report). */
  readonly changed?: () => void;
}

/** What an entry resolved to: the top manifest and everything under it, with sizes. */
interface Resolved {
  readonly digest: Digest;
  readonly content: Map<Digest, number>;
}

interface Entry {
  readonly image: PreloadImage;
  state: PreloadImageState;
  /** The last content that was fully cached: stays pinned while a moved tag's new content is fetched. */
  good: Resolved | undefined;
  /** Content being fetched now: pinned from the moment it is known, so a pass cannot evict its own blobs. */
  fetching: Resolved | undefined;
}

/**
 * Keeps every mirror's `preload` images in this node's cache, pinned. Each mirror runs its list in
 * the background, one image at a time, through the mirror itself (the access rules, the peers, the
 * tunnel budget at background priority all apply); tags are resolved again every
 * `preload_interval` and a moved tag is fetched again. Pins cover whole images within
 * `pin_max_bytes`: imported images first, then the lists in order.
 */
export class Preloader {
  readonly #d: PreloaderDeps;
  readonly #now: () => number;
  readonly #runs = new Map<string, MirrorRun>();
  #imported: PinGroup[] = [];
  #over: ReadonlySet<string> = new Set();
  #pinnedBytes = 0;
  #stopped = false;

  constructor(deps: PreloaderDeps) {
    this.#d = deps;
    this.#now = deps.now ?? Date.now;
  }

  /** Follows the current mirrors: new or changed preload lists start (now), removed ones stop and unpin. */
  apply(): void {
    if (this.#stopped) return;
    const live = new Map(this.#d.mirrors().map((mirror) => [mirror.registry, mirror]));
    const replaced = new Map<string, MirrorRun>();
    for (const [registry, run] of this.#runs) {
      const mirror = live.get(registry);
      if (mirror === run.mirror && mirror.config.preload.length > 0) continue;
      run.stop();
      this.#runs.delete(registry);
      replaced.set(registry, run);
    }
    for (const [registry, mirror] of live) {
      if (this.#runs.has(registry) || mirror.config.preload.length === 0 || mirror.offline) continue;
      // Entries the changed mirror still lists keep their state and pins: no unpinned window.
      const run = new MirrorRun(mirror, this, replaced.get(registry));
      this.#runs.set(registry, run);
      run.start();
    }
    this.repin();
  }

  /** Imported images (tag records marked imported) are read again: start-up, SIGHUP after an import. */
  async refreshImports(): Promise<void> {
    this.#imported = await importedContent(this.#d.tags, this.#d.cache, this.#d.log);
    this.repin();
  }

  /** Every mirror's entries, by registry. */
  report(): PreloadReport {
    return new Map([...this.#runs].map(([registry, run]) => [registry, run.states()]));
  }

  states(registry: string): readonly PreloadImageState[] {
    return this.#runs.get(registry)?.states() ?? [];
  }

  get pinnedBytes(): number {
    return this.#pinnedBytes;
  }

  /** Runs every mirror's list once more now and resolves when all are done (tests, the bench). */
  async runNow(): Promise<void> {
    await Promise.all([...this.#runs.values()].map((run) => run.runNow()));
  }

  stop(): void {
    this.#stopped = true;
    for (const run of this.#runs.values()) run.stop();
    this.#runs.clear();
  }

  /** Recomputes the pins from imports and every entry's content (good and being fetched). */
  repin(): void {
    const groups: PinGroup[] = [...this.#imported];
    for (const [registry, run] of this.#runs) groups.push(...run.pinGroups(registry));
    const choice = choosePins(groups, this.#d.pinMaxBytes);
    this.#d.cache.setPins(choice.pins);
    this.#pinnedBytes = choice.bytes;
    const newlyOver = [...choice.over].filter((key) => !this.#over.has(key));
    if (newlyOver.length > 0) {
      this.#d.log.warn(
        { images: newlyOver.slice(0, 10), pinnedBytes: choice.bytes, pinMaxBytes: this.#d.pinMaxBytes, fix: 'raise pin_max_bytes (at most cache_max_bytes) or preload fewer images' },
        'pin budget exceeded: these images are cached but not pinned (evictable)',
      );
    }
    this.#over = choice.over;
    for (const run of this.#runs.values()) run.markPins(choice.over, this.#d.pinMaxBytes);
    this.#d.changed?.();
  }

  get deps(): PreloaderDeps {
    return this.#d;
  }

  now(): number {
    return this.#now();
  }
}

/** One mirror's preload list: runs it, then again every preload_interval (sooner after a failure). */
class MirrorRun {
  readonly mirror: Mirror;
  readonly #owner: Preloader;
  readonly #entries: Entry[];
  readonly #abort = new AbortController();
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;

  constructor(mirror: Mirror, owner: Preloader, previous?: MirrorRun) {
    this.mirror = mirror;
    this.#owner = owner;
    const since = owner.now();
    this.#entries = mirror.config.preload.map((image) => {
      const kept = previous === undefined ? undefined : previous.#entries.find((entry) => sameImage(entry.image, image));
      return kept ? { image, state: kept.state, good: kept.good, fetching: undefined } : { image, state: { image: image.image, phase: 'pending', bytes: 0, pinned: false, since }, good: undefined, fetching: undefined };
    });
  }

  start(): void {
    void this.runNow();
  }

  runNow(): Promise<void> {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#running ??= this.#pass().finally(() => {
      this.#running = undefined;
      this.#schedule();
    });
    return this.#running;
  }

  stop(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#abort.abort(new Error('preload stopped'));
  }

  states(): PreloadImageState[] {
    return this.#entries.map((entry) => entry.state);
  }

  pinGroups(registry: string): PinGroup[] {
    const groups: PinGroup[] = [];
    for (const entry of this.#entries) {
      const content = new Map(entry.good?.content ?? []);
      for (const [digest, size] of entry.fetching?.content ?? []) content.set(digest, size);
      if (content.size > 0) groups.push({ key: `${registry} ${entry.image.image}`, content });
    }
    return groups;
  }

  /** After the pins were chosen: which entries are pinned; a ready one left out says so in its error. */
  markPins(over: ReadonlySet<string>, maxBytes: number): void {
    const budget = `pin budget exceeded (pin_max_bytes ${maxBytes} bytes): cached but not pinned`;
    for (const entry of this.#entries) {
      if (!entry.good && !entry.fetching) continue;
      const pinned = !over.has(`${this.mirror.registry} ${entry.image.image}`);
      const { error, ...rest } = entry.state;
      const next: PreloadImageState = rest.phase === 'ready' ? { ...rest, pinned, ...(pinned ? {} : { error: budget }) } : { ...rest, pinned, ...(error === undefined ? {} : { error }) };
      if (next.pinned !== entry.state.pinned || next.error !== entry.state.error) entry.state = next;
    }
  }

  #schedule(): void {
    if (this.#abort.signal.aborted) return;
    const failed = this.#entries.some((entry) => entry.state.phase === 'failed');
    const interval = this.mirror.config.preloadIntervalMs;
    const delay = failed ? Math.min(interval, this.#owner.deps.retryMs ?? RETRY_MS) : interval;
    this.#timer = setTimeout(() => void this.runNow(), delay);
    this.#timer.unref();
  }

  async #pass(): Promise<void> {
    for (const entry of this.#entries) {
      if (this.#abort.signal.aborted) return;
      await this.#preload(entry);
    }
  }

  async #preload(entry: Entry): Promise<void> {
    const { log } = this.#owner.deps;
    const signal = this.#abort.signal;
    const ctx: PullContext = { priority: 'background', signal };
    try {
      const name = parseRepositoryName(entry.image.repository);
      const reference: Reference = entry.image.digest ? { kind: 'digest', digest: entry.image.digest as Digest } : { kind: 'tag', tag: entry.image.tag ?? 'latest' };
      const resolved = await this.#resolve(name, reference, entry.image, ctx);
      if (entry.good?.digest !== resolved.digest || !this.#allCached(resolved)) {
        const moved = entry.good !== undefined && entry.good.digest !== resolved.digest;
        entry.fetching = resolved;
        this.#set(entry, { phase: entry.state.phase === 'ready' && !moved ? 'ready' : 'pending', digest: resolved.digest });
        this.#owner.repin();
        if (moved) log.info({ image: entry.image.image, from: entry.good?.digest, to: resolved.digest }, 'preload: the tag moved, fetching the new image');
        await this.#fetchBlobs(name, resolved, ctx);
        if (!this.#allCached(resolved)) throw new Error('fetched, but not all of it stayed in the cache (no room: see cache_max_bytes and pin_max_bytes)');
        entry.good = resolved;
        entry.fetching = undefined;
        log.info({ image: entry.image.image, digest: resolved.digest, bytes: sum(resolved.content) }, 'preloaded');
      }
      this.#set(entry, { phase: 'ready', digest: resolved.digest, bytes: sum(resolved.content) });
      this.#owner.repin();
    } catch (error) {
      entry.fetching = undefined;
      if (signal.aborted) return;
      const message = oneLine(error);
      if (entry.state.phase !== 'failed' || entry.state.error !== message) log.warn({ image: entry.image.image, err: message }, 'preload failed: retrying later');
      this.#set(entry, { phase: 'failed', error: message });
      this.#owner.repin();
    }
  }

  /** The top manifest, and for an index the manifests of the platforms wanted, with every blob they name. */
  async #resolve(name: RepositoryName, reference: Reference, image: PreloadImage, ctx: PullContext): Promise<Resolved> {
    const top = await this.#manifest(name, reference, ctx);
    const content = new Map<Digest, number>([[top.digest, top.size]]);
    const manifests = top.json['manifests'];
    if (!Array.isArray(manifests)) {
      addBlobs(content, top.json);
      return { digest: top.digest, content };
    }
    const platforms = image.platforms ?? [this.#owner.deps.platform];
    for (const platform of platforms) {
      const child = manifests.find((m: unknown) => platformMatches(platform, (m as { platform?: unknown } | null)?.platform));
      const digest = (child as { digest?: unknown } | undefined)?.digest;
      if (typeof digest !== 'string' || !isDigest(digest)) throw new Error(`the index names no manifest for ${platformText(platform)}`);
      const manifest = await this.#manifest(name, { kind: 'digest', digest }, ctx);
      content.set(manifest.digest, manifest.size);
      addBlobs(content, manifest.json);
    }
    return { digest: top.digest, content };
  }

  async #manifest(name: RepositoryName, reference: Reference, ctx: PullContext): Promise<{ digest: Digest; size: number; json: Record<string, unknown> }> {
    const result = await this.mirror.manifest(name, reference, ctx);
    try {
      const json = JSON.parse(result.body.bytes.toString('utf8')) as unknown;
      if (typeof json !== 'object' || json === null) throw new Error(`manifest ${result.digest} is not a JSON object`);
      return { digest: result.digest, size: result.size, json: json as Record<string, unknown> };
    } finally {
      result.body.release();
    }
  }

  /** Fetches what is not cached yet, a few blobs at once, each read to its verified end. */
  async #fetchBlobs(name: RepositoryName, resolved: Resolved, ctx: PullContext): Promise<void> {
    const { cache } = this.#owner.deps;
    const missing = [...resolved.content.keys()].filter((digest) => !cache.isCached(digest) && digest !== resolved.digest);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < missing.length) {
        const digest = missing[next++]!;
        if (cache.isCached(digest)) continue;
        const reader = await this.mirror.blob(name, digest, ctx);
        try {
          // A hit needs no reading; a download is read to its end, the last byte only once verified.
          if (reader.origin !== 'hit') for await (const _chunk of reader.read(0)) if (ctx.signal?.aborted) throw ctx.signal.reason;
        } finally {
          reader.close();
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(BLOBS_AT_ONCE, missing.length) }, worker));
  }

  #allCached(resolved: Resolved): boolean {
    const { cache } = this.#owner.deps;
    return [...resolved.content.keys()].every((digest) => cache.isCached(digest));
  }

  #set(entry: Entry, change: Partial<PreloadImageState>): void {
    const next: PreloadImageState = { ...entry.state, ...change, since: change.phase && change.phase !== entry.state.phase ? this.#owner.now() : entry.state.since };
    if (change.phase && change.phase !== 'failed') delete (next as { error?: string }).error;
    entry.state = next;
  }
}

function sameImage(a: PreloadImage, b: PreloadImage): boolean {
  return a.image === b.image && JSON.stringify(a.platforms ?? null) === JSON.stringify(b.platforms ?? null);
}

/** The config and layers a manifest names, with the sizes its descriptors give. */
function addBlobs(content: Map<Digest, number>, manifest: Record<string, unknown>): void {
  const descriptors = [manifest['config'], ...(Array.isArray(manifest['layers']) ? manifest['layers'] : [])];
  for (const descriptor of descriptors) {
    if (typeof descriptor !== 'object' || descriptor === null) continue;
    const { digest, size, urls } = descriptor as Record<string, unknown>;
    // A foreign layer is not in the registry: it is fetched from its URLs by containerd, never by us.
    if (urls !== undefined) continue;
    if (typeof digest === 'string' && isDigest(digest) && typeof size === 'number') content.set(digest, size);
  }
}

function sum(content: ReadonlyMap<Digest, number>): number {
  let total = 0;
  for (const size of content.values()) total += size;
  return total;
}

function oneLine(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  const line = text.replace(/\s+/g, ' ').trim();
  return line.length > ERROR_MAX ? `${line.slice(0, ERROR_MAX - 1)}…` : line;
}
