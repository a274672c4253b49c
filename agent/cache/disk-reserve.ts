import { statfs } from 'node:fs/promises';

/** Free space kept on the cache's file system for the node: 5% of it, at most 1 GiB. */
const RESERVE_FRACTION = 0.05;
const RESERVE_MAX_BYTES = 1024 ** 3;

/** Free and total bytes of the file system holding `path`. Injectable, so tests can shrink a disk. */
export type FreeSpace = (path: string) => Promise<{ readonly free: number; readonly total: number }>;

const statfsFreeSpace: FreeSpace = async (path) => {
  const fs = await statfs(path);
  return { free: fs.bavail * fs.bsize, total: fs.blocks * fs.bsize };
};

function reserveOf(totalBytes: number): number {
  return Math.min(RESERVE_MAX_BYTES, totalBytes * RESERVE_FRACTION);
}

/**
 * One writer's share of the free space: bytes it was granted but has not written yet. While
 * granted they count against every other writer's check, so ten fills starting at once cannot
 * each see the same free gigabyte.
 */
export interface DiskShare {
  /** The writer's file now holds `written` bytes: that much of the grant is on disk (and in `free`). */
  progress(written: number): void;
  /** Asks for `need` bytes beyond what is written; false when the reserve would not hold. */
  request(need: number): Promise<boolean>;
  /** Writes no more (done or relaying): its grant stops counting. */
  close(): void;
}

/** A share's ledger: the file size up to which it may write, and how far it got. */
interface Grant {
  written: number;
  grantedUpTo: number;
  /** What was still unwritten right after the last grant. */
  grantedRemaining: number;
}

function remainingOf(grant: Grant): number {
  return Math.max(0, grant.grantedUpTo - grant.written);
}

/**
 * The free-space reserve of the cache's file system, checked with statfs whenever a writer asks
 * for more room. `free` counts what is on disk; what the other granted writers have still to
 * write is subtracted, so the reserve holds once they are done too. The decision after statfs is
 * synchronous: two checks racing are decided one after the other, the second seeing the first.
 */
export class DiskReserve {
  readonly #root: string;
  readonly #freeSpace: FreeSpace;
  readonly #granted = new Set<Grant>();

  constructor(root: string, freeSpace: FreeSpace = statfsFreeSpace) {
    this.#root = root;
    this.#freeSpace = freeSpace;
  }

  open(): DiskShare {
    const grant: Grant = { written: 0, grantedUpTo: 0, grantedRemaining: 0 };
    return {
      progress: (written) => {
        grant.written = Math.max(grant.written, written);
      },
      request: (need) => this.#grant(grant, need),
      close: () => {
        this.#granted.delete(grant);
      },
    };
  }

  async #grant(grant: Grant, need: number): Promise<boolean> {
    // What the others still had to write when statfs was asked: bytes they write meanwhile may or
    // may not show in its answer, so each counts with the larger of then and now. One that stopped
    // meanwhile counts with what it wrote since.
    const before = new Map<Grant, { remaining: number; written: number }>();
    for (const other of this.#granted) before.set(other, { remaining: remainingOf(other), written: other.written });
    let space: { free: number; total: number };
    try {
      space = await this.#freeSpace(this.#root);
    } catch {
      // Cannot tell (the cache dir is gone, …): no caching, the pull still works.
      this.#granted.delete(grant);
      return false;
    }
    let others = 0;
    for (const other of this.#granted) {
      if (other !== grant) others += Math.max(remainingOf(other), before.get(other)?.remaining ?? other.grantedRemaining);
    }
    for (const [other, then] of before) {
      if (other !== grant && !this.#granted.has(other)) others += other.written - then.written;
    }
    if (space.free - need - others <= reserveOf(space.total)) {
      this.#granted.delete(grant);
      return false;
    }
    grant.grantedUpTo = grant.written + need;
    grant.grantedRemaining = need;
    this.#granted.add(grant);
    return true;
  }
}
