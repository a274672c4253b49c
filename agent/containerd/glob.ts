/**
 * Go `filepath.Glob` for absolute patterns, as containerd expands `imports`: `*`, `?` and `[...]` within one
 * path element (dot files included), matches sorted per directory, missing directories simply match nothing.
 */
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';

export class GlobPatternError extends Error {
  override readonly name = 'GlobPatternError';
}

export async function globPaths(pattern: string): Promise<string[]> {
  const elements = path.resolve(pattern).split('/').slice(1);
  let candidates = ['/'];
  for (const element of elements) {
    if (!hasMeta(element)) {
      candidates = candidates.map((dir) => path.join(dir, unescape(element)));
      continue;
    }
    const matcher = elementMatcher(element);
    const next: string[] = [];
    for (const dir of candidates) {
      for (const name of (await listDir(dir)).sort()) {
        if (matcher.test(name)) next.push(path.join(dir, name));
      }
    }
    candidates = next;
  }
  const found: string[] = [];
  for (const candidate of candidates) if (await existsNoFollow(candidate)) found.push(candidate);
  return found;
}

function hasMeta(element: string): boolean {
  return /[*?[\\]/.test(element);
}

function unescape(element: string): string {
  return element.replace(/\\(.)/g, '$1');
}

async function listDir(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch {
    return []; // not a directory, missing or unreadable: Go's Glob ignores these too
  }
}

async function existsNoFollow(file: string): Promise<boolean> {
  try {
    await lstat(file);
    return true;
  } catch {
    return false;
  }
}

/** One path element as an anchored RegExp; throws GlobPatternError where Go returns ErrBadPattern. */
export function elementMatcher(element: string): RegExp {
  let source = '';
  for (let i = 0; i < element.length; i++) {
    const ch = element.charAt(i);
    if (ch === '*') {
      source += '.*';
    } else if (ch === '?') {
      source += '.';
    } else if (ch === '\\') {
      i++;
      if (i >= element.length) throw new GlobPatternError(`pattern element ${JSON.stringify(element)} ends with a backslash`);
      source += literal(element.charAt(i));
    } else if (ch === '[') {
      const end = classEnd(element, i);
      source += characterClass(element.slice(i + 1, end));
      i = end;
    } else {
      source += literal(ch);
    }
  }
  return new RegExp(`^${source}$`, 'su');
}

function classEnd(element: string, open: number): number {
  for (let i = open + 1; i < element.length; i++) {
    const ch = element.charAt(i);
    if (ch === '\\') i++;
    else if (ch === ']' && i > open + 1 + (element.charAt(open + 1) === '^' ? 1 : 0)) return i;
  }
  throw new GlobPatternError(`pattern element ${JSON.stringify(element)} has an unterminated [`);
}

function characterClass(body: string): string {
  const negated = body.startsWith('^');
  let out = '';
  for (let i = negated ? 1 : 0; i < body.length; i++) {
    const ch = body.charAt(i);
    if (ch === '-' && out !== '' && i + 1 < body.length) out += '-';
    else if (ch === '\\') out += literal(body.charAt(++i));
    else out += literal(ch);
  }
  return `[${negated ? '^' : ''}${out}]`;
}

function literal(ch: string): string {
  return `\\u{${(ch.codePointAt(0) ?? 0).toString(16)}}`;
}
