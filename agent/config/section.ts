import { ConfigError } from './errors.ts';
import { kindOf } from './kind.ts';
import { closestKey } from './suggest.ts';

export type Table = Readonly<Record<string, unknown>>;

export function isTable(value: unknown): value is Table {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

/**
 * One TOML table being read: it knows its file and dotted path, rejects unknown keys up front,
 * and turns a validator's plain Error into a ConfigError naming the key.
 */
export class Section {
  readonly #file: string;
  readonly #path: string;
  readonly #table: Table;

  constructor(file: string, path: string, table: Table, known: readonly string[]) {
    this.#file = file;
    this.#path = path;
    this.#table = table;
    this.#rejectUnknown(known);
  }

  /** The value of `name` run through `parse`; `fallback` (a raw TOML value) is parsed the same way when absent. */
  read<T>(name: string, parse: (value: unknown) => T, fallback: unknown): T {
    return this.#parse(name, parse, this.#has(name) ? this.#table[name] : fallback);
  }

  optional<T>(name: string, parse: (value: unknown) => T): T | undefined {
    return this.#has(name) ? this.#parse(name, parse, this.#table[name]) : undefined;
  }

  required<T>(name: string, parse: (value: unknown) => T): T {
    if (!this.#has(name)) this.fail(name, 'required key is missing');
    return this.#parse(name, parse, this.#table[name]);
  }

  /** The array of tables `[[name]]` as child sections `name[i]`, each with its own known keys. */
  tables(name: string, known: readonly string[]): Section[] {
    const value = this.#has(name) ? this.#table[name] : [];
    if (!Array.isArray(value)) this.fail(name, `expected an array of tables ([[${name}]]), got ${kindOf(value)}`);
    return value.map((item: unknown, i) => {
      const key = `${name}[${i}]`;
      if (!isTable(item)) this.fail(key, `expected a table, got ${kindOf(item)}`);
      return new Section(this.#file, this.key(key), item, known);
    });
  }

  /** The table `[name]` as a child section with its own known keys, or undefined when absent. */
  table(name: string, known: readonly string[]): Section | undefined {
    if (!this.#has(name)) return undefined;
    const value = this.#table[name];
    if (!isTable(value)) this.fail(name, `expected a table ([${name}]), got ${kindOf(value)}`);
    return new Section(this.#file, this.key(name), value, known);
  }

  key(name: string): string {
    return this.#path === '' ? name : `${this.#path}.${name}`;
  }

  fail(name: string, problem: string, options?: ErrorOptions): never {
    throw new ConfigError(this.#file, this.key(name), problem, options);
  }

  #has(name: string): boolean {
    return Object.hasOwn(this.#table, name);
  }

  #parse<T>(name: string, parse: (value: unknown) => T, value: unknown): T {
    try {
      return parse(value);
    } catch (error) {
      if (!(error instanceof Error)) throw error;
      return this.fail(name, error.message, { cause: error });
    }
  }

  #rejectUnknown(known: readonly string[]): void {
    for (const name of Object.keys(this.#table)) {
      if (known.includes(name)) continue;
      const suggestion = closestKey(name, known);
      this.fail(name, suggestion === undefined ? 'unknown key' : `unknown key (did you mean ${suggestion}?)`);
    }
  }
}
