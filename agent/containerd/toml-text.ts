/**
 * Reading and writing TOML values losslessly for the shapes the `toml` package returns.
 *
 * Parsing goes through `parseTomlLossless`, which keeps integers as `bigint` (so `1` and `1.0` stay apart)
 * and date/time values as their literal text (`TomlDateTime`), so that writing them back reproduces the
 * same TOML types. The writer never guesses: a JS `number` is always written as a TOML float.
 */
import toml from 'toml';

/** A TOML date/time value kept as its literal text, so it is written back with the same type and digits. */
export class TomlDateTime {
  readonly kind: 'offset-date-time' | 'local-date-time' | 'local-date' | 'local-time';
  readonly text: string;

  constructor(kind: TomlDateTime['kind'], text: string) {
    if (!DATE_TIME_TEXT.test(text)) throw new TomlTextError(`not a TOML date/time: ${JSON.stringify(text)}`);
    this.kind = kind;
    this.text = text;
  }
}

/** Raised for values that have no TOML text (functions, null, lone surrogates, …) and for parse errors. */
export class TomlTextError extends Error {
  override readonly name = 'TomlTextError';
  /** 1-based position of a parse error, when the parser reported one. */
  readonly line: number | undefined;
  readonly column: number | undefined;

  constructor(message: string, options?: { cause?: unknown; line?: number; column?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.line = options?.line;
    this.column = options?.column;
  }
}

export type TomlTable = Record<string, unknown>;

const DATE_TIME_TEXT = /^[0-9][0-9:.+\-TtZz ]*$/;

// The parser hands date/time literals to a Temporal-like factory; this one keeps the literal text instead.
// Zoned values arrive as `<date>T<time><offset>[<zone>]`; the bracketed zone is the parser's addition.
const LITERAL_DATE_TIMES = {
  ZonedDateTime: { from: (s: string) => new TomlDateTime('offset-date-time', s.replace(/\[[^\]]*\]$/, '')) },
  PlainDateTime: { from: (s: string) => new TomlDateTime('local-date-time', s) },
  PlainDate: { from: (s: string) => new TomlDateTime('local-date', s) },
  PlainTime: { from: (s: string) => new TomlDateTime('local-time', s) },
};

