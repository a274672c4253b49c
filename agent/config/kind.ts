/** The TOML type name of a parsed value, for "expected a string, got integer" messages. */
export function kindOf(value: unknown): string {
  if (typeof value === 'number' || typeof value === 'bigint') {
    return Number.isInteger(Number(value)) ? 'integer' : 'float';
  }
  if (value instanceof Date) return 'datetime';
  if (Array.isArray(value)) return 'array';
  if (value === null) return 'null';
  if (typeof value === 'object') return 'table';
  return typeof value;
}
