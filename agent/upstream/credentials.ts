import { readFile } from 'node:fs/promises';
import type { MirrorConfig } from '../config/types.ts';
import type { Credentials } from './client.ts';

export class CredentialsError extends Error {
  override readonly name = 'CredentialsError';
}

/** Reads a mirror's upstream credentials (password file or .dockerconfigjson). Contents never reach a message. */
export async function readCredentials(mirror: MirrorConfig): Promise<Credentials | undefined> {
  if (mirror.inlineCredentials) return mirror.inlineCredentials;
  if (mirror.username && mirror.passwordFile) {
    return { username: mirror.username, password: await readSecretFile(mirror.passwordFile) };
  }
  if (mirror.dockerConfigFile) return fromDockerConfig(mirror.dockerConfigFile, [mirror.upstream.host, mirror.registry]);
  return undefined;
}

/** A secret file's content without the trailing newline editors and `kubectl create secret` leave. */
export async function readSecretFile(file: string): Promise<string> {
  return (await readFile(file, 'utf8')).replace(/\r?\n$/, '');
}

async function fromDockerConfig(file: string, hosts: readonly string[]): Promise<Credentials> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(file, 'utf8'));
  } catch (cause) {
    throw new CredentialsError(`${file}: not a readable .dockerconfigjson file`, { cause: (cause as Error).message });
  }
  const auths = (parsed as { auths?: unknown }).auths;
  if (typeof auths !== 'object' || auths === null) throw new CredentialsError(`${file}: no "auths" object`);
  for (const host of hosts) {
    for (const [key, value] of Object.entries(auths as Record<string, unknown>)) {
      if (normaliseHost(key) !== host) continue;
      const entry = value as { auth?: unknown; username?: unknown; password?: unknown };
      if (typeof entry.username === 'string' && typeof entry.password === 'string') return { username: entry.username, password: entry.password };
      if (typeof entry.auth === 'string') {
        const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
        const colon = decoded.indexOf(':');
        if (colon > 0) return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
      }
      throw new CredentialsError(`${file}: the entry for ${key} has no usable username/password`);
    }
  }
  throw new CredentialsError(`${file}: no entry for ${hosts.join(' or ')}`);
}

function normaliseHost(key: string): string {
  return key.replace(/^https?:\/\//, '').replace(/\/.*$/, '').toLowerCase();
}
