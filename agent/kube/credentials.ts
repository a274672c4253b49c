import type { V1Secret } from '@kubernetes/client-node';
import { parseUsername } from '../config/values.ts';
import type { Problem } from './resources.ts';

export interface SecretCredentials {
  readonly username: string;
  readonly password: string;
}

const BASIC_AUTH = 'kubernetes.io/basic-auth';
const DOCKER_CONFIG_JSON = 'kubernetes.io/dockerconfigjson';

/**
 * The upstream credentials in a `credentialsSecretRef` Secret: `kubernetes.io/basic-auth` (username,
 * password) or `kubernetes.io/dockerconfigjson` (the entry for one of `hosts`, tried in order).
 * Problems name the Secret and the key, never a value.
 */
export function credentialsFromSecret(
  secret: V1Secret | undefined,
  ref: { readonly namespace: string; readonly name: string },
  hosts: readonly string[],
): SecretCredentials | Problem {
  const id = `Secret ${ref.namespace}/${ref.name}`;
  if (secret === undefined) return { reason: 'SecretNotFound', message: `${id} not found (credentialsSecretRef must name a Secret in the agent's namespace)` };
  const invalid = (why: string): Problem => ({ reason: 'InvalidSecret', message: `${id}: ${why}` });
  const data = secret.data ?? {};
  const decoded = (key: string): string | undefined => (data[key] === undefined ? undefined : Buffer.from(data[key], 'base64').toString('utf8'));
  let found: SecretCredentials | string;
  switch (secret.type) {
    case BASIC_AUTH: {
      const username = decoded('username');
      const password = decoded('password');
      found = username === undefined || password === undefined ? 'needs both username and password' : { username, password };
      break;
    }
    case DOCKER_CONFIG_JSON: {
      const text = decoded('.dockerconfigjson');
      found = text === undefined ? 'has no .dockerconfigjson' : fromDockerConfig(text, hosts);
      break;
    }
    default:
      return invalid(`type ${JSON.stringify(secret.type ?? 'Opaque')}: expected ${BASIC_AUTH} or ${DOCKER_CONFIG_JSON}`);
  }
  if (typeof found === 'string') return invalid(found);
  try {
    parseUsername(found.username);
  } catch (error) {
    return invalid(`username ${(error as Error).message}`);
  }
  return found;
}

export function isProblem(value: SecretCredentials | Problem): value is Problem {
  return 'reason' in value;
}

/** The entry for the first of `hosts` found in `auths` (keys may carry a scheme or path), or why not. */
function fromDockerConfig(text: string, hosts: readonly string[]): SecretCredentials | string {
  let auths: unknown;
  try {
    auths = (JSON.parse(text) as { auths?: unknown }).auths;
  } catch {
    return '.dockerconfigjson is not JSON';
  }
  if (typeof auths !== 'object' || auths === null) return '.dockerconfigjson has no "auths" object';
  const entries = Object.entries(auths as Record<string, unknown>);
  for (const host of hosts) {
    const entry = entries.find(([key]) => normaliseHost(key) === host.toLowerCase());
    if (entry === undefined) continue;
    const value = entry[1] as { auth?: unknown; username?: unknown; password?: unknown } | null;
    if (typeof value?.username === 'string' && typeof value.password === 'string') return { username: value.username, password: value.password };
    if (typeof value?.auth === 'string') {
      const plain = Buffer.from(value.auth, 'base64').toString('utf8');
      const colon = plain.indexOf(':');
      if (colon > 0) return { username: plain.slice(0, colon), password: plain.slice(colon + 1) };
    }
    return `.dockerconfigjson: the entry for ${entry[0]} has no usable username/password`;
  }
  return `.dockerconfigjson has no entry for ${hosts.join(' or ')}`;
}

function normaliseHost(key: string): string {
  return key.replace(/^https?:\/\//, '').replace(/\/.*$/, '').toLowerCase();
}
