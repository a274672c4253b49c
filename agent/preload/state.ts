/** Where one preload entry stands on this node. */
export type PreloadPhase = 'pending' | 'ready' | 'failed';

/**
 * One `preload` entry of a mirror as this node sees it: what the node reports (Kubernetes node
 * report, metrics, logs). `ready` means every blob of the image (for the platforms asked for) is in
 * the cache, verified, and pinned; `failed` keeps the last error until the next attempt succeeds.
 */
export interface PreloadImageState {
  /** The entry as written in the configuration (`team/app:1.2`). */
  readonly image: string;
  readonly phase: PreloadPhase;
  /** The manifest (or index) digest the entry resolved to, once known. */
  readonly digest?: string;
  /** Bytes of the image's blobs and manifests in the cache. */
  readonly bytes: number;
  /** Whether its content is pinned (false when the pin budget was exceeded: it is cached, but evictable). */
  readonly pinned: boolean;
  /** The last error, one line, no secrets; absent once the entry is ready. */
  readonly error?: string;
  /** When this state was reached (ms since epoch). */
  readonly since: number;
}

/** Every mirror's preload entries on this node, by registry, in configuration order. */
export type PreloadReport = ReadonlyMap<string, readonly PreloadImageState[]>;
