/**
 * Query parameters whose values are logged as sent: the mirror's own (`ns`), token scopes and
 * services, and tag-list paging. Every other value is blanked: token requests carry `account`,
 * OAuth2 clients may put `password`, `refresh_token` or `access_token` in the query, and a value
 * the agent does not know is not worth the risk.
 */
const LOGGED_QUERY_KEYS = new Set(['ns', 'scope', 'service', 'n', 'last']);

/** A request target (origin-form path and query) as it may appear in a log line. */
export function redactedTarget(target: string): string {
  const mark = target.indexOf('?');
  if (mark === -1) return target;
  const query = target.slice(mark + 1);
  if (query === '') return target;
  const kept = query.split('&').map((pair) => {
    const equals = pair.indexOf('=');
    if (equals === -1) return pair;
    const key = pair.slice(0, equals);
    return LOGGED_QUERY_KEYS.has(safeDecode(key).toLowerCase()) ? pair : `${key}=[redacted]`;
  });
  return `${target.slice(0, mark)}?${kept.join('&')}`;
}

function safeDecode(text: string): string {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '));
  } catch {
    return text;
  }
}
