import { parseChallenge } from '../upstream/challenge.ts';
import type { RealmRegistry } from './realms.ts';

export interface RewriteContext {
  /** The agent's own base URL as the puller reaches it, e.g. http://127.0.0.1:5050 */
  readonly agentBase: string;
  readonly registry: string;
  readonly realms: RealmRegistry;
  readonly repositoryPrefix: string;
  /** Resolves a relative realm. */
  readonly upstreamBase: URL;
}

/** Path of the agent's token endpoint for one mirror and learned realm. */
export function tokenPath(registry: string, realmId: string): string {
  return `/_token/${encodeURIComponent(registry)}/${realmId}`;
}

/**
 * Rewrites an upstream challenge for the puller: a Bearer realm becomes the agent's token
 * endpoint (the realm is remembered as allowed for this mirror) and repository scopes lose the
 * mirror's repository_prefix, so the puller asks for the names it knows. Basic passes unchanged.
 */
export function rewriteChallenge(header: string, context: RewriteContext): string {
  const challenge = parseChallenge(header);
  if (!challenge || challenge.scheme !== 'bearer') return header;
  const realm = challenge.params['realm'];
  if (!realm) return header;
  let realmUrl: URL;
  try {
    realmUrl = new URL(realm, context.upstreamBase);
  } catch {
    return header;
  }
  if (realmUrl.protocol !== 'http:' && realmUrl.protocol !== 'https:') return header;
  const id = context.realms.learn(realmUrl, challenge.params['service']);
  const params: Record<string, string> = { ...challenge.params, realm: `${context.agentBase}${tokenPath(context.registry, id)}` };
  if (params['scope'] !== undefined) params['scope'] = mapScopes(params['scope'], (name) => stripPrefix(name, context.repositoryPrefix));
  return formatBearer(params);
}

/**
 * A remembered upstream Bearer challenge made a plain request to authenticate for pulling
 * `repository` (an upstream name). Upstream's last challenge may have named another repository (a
 * puller answering it would ask for a token for that one too, which the agent cannot vouch for while
 * upstream is away), or carried another puller's `error="insufficient_scope"` (which pullers take as
 * final). Other challenges (Basic) come back unchanged.
 */
export function challengeForRepository(header: string, repository: string): string {
  const challenge = parseChallenge(header);
  if (!challenge || challenge.scheme !== 'bearer' || challenge.params['realm'] === undefined) return header;
  const params = Object.fromEntries(Object.entries(challenge.params).filter(([key]) => key !== 'error' && key !== 'error_description'));
  return formatBearer({ ...params, scope: `repository:${repository}:pull` });
}

function formatBearer(params: Readonly<Record<string, string>>): string {
  return `Bearer ${Object.entries(params)
    .map(([key, value]) => `${key}="${value.replace(/["\\]/g, '\\$&')}"`)
    .join(',')}`;
}

/** Applies `map` to the repository name of every `repository:<name>:<actions>` scope in a space-separated list. */
export function mapScopes(scopes: string, map: (name: string, actions: readonly string[], resourceClass: string | undefined) => string): string {
  return scopes
    .split(' ')
    .map((scope) => {
      const match = /^repository(\([^)]*\))?:(.+):([^:]*)$/.exec(scope);
      if (!match) return scope;
      return `repository${match[1] ?? ''}:${map(match[2] ?? '', (match[3] ?? '').split(','), match[1])}:${match[3] ?? ''}`;
    })
    .join(' ');
}

export function addPrefix(name: string, prefix: string): string {
  return prefix === '' ? name : `${prefix}/${name}`;
}

function stripPrefix(name: string, prefix: string): string {
  return prefix !== '' && name.startsWith(`${prefix}/`) ? name.slice(prefix.length + 1) : name;
}