/** Parses TOML text into plain objects (own properties only, file order kept for non-integer keys). */
export function parseTomlLossless(text: string): TomlTable {
  let parsed: unknown;
  try {
    parsed = toml.parse(text, { bigint: true, useTemporal: true, temporal: LITERAL_DATE_TIMES });
  } catch (err) {
    const { line, column } = positionOf(err);
    const where = line === undefined ? '' : ` at line ${line}, column ${column ?? '?'}`;
    throw new TomlTextError(`invalid TOML${where}: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
      ...(line === undefined ? {} : { line }),
      ...(column === undefined ? {} : { column }),
    });
  }
  return toPlain(parsed) as TomlTable;
}

// Semantic errors carry `line`/`column`; syntax errors (from the generated parser) carry `location.start`.
function positionOf(err: unknown): { line?: number; column?: number } {
  if (typeof err !== 'object' || err === null) return {};
  const start = 'location' in err && isRecord(err.location) && isRecord(err.location['start']) ? err.location['start'] : err;
  const line = 'line' in start && typeof start.line === 'number' ? start.line : undefined;
  const column = 'column' in start && typeof start.column === 'number' ? start.column : undefined;
  return { ...(line === undefined ? {} : { line }), ...(column === undefined ? {} : { column }) };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null;
}

// The parser builds prototype-less objects; plain ones compare and spread like any other model value.
// `Object.fromEntries` defines keys such as `__proto__` as own data properties, never as the prototype.
function toPlain(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(toPlain);
  if (isTomlTable(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toPlain(v)]));
  return value;
}

/** A TOML table: any object that is not an array, a date or a date/time literal. */
export function isTomlTable(value: unknown): value is TomlTable {
  return (
    typeof value === 'object' &&
    value !== null &&
    !Array.isArray(value) &&
    !(value instanceof Date) &&
    !(value instanceof TomlDateTime)
  );
}

function isTableArray(value: unknown): value is TomlTable[] {
  return Array.isArray(value) && value.length > 0 && value.every(isTomlTable);
}

const NEEDS_ESCAPE = /["\\\u0000-\u001f\u007f]/g;

/** A TOML basic string: quote and backslash escaped, every control character as `\uXXXX`. */
export function basicString(s: string): string {
  if (!s.isWellFormed()) throw new TomlTextError(`string ${JSON.stringify(s)} has a lone surrogate; TOML cannot hold it`);
  const escaped = s.replace(NEEDS_ESCAPE, (ch) => {
    if (ch === '"' || ch === '\\') return `\\${ch}`;
    return `\\u${ch.charCodeAt(0).toString(16).toUpperCase().padStart(4, '0')}`;
  });
  return `"${escaped}"`;
}

const BARE_KEY = /^[A-Za-z0-9_-]+$/;

export function tomlKey(key: string): string {
  return BARE_KEY.test(key) ? key : basicString(key);
}

export function tomlPath(path: readonly string[]): string {
  return path.map(tomlKey).join('.');
}

/** A value written after `key = `: scalars, arrays (tables inside become inline tables), inline tables. */
export function inlineValue(value: unknown): string {
  switch (typeof value) {
    case 'string':
      return basicString(value);
    case 'boolean':
      return value ? 'true' : 'false';
    case 'bigint':
      return value.toString();
    case 'number':
      return floatText(value);
    default:
      break;
  }
  if (value instanceof TomlDateTime) return value.text;
  if (value instanceof Date) {
    if (Number.isNaN(value.getTime())) throw new TomlTextError('invalid Date has no TOML text');
    return value.toISOString();
  }
  if (Array.isArray(value)) return value.length === 0 ? '[]' : `[${value.map(inlineValue).join(', ')}]`;
  if (isTomlTable(value)) {
    const entries = Object.entries(value);
    if (entries.length === 0) return '{}';
    return `{ ${entries.map(([k, v]) => `${tomlKey(k)} = ${inlineValue(v)}`).join(', ')} }`;
  }
  throw new TomlTextError(`a ${value === null ? 'null' : typeof value} value has no TOML text`);
}

function floatText(n: number): string {
  if (Number.isNaN(n)) return 'nan';
  if (n === Infinity) return 'inf';
  if (n === -Infinity) return '-inf';
  if (Object.is(n, -0)) return '-0.0';
  const s = String(n);
  return /[.e]/.test(s) ? s : `${s}.0`;
}

/** Whether `value` is written as its own `[table]` / `[[array]]` section rather than after `key = `. */
export function isSectionValue(value: unknown): boolean {
  return isTomlTable(value) || isTableArray(value);
}

/** `key = value` lines for the entries that are not sections. */
export function keyValueLines(entries: ReadonlyArray<readonly [string, unknown]>, indent: string): string[] {
  return entries.filter(([, v]) => !isSectionValue(v)).map(([k, v]) => `${indent}${tomlKey(k)} = ${inlineValue(v)}`);
}

/**
 * Section lines for the entries that are tables or arrays of tables, under `parent`.
 * `depth` sets the indentation: headers at 2×depth spaces, their keys 2 spaces deeper.
 */
export function sectionLines(
  parent: readonly string[],
  entries: ReadonlyArray<readonly [string, unknown]>,
  depth: number,
): string[] {
  const lines: string[] = [];
  for (const [key, value] of entries) {
    const path = [...parent, key];
    if (isTomlTable(value)) {
      lines.push(...tableLines(`[${tomlPath(path)}]`, path, value, depth));
    } else if (isTableArray(value)) {
      for (const element of value) lines.push(...tableLines(`[[${tomlPath(path)}]]`, path, element, depth));
    }
  }
  return lines;
}

/** One section: its header, its `key = value` lines, then its own sub-sections. */
export function tableLines(header: string, path: readonly string[], table: TomlTable, depth: number): string[] {
  const entries = Object.entries(table);
  const pad = '  '.repeat(depth);
  return [`${pad}${header}`, ...keyValueLines(entries, `${pad}  `), ...sectionLines(path, entries, depth + 1)];
}
