import { isTable } from './section.ts';
import { kindOf } from './kind.ts';

const EXAMPLE = '[mirror.realm_map] "https://auth.corp.example" = "http://auth.virtual:80"';

/**
 * `realm_map`: a table of token realm origin → http:// origin, for route connectivity-proxy. Real
 * registries announce their token realm on the real host name (usually https), which the Connectivity
 * Proxy cannot reach; the admin exposes the token server as a Cloud Connector virtual host and maps
 * the realm's origin to it. Keys and values are origins only: the realm's path and query are kept, so
 * one entry serves every scope and service the registry asks for. Returns normalised origins
 * (lower-case host, default port dropped), which is how realms are matched.
 */
export function parseRealmMap(value: unknown): Readonly<Record<string, string>> {
  if (!isTable(value)) throw new Error(`expected a table of realm origin = virtual-host origin, got ${kindOf(value)}; e.g. ${EXAMPLE}`);
  const map: Record<string, string> = {};
  const written = new Map<string, string>();
  for (const [key, target] of Object.entries(value)) {
    const from = origin(key, `key "${key}"`, ['http:', 'https:']);
    if (typeof target !== 'string') throw new Error(`"${key}": expected a string (an http:// origin), got ${kindOf(target)}`);
    const to = origin(target, `"${key}" = "${target}"`, ['http:']);
    const earlier = written.get(from);
    if (earlier !== undefined) throw new Error(`key "${key}" names the same origin as "${earlier}" (${from})`);
    written.set(from, key);
    map[from] = to;
  }
  return map;
}

/** `text` as a normalised origin, or an Error naming `what` and the form expected. */
function origin(text: string, what: string, schemes: readonly string[]): string {
  const expected = schemes.length === 1 ? 'an http:// origin (http://host[:port])' : 'an origin (https://host[:port] or http://host[:port])';
  // "host:port" parses as a URL with scheme "host:"; without "://" it is no origin however it parses.
  if (!URL.canParse(text) || !/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) throw new Error(`${what}: expected ${expected}; e.g. ${EXAMPLE}`);
  const url = new URL(text);
  if (!schemes.includes(url.protocol)) {
    const why = schemes.length === 1 ? ': the Connectivity Proxy only forwards plain http:// to Cloud Connector virtual hosts (the Cloud Connector does TLS to the real token server)' : '';
    throw new Error(`${what}: scheme must be ${schemes.map((s) => s.replace(':', '')).join(' or ')}${why}`);
  }
  if (url.username !== '' || url.password !== '') throw new Error(`${what}: must not contain userinfo`);
  if (url.pathname !== '/' || /[?#]/.test(text)) {
    throw new Error(`${what}: must be an origin without path, query or fragment (the realm's path and query are kept); e.g. ${EXAMPLE}`);
  }
  return url.origin;
}
