import { ownImageProblem } from '../config/own-image.ts';
import type { V1Secret } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { AgentConfig, MirrorConfig } from '../config/types.ts';
import type { AgentRuntime } from '../runtime.ts';
import { type KubeClient, paths } from './client.ts';
import { type Backoff, ResilientInformer } from './informer.ts';
import { REGISTRY_MIRRORS_PATH, nameOf, type Problem, type RegistryMirror } from './resources.ts';
import { type PersistedMirror, readState, writeState } from './state-file.ts';
import { isTranslated, parsePersisted, translate } from './translate.ts';

/** What this node makes of one RegistryMirror, for its report. */
export interface MirrorState {
  readonly name: string;
  readonly uid?: string;
  readonly generation: number;
  /** The registry served for it; absent when it never had a valid spec. */
  readonly registry?: string;
  /** Why its current spec is not what this node serves (then a previous good version may still be served). */
  readonly problem?: Problem;
}

export interface MirrorSourceOptions {
  /** Changes arriving within this window are applied together (default 200 ms). */
  readonly debounceMs?: number;
  /** How long start() waits for the first list before serving the state file's mirrors (default 5 s). */
  readonly initialSyncTimeoutMs?: number;
  readonly backoff?: Backoff;
}

/** The part of the runtime the source drives. */
export type MirrorTarget = Pick<AgentRuntime, 'setMirrors' | 'probeNow' | 'config'>;

interface Entry extends PersistedMirror {
  readonly mirror: MirrorConfig;
}

interface Computed {
  readonly effective: readonly Entry[];
  readonly states: readonly MirrorState[];
  readonly problems: ReadonlyMap<string, Problem>;
}

/**
 * RegistryMirrors (and the Secrets they reference) as mirrors of the running agent, merged with the
 * configuration file's `[[mirror]]` tables.
 *
 * - Every spec passes the same validation as a `[[mirror]]` table; a spec that fails, or whose Secret
 *   is missing or unusable, is a per-mirror problem and is not applied. The previous good version of
 *   that RegistryMirror, if any, keeps being served.
 * - A registry configured both in the file and by a RegistryMirror is a `Conflict`: the file wins, and
 *   it is logged and reported. Two RegistryMirrors for one registry: the older one wins, the other is a
 *   `Conflict`.
 * - The RegistryMirror-derived mirrors are persisted on every change; until the first successful list
 *   (API server unreachable at start) the persisted set is served, and an unreachable API server never
 *   removes a mirror: the informers keep their last known objects.
 */
export class MirrorSource {
  readonly #config: AgentConfig;
  readonly #namespace: string;
  readonly #stateFile: string;
  readonly #log: Logger;
  readonly #debounceMs: number;
  readonly #initialSyncTimeoutMs: number;
  readonly #mirrors: ResilientInformer<RegistryMirror>;
  readonly #secrets: ResilientInformer<V1Secret>;
  #toml: readonly MirrorConfig[];
  /** Last good translation per RegistryMirror name. */
  readonly #good = new Map<string, Entry>();
  #target: MirrorTarget | undefined;
  #appliedKey = '';
  #persistedKey: string | undefined;
  #states: readonly MirrorState[] = [];
  #logged = new Map<string, string>();
  #debounce: NodeJS.Timeout | undefined;
  #queue: Promise<void> = Promise.resolve();
  readonly #listeners: Array<() => void> = [];
  #stopped = false;

