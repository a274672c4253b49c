import type { Mirror } from '../mirror/mirror.ts';

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

  registries(): string[] {
    return [...this.#byRegistry.keys()];
  }

  list(): Mirror[] {
    return [...this.#byRegistry.values()];
  }

  /** Never falls back to anything that is not configured: that would make the agent an open proxy. */
  select(ns: string | undefined): Mirror {
    if (ns !== undefined) {
      const mirror = this.#byRegistry.get(ns);
      if (!mirror) throw new RegistryNotMirroredError(`registry ${ns} is not mirrored by this agent`, ns, this.registries());
      return mirror;
    }
    const only = this.#byRegistry.size === 1 ? this.#byRegistry.values().next().value : undefined;
    if (!only) {
      throw new RegistryNotMirroredError('several registries are mirrored: add ?ns=<registry> (containerd does this through hosts.toml)', undefined, this.registries());
    }
    return only;
  }
}

/** A request for a registry this agent does not mirror (`ns`), or without `ns` where several are mirrored. */
export class RegistryNotMirroredError extends Error {
  override readonly name = 'RegistryNotMirroredError';
  readonly ns: string | undefined;
  readonly registries: readonly string[];

  constructor(message: string, ns: string | undefined, registries: readonly string[]) {
    super(message);
    this.ns = ns;
    this.registries = registries;
  }
}
