import type { Digest } from '../oci/digest.ts';

/** The content of one image that wants to be pinned: its digests and their sizes. */
export interface PinGroup {
  /** Who wants it, for the budget's report (`import registry/name:tag`, `registry team/app:1.2`). */
  readonly key: string;
  readonly content: ReadonlyMap<Digest, number>;
}

export interface PinChoice {
  readonly pins: ReadonlySet<Digest>;
  /** Bytes pinned (content shared by several images counted once). */
  readonly bytes: number;
  /** Groups left unpinned because they would have gone past the budget. */
  readonly over: ReadonlySet<string>;
}

/**
 * Pins whole images in the order given (imports first, then each mirror's preload list) while they
 * fit in `maxBytes`; an image that does not fit is left out whole (half an image pinned would be
 * half an image after an eviction) and later, smaller ones may still fit. Shared blobs count once.
 */
export function choosePins(groups: readonly PinGroup[], maxBytes: number): PinChoice {
  const pins = new Set<Digest>();
  const over = new Set<string>();
  let bytes = 0;
  for (const group of groups) {
    let more = 0;
    for (const [digest, size] of group.content) if (!pins.has(digest)) more += size;
    if (bytes + more > maxBytes) {
      over.add(group.key);
      continue;
    }
    for (const digest of group.content.keys()) pins.add(digest);
    bytes += more;
  }
  return { pins, bytes, over };
}
