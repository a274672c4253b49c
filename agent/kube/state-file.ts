import { mkdir, readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { isTable, type Table } from '../config/section.ts';
import { writeFileAtomic } from '../containerd/atomic-file.ts';
import type { SecretCredentials } from './credentials.ts';

/** One RegistryMirror as last served: its spec as `[[mirror]]` keys, and the credentials from its Secret. */
export interface PersistedMirror {
  readonly name: string;
  readonly uid?: string;
  readonly generation: number;
  readonly table: Table;
  readonly credentials?: SecretCredentials;
}

const VERSION = 1;

/**
 * The RegistryMirror-derived mirrors last served, so that an agent restarting while the API server is
 * unreachable serves them again instead of dropping their hosts.toml. The file holds upstream
 * credentials in plain text: it is written with mode 0600 (root only), like the node's other secrets —
 * the kubelet already keeps every pulled Secret on this node, so this adds no new exposure.
 */
export async function writeState(file: string, mirrors: readonly PersistedMirror[]): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, `${JSON.stringify({ version: VERSION, mirrors }, null, 2)}\n`, 0o600);
}

/** The persisted mirrors; [] when there is no file yet. A damaged file throws (the caller logs and starts empty). */
export async function readState(file: string): Promise<PersistedMirror[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  const doc = JSON.parse(text) as { version?: unknown; mirrors?: unknown };
  if (doc.version !== VERSION || !Array.isArray(doc.mirrors)) throw new Error(`${file}: not a version ${VERSION} state file`);
  return doc.mirrors.flatMap((entry: unknown): PersistedMirror[] => {
    if (!isTable(entry) || typeof entry.name !== 'string' || typeof entry.generation !== 'number' || !isTable(entry.table)) return [];
    const credentials = isCredentials(entry.credentials) ? { credentials: entry.credentials } : {};
    const uid = typeof entry.uid === 'string' ? { uid: entry.uid } : {};
    return [{ name: entry.name, generation: entry.generation, table: entry.table, ...uid, ...credentials }];
  });
}

function isCredentials(value: unknown): value is SecretCredentials {
  return isTable(value) && typeof value.username === 'string' && typeof value.password === 'string';
}
