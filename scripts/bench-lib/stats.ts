/** Medians and formatting. */

export function median(values: readonly number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] ?? Number.NaN) : ((sorted[mid - 1] ?? 0) + (sorted[mid] ?? 0)) / 2;
}

export function min(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : Math.min(...values);
}

export function max(values: readonly number[]): number {
  return values.length === 0 ? Number.NaN : Math.max(...values);
}

/** `1234` → `1,234`; keeps `digits` decimals below 100. */
export function num(value: number, digits = 1): string {
  if (!Number.isFinite(value)) return 'n/a';
  const d = Math.abs(value) >= 100 ? 0 : digits;
  return value.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
}

export function ratio(value: number): string {
  return Number.isFinite(value) ? `${value.toFixed(2)}×` : 'n/a';
}

export function seconds(value: number): string {
  if (!Number.isFinite(value)) return 'n/a';
  return value < 1 ? `${(value * 1000).toFixed(0)} ms` : `${value.toFixed(2)} s`;
}

/** Median with the spread, for tables: `1,234 (1,100–1,300)`; a single run shows the value alone. */
export function withSpread(values: readonly number[], fmt: (v: number) => string = (v) => num(v)): string {
  if (values.length <= 1) return fmt(median(values));
  return `${fmt(median(values))} (${fmt(min(values))}–${fmt(max(values))})`;
}

export function sizeLabel(mib: number): string {
  return mib >= 1024 && mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`;
}
