import type { Mirror } from '../mirror/mirror.ts';
import { OciError } from '../oci/errors.ts';

/** The configured mirrors, selected by containerd's `ns` query parameter. */
export class MirrorSet {
  #byRegistry = new Map<string, Mirror>();

  constructor(mirrors: Iterable<Mirror> = []) {
    this.replace(mirrors);
  }

  /** Swaps the whole set (config reload); in-flight requests keep the mirror they selected. */
  replace(mirrors: Iterable<Mirror>): void {
    this.#byRegistry = new Map([...mirrors].map((m) => [m.registry, m]));
  }

  list(): Mirror[] {
    return [...this.#byRegistry.values()];
  }

  /** Never falls back to anything that is not configured: that would make the agent an open proxy. */
  select(ns: string | undefined): Mirror {
    if (ns !== undefined) {
      const mirror = this.#byRegistry.get(ns);
      if (!mirror) throw new OciError('NAME_UNKNOWN', `registry ${ns} is not mirrored by this agent`, { detail: { ns } });
      return mirror;
    }
    const only = this.#byRegistry.size === 1 ? this.#byRegistry.values().next().value : undefined;
    if (!only) {
      throw new OciError('NAME_UNKNOWN', 'several registries are mirrored: add ?ns=<registry> (containerd does this through hosts.toml)', {
        detail: { registries: [...this.#byRegistry.keys()] },
      });
    }
    return only;
  }
}
