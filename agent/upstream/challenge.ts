/** A parsed `WWW-Authenticate` challenge (RFC 7235 auth-params). */
export interface Challenge {
  readonly scheme: string;
  readonly params: Readonly<Record<string, string>>;
}

/** Parses the first challenge of a WWW-Authenticate header; undefined when absent or unparseable. */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined;
  const match = /^\s*([A-Za-z][A-Za-z0-9._~+/-]*)\s*(.*)$/.exec(header);
  if (!match) return undefined;
  const scheme = (match[1] ?? '').toLowerCase();
  const params: Record<string, string> = {};
  const param = /([A-Za-z][A-Za-z0-9._-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?\s*/gy;
  const rest = match[2] ?? '';
  param.lastIndex = 0;
  let found: RegExpExecArray | null;
  while ((found = param.exec(rest)) !== null) {
    const key = (found[1] ?? '').toLowerCase();
    params[key] = found[2] !== undefined ? found[2].replace(/\\(.)/g, '$1') : (found[3] ?? '');
    if (param.lastIndex >= rest.length) break;
  }
  return { scheme, params };
}
