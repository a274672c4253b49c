import type { V1Secret } from '@kubernetes/client-node';
import { ConfigError } from '../config/errors.ts';
import { parseMirrorTable } from '../config/load.ts';
import type { Table } from '../config/section.ts';
import type { ConnectivityProxyConfig, MirrorConfig } from '../config/types.ts';
import { credentialsFromSecret, isProblem, type SecretCredentials } from './credentials.ts';
import { nameOf, type Problem, type RegistryMirror } from './resources.ts';

/** RegistryMirror spec field → `[[mirror]]` key. credentialsSecretRef is resolved separately. */
export const SPEC_TO_TOML: Readonly<Record<string, string>> = {
  registry: 'registry',
  upstream: 'upstream',
  route: 'route',
  httpProxy: 'http_proxy',
  locationId: 'location_id',
  auth: 'auth',
  tagTTL: 'tag_ttl',
  maxStale: 'max_stale',
  repositoryPrefix: 'repository_prefix',
  realmMap: 'realm_map',
  allowedDestinations: 'allowed_destinations',
  mode: 'mode',
  preload: 'preload',
  preloadInterval: 'preload_interval',
  maxBytesPerSecond: 'max_bytes_per_second',
  maxFetches: 'max_fetches',
};

const TOML_TO_SPEC: Readonly<Record<string, string>> = Object.fromEntries(Object.entries(SPEC_TO_TOML).map(([spec, key]) => [key, spec]));

/** A RegistryMirror the agent can serve: the validated mirror and what it was built from (for the state file). */
export interface Translated {
  readonly mirror: MirrorConfig;
  /** The spec as `[[mirror]]` keys. */
  readonly table: Table;
  readonly credentials?: SecretCredentials;
}

export interface TranslateOptions {
  readonly connectivityProxy?: ConnectivityProxyConfig;
  /** Where credentialsSecretRef Secrets live: the agent's namespace. */
  readonly namespace: string;
  readonly secret: (name: string) => V1Secret | undefined;
}

/**
 * Runs a RegistryMirror spec through the same validation as a TOML `[[mirror]]` table (the CRD's schema
 * is a first line of defence, not the agent's) and resolves its credentials Secret.
 */
export function translate(rm: RegistryMirror, opts: TranslateOptions): Translated | Problem {
  const spec = rm.spec;
  if (spec === undefined || spec === null || typeof spec !== 'object') return invalidSpec('spec is missing');
  const table: Record<string, unknown> = {};
  for (const [field, value] of Object.entries(spec)) {
    if (field === 'credentialsSecretRef') continue;
    const key = SPEC_TO_TOML[field];
    if (key === undefined) return invalidSpec(`spec.${field}: unknown field`);
    table[key] = field === 'preload' ? preloadTables(value) : value;
  }
  const ref = secretName(spec.credentialsSecretRef);
  if (typeof ref === 'object') return ref;
  // Validate the spec first, with stand-in credentials when it names a Secret: a broken spec is reported
  // as such even when its Secret is missing too.
  const standIn = ref === undefined ? undefined : { username: 'x', password: 'x' };
  let mirror: MirrorConfig;
  try {
    mirror = parse(table, rm, opts.connectivityProxy, standIn);
  } catch (error) {
    if (error instanceof ConfigError) return invalidSpec(specMessage(error));
    throw error;
  }
  if (ref === undefined) return { mirror, table };
  const credentials = credentialsFromSecret(opts.secret(ref), { namespace: opts.namespace, name: ref }, [...new Set([mirror.upstream.host, mirror.registry])]);
  if (isProblem(credentials)) return credentials;
  return { mirror: { ...mirror, inlineCredentials: credentials }, table, credentials };
}

export function isTranslated(value: Translated | Problem): value is Translated {
  return 'mirror' in value;
}

/** Re-validates a table from the state file (the agent's rules may have changed since it was written). */
export function parsePersisted(table: Table, source: string, cp: ConnectivityProxyConfig | undefined, credentials: SecretCredentials | undefined): MirrorConfig {
  return parseMirrorTable(table, source, { ...(cp === undefined ? {} : { connectivityProxy: cp }), ...(credentials === undefined ? {} : { inlineCredentials: credentials }) });
}

function parse(table: Table, rm: RegistryMirror, cp: ConnectivityProxyConfig | undefined, credentials: SecretCredentials | undefined): MirrorConfig {
  return parseMirrorTable(table, `RegistryMirror ${nameOf(rm)}`, {
    path: 'spec',
    ...(cp === undefined ? {} : { connectivityProxy: cp }),
    ...(credentials === undefined ? {} : { inlineCredentials: credentials }),
  });
}

function secretName(ref: unknown): string | undefined | Problem {
  if (ref === undefined || ref === null) return undefined;
  const name = typeof ref === 'object' ? (ref as { name?: unknown }).name : undefined;
  if (typeof name !== 'string' || name === '') return invalidSpec('spec.credentialsSecretRef.name: required');
  return name;
}

/**
 * `spec.preload` items are `{ image, platforms }` objects: the `[[mirror]]` key's table form. Each is
 * copied as it is (keys the loader does not know included, so it names them); anything else is left
 * for the loader to refuse.
 */
function preloadTables(value: unknown): unknown {
  if (!Array.isArray(value)) return value;
  return value.map((item: unknown) => (item !== null && typeof item === 'object' && !Array.isArray(item) ? { ...(item as Record<string, unknown>) } : item));
}

/**
 * `spec.tag_ttl` → `spec.tagTTL`, so the message names the field the user wrote; a preload entry's
 * index moves into the key (`spec.preload[3].platforms[0]: …`, `spec.preload[3]: team/App:1: …`).
 */
function specMessage(error: ConfigError): string {
  const [prefix, field = ''] = error.key.split('.', 2);
  if (prefix !== 'spec') return `${error.key}: ${error.problem}`;
  const key = `spec.${TOML_TO_SPEC[field] ?? field}`;
  const entry = field === 'preload' ? /^(\[\d+\](?:\.[a-z]+(?:\[\d+\])?)?): ([\s\S]*)$/.exec(error.problem) : null;
  return entry === null ? `${key}: ${error.problem}` : `${key}${entry[1]}: ${entry[2]}`;
}

function invalidSpec(message: string): Problem {
  return { reason: 'InvalidSpec', message };
}