  private constructor(client: KubeClient, config: AgentConfig, log: Logger, options: MirrorSourceOptions, lastGood: readonly Entry[]) {
    const kube = config.kubernetes;
    if (kube === undefined) throw new Error('MirrorSource needs a [kubernetes] configuration');
    this.#config = config;
    this.#namespace = kube.namespace;
    this.#stateFile = kube.stateFile;
    this.#log = log;
    this.#toml = config.mirrors;
    this.#debounceMs = options.debounceMs ?? 200;
    this.#initialSyncTimeoutMs = options.initialSyncTimeoutMs ?? 5_000;
    for (const entry of lastGood) this.#good.set(entry.name, entry);
    const onChange = (): void => this.#schedule();
    const backoff = options.backoff === undefined ? {} : { backoff: options.backoff };
    this.#mirrors = new ResilientInformer<RegistryMirror>({
      client,
      path: REGISTRY_MIRRORS_PATH,
      what: 'registrymirrors',
      log,
      onChange,
      ...backoff,
    });
    this.#secrets = new ResilientInformer<V1Secret>({
      client,
      path: paths.secrets(this.#namespace),
      what: `secrets in ${this.#namespace}`,
      log,
      onChange,
      ...backoff,
    });
  }

  /** Reads the state file: the mirrors last derived from RegistryMirrors, validated again. */
  static async create(client: KubeClient, config: AgentConfig, log: Logger, options: MirrorSourceOptions = {}): Promise<MirrorSource> {
    const file = config.kubernetes?.stateFile ?? '';
    let persisted: PersistedMirror[] = [];
    try {
      persisted = await readState(file);
    } catch (error) {
      log.error({ stateFile: file, err: (error as Error).message }, 'cannot read the last good RegistryMirror configuration: starting without it');
    }
    const entries = persisted.flatMap((p): Entry[] => {
      try {
        return [{ ...p, mirror: parsePersisted(p.table, `${file} (RegistryMirror ${p.name})`, config.connectivityProxy, p.credentials) }];
      } catch (error) {
        log.warn({ stateFile: file, registryMirror: p.name, err: (error as Error).message }, 'persisted RegistryMirror no longer valid: not served');
        return [];
      }
    });
    return new MirrorSource(client, config, log, options, entries);
  }

  /** The file's mirrors plus the persisted RegistryMirror mirrors: what the runtime starts with, so a restart never drops a hosts.toml. */
  initialMirrors(): MirrorConfig[] {
    return merged(this.#toml, this.#compute().effective);
  }

  /** Starts watching; resolves once the first list is applied, or after the initial-sync timeout with the persisted set. */
  async start(target: MirrorTarget): Promise<void> {
    this.#target = target;
    this.#appliedKey = keyOf(target.config.mirrors);
    this.#mirrors.start();
    this.#secrets.start();
    const synced = await Promise.all([this.#mirrors.whenSynced(this.#initialSyncTimeoutMs), this.#secrets.whenSynced(this.#initialSyncTimeoutMs)]);
    if (!synced.every(Boolean)) {
      this.#log.warn(
        { stateFile: this.#stateFile, mirrors: [...this.#good.keys()], waitedMs: this.#initialSyncTimeoutMs },
        'Kubernetes API unreachable: serving the last good RegistryMirror configuration and retrying',
      );
    }
    // The runtime already serves the file's and the persisted mirrors; a refused set must not stop the agent.
    await this.#enqueue().catch((error: unknown) =>
      this.#log.error({ err: (error as Error).message }, 'applying RegistryMirrors failed: keeping the running mirrors; retrying on the next change'),
    );
  }

  /** The configuration file's mirrors changed (SIGHUP): merged and applied now; throws when the runtime refuses them. */
  setTomlMirrors(mirrors: readonly MirrorConfig[]): Promise<void> {
    this.#toml = [...mirrors];
    return this.#enqueue();
  }

  /** Both informers have listed at least once. */
  get synced(): boolean {
    return this.#mirrors.synced && this.#secrets.synced;
  }

  /** Per RegistryMirror, as of the last apply (empty until synced). */
  states(): readonly MirrorState[] {
    return this.#states;
  }

  registryMirrors(): RegistryMirror[] {
    return this.#mirrors.list();
  }

  /** Called after every apply and every upstream probe that follows one. */
  onApplied(listener: () => void): void {
    this.#listeners.push(listener);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#debounce);
    await Promise.all([this.#mirrors.stop(), this.#secrets.stop()]);
    await this.#queue;
  }

  #schedule(): void {
    if (this.#target === undefined || this.#stopped) return;
    clearTimeout(this.#debounce);
    this.#debounce = setTimeout(() => {
      this.#enqueue().catch((error: unknown) =>
        this.#log.error({ err: (error as Error).message }, 'applying RegistryMirrors failed: keeping the running mirrors; retrying on the next change'),
      );
    }, this.#debounceMs);
  }

  /** One apply at a time, in order. */
  #enqueue(): Promise<void> {
    const run = this.#queue.then(() => this.#apply());
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #apply(): Promise<void> {
    const target = this.#target;
    if (target === undefined || this.#stopped) return;
    const computed = this.#compute();
    this.#logProblems(computed.problems);
    const mirrors = merged(this.#toml, computed.effective);
    const key = keyOf(mirrors);
    if (key !== this.#appliedKey) {
      await target.setMirrors(mirrors);
      this.#appliedKey = key;
      // Upstream reachability of new or changed mirrors is part of this node's report.
      void target.probeNow().then(() => this.#notify(), () => undefined);
    }
    if (this.synced) await this.#persist(computed.effective);
    this.#states = computed.states;
    this.#notify();
  }

  #compute(): Computed {
    const problems = new Map<string, Problem>();
    let order: string[];
    let rms: RegistryMirror[] = [];
    if (this.synced) {
      rms = this.#mirrors.list().sort(olderFirst);
      order = rms.map(nameOf);
      for (const rm of rms) this.#translate(rm, problems);
      for (const name of [...this.#good.keys()]) if (!order.includes(name)) this.#good.delete(name);
    } else {
      order = [...this.#good.keys()];
    }
    const fileRegistries = new Set(this.#toml.map((m) => m.registry));
    const owners = new Map<string, string>();
    const effective: Entry[] = [];
    for (const name of order) {
      const entry = this.#good.get(name);
      if (entry === undefined) continue;
      const registry = entry.mirror.registry;
      const owner = owners.get(registry);
      let conflict: string | undefined;
      const own = this.#config.allowOwnRegistryMirror ? undefined : ownImageProblem(registry, this.#config.ownImage);
      if (own !== undefined) {
        if (!problems.has(name)) problems.set(name, { reason: 'OwnImageRegistry', message: own });
        continue;
      }
      if (fileRegistries.has(registry)) conflict = `registry ${registry} is also configured in ${this.#config.source}, which wins`;
      else if (owner !== undefined) conflict = `registry ${registry} is already mirrored by RegistryMirror ${owner} (the older one wins)`;
      if (conflict === undefined) {
        owners.set(registry, name);
        effective.push(entry);
      } else if (!problems.has(name)) {
        problems.set(name, { reason: 'Conflict', message: conflict });
      }
    }
    const states = rms.map((rm): MirrorState => {
      const name = nameOf(rm);
      const registry = this.#good.get(name)?.mirror.registry ?? rawRegistry(rm);
      const problem = problems.get(name);
      return {
        name,
        generation: rm.metadata?.generation ?? 0,
        ...(rm.metadata?.uid === undefined ? {} : { uid: rm.metadata.uid }),
        ...(registry === undefined ? {} : { registry }),
        ...(problem === undefined ? {} : { problem }),
      };
    });
    return { effective, states, problems };
  }

  #translate(rm: RegistryMirror, problems: Map<string, Problem>): void {
    const name = nameOf(rm);
    const uid = rm.metadata?.uid;
    // A RegistryMirror deleted and created again under the same name starts afresh.
    if (this.#good.get(name)?.uid !== uid) this.#good.delete(name);
    const result = translate(rm, {
      namespace: this.#namespace,
      secret: (secret) => this.#secrets.get(secret, this.#namespace),
      ...(this.#config.connectivityProxy === undefined ? {} : { connectivityProxy: this.#config.connectivityProxy }),
    });
    if (!isTranslated(result)) {
      problems.set(name, result);
      return;
    }
    this.#good.set(name, {
      name,
      ...(uid === undefined ? {} : { uid }),
      generation: rm.metadata?.generation ?? 0,
      table: result.table,
      ...(result.credentials === undefined ? {} : { credentials: result.credentials }),
      mirror: result.mirror,
    });
  }

  async #persist(effective: readonly Entry[]): Promise<void> {
    const persisted = effective.map(({ mirror: _mirror, ...rest }): PersistedMirror => rest);
    const key = JSON.stringify(persisted);
    if (key === this.#persistedKey) return;
    try {
      await writeState(this.#stateFile, persisted);
      this.#persistedKey = key;
    } catch (error) {
      this.#log.error({ stateFile: this.#stateFile, err: (error as Error).message }, 'cannot persist the RegistryMirror configuration');
    }
  }

  /** Each problem once when it appears or changes, and once when it is gone. */
  #logProblems(problems: ReadonlyMap<string, Problem>): void {
    const next = new Map<string, string>();
    for (const [name, problem] of problems) {
      const text = `${problem.reason}: ${problem.message}`;
      next.set(name, text);
      if (this.#logged.get(name) === text) continue;
      const kept = this.#good.get(name) !== undefined && problem.reason !== 'Conflict';
      this.#log.warn(
        { registryMirror: name, reason: problem.reason, problem: problem.message, serving: kept ? 'previous good version' : 'nothing' },
        problem.reason === 'Conflict' ? 'RegistryMirror conflicts: not applied' : 'RegistryMirror not applied',
      );
    }
    for (const name of this.#logged.keys()) {
      if (!next.has(name) && this.#good.has(name)) this.#log.info({ registryMirror: name }, 'RegistryMirror problem resolved: applied');
    }
    this.#logged = next;
  }

  #notify(): void {
    for (const listener of this.#listeners) listener();
  }
}

function merged(toml: readonly MirrorConfig[], effective: readonly Entry[]): MirrorConfig[] {
  return [...toml, ...effective.map((e) => e.mirror)];
}

/** Identity of a mirror list, credentials included (compared, never printed). */
function keyOf(mirrors: readonly MirrorConfig[]): string {
  return JSON.stringify(mirrors);
}

function olderFirst(a: RegistryMirror, b: RegistryMirror): number {
  const age = (rm: RegistryMirror): number => new Date(rm.metadata?.creationTimestamp ?? 0).getTime() || 0;
  return age(a) - age(b) || nameOf(a).localeCompare(nameOf(b));
}

function rawRegistry(rm: RegistryMirror): string | undefined {
  const value = rm.spec?.registry;
  return typeof value === 'string' ? value.toLowerCase() : undefined;
}
