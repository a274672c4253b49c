/**
 * A bounded map of (group, member) → value where one group's growth only displaces its own: past
 * `maxEntries`, the least recently used member of the largest group goes. A group smaller than the
 * largest is never touched, so filling the map takes as many groups as entries, not as many
 * members (max-min fairness over groups).
 *
 * The access memories group by repository: whoever mints credentials or tokens for free can only
 * be accepted for the repositories it may read, so its flood displaces entries of those
 * repositories, never alice's entry for hers. Memory grows with what is held.
 */
export class FairLru<V> {
  /** Group → its members, least recently used first. */
  readonly #groups = new Map<string, Map<string, V>>();
  /** Group size → the groups of that size. */
  readonly #bySize = new Map<number, Set<string>>();
  readonly #maxEntries: number;
  readonly #onEvict: ((group: string, member: string, value: V) => void) | undefined;
  #largest = 0;
  #size = 0;

  constructor(maxEntries: number, onEvict?: (group: string, member: string, value: V) => void) {
    this.#maxEntries = maxEntries;
    this.#onEvict = onEvict;
  }

  get size(): number {
    return this.#size;
  }

  /** The value, now the group's most recently used member; undefined when absent. */
  get(group: string, member: string): V | undefined {
    const members = this.#groups.get(group);
    if (!members) return undefined;
    const value = members.get(member);
    if (value === undefined) return undefined;
    members.delete(member);
    members.set(member, value);
    return value;
  }

  set(group: string, member: string, value: V): void {
    let members = this.#groups.get(group);
    if (!members) {
      members = new Map();
      this.#groups.set(group, members);
    }
    const had = members.delete(member);
    members.set(member, value);
    if (had) return;
    this.#size += 1;
    this.#resized(group, members.size - 1, members.size);
    while (this.#size > this.#maxEntries) this.#evictOne();
  }

  delete(group: string, member: string): boolean {
    const members = this.#groups.get(group);
    if (!members?.delete(member)) return false;
    this.#removed(group, members);
    return true;
  }

  #evictOne(): void {
    const group = this.#bySize.get(this.#largest)?.values().next().value as string;
    const members = this.#groups.get(group) as Map<string, V>;
    const [member, value] = members.entries().next().value as [string, V];
    members.delete(member);
    this.#removed(group, members);
    this.#onEvict?.(group, member, value);
  }

  #removed(group: string, members: Map<string, V>): void {
    this.#size -= 1;
    this.#resized(group, members.size + 1, members.size);
    if (members.size === 0) this.#groups.delete(group);
  }

  #resized(group: string, from: number, to: number): void {
    if (from > 0) {
      const groups = this.#bySize.get(from) as Set<string>;
      groups.delete(group);
      if (groups.size === 0) this.#bySize.delete(from);
    }
    if (to > 0) {
      const groups = this.#bySize.get(to) ?? new Set<string>();
      groups.add(group);
      this.#bySize.set(to, groups);
    }
    if (to > this.#largest) this.#largest = to;
    while (this.#largest > 0 && !this.#bySize.has(this.#largest)) this.#largest -= 1;
  }
}
