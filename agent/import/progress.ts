/** Where the import reports: a redrawn progress line on a terminal, plain lines otherwise (logs, CI, pipes). */

export interface Output {
  write(text: string): unknown;
  readonly isTTY?: boolean;
}

const REDRAW_MS = 100;

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

export function shortDigest(digest: string): string {
  return digest.slice(0, 'sha256:'.length + 12);
}

/**
 * Progress of one import run, on stderr. On a TTY one line per image is redrawn in place (bytes
 * done / total); elsewhere each verified piece gets a line. Results (`imported …`) and the summary
 * go to `out`; errors to stderr, on a line of their own.
 */
export class Progress {
  readonly #out: Output;
  readonly #err: Output;
  readonly #tty: boolean;
  #image = '';
  #done = 0;
  #total = 0;
  #drawnAt = 0;
  #lineOpen = false;

  constructor(out: Output, err: Output) {
    this.#out = out;
    this.#err = err;
    this.#tty = err.isTTY === true;
  }

  startImage(name: string, totalBytes: number, pieces: number): void {
    this.#image = name;
    this.#done = 0;
    this.#total = totalBytes;
    this.#drawnAt = 0;
    if (this.#tty) this.#draw(true);
    else this.#err.write(`importing ${name}: ${pieces} pieces, ${formatBytes(totalBytes)} to verify\n`);
  }

  advance(bytes: number): void {
    this.#done += bytes;
    if (this.#tty) this.#draw(false);
  }

  /** A piece was verified: copied into staging, or already in the cache (only read and hashed). */
  verified(what: string, digest: string, size: number, state: 'copied' | 'already cached'): void {
    if (!this.#tty) this.#err.write(`  ${what} ${shortDigest(digest)} ${formatBytes(size)} verified (${state})\n`);
  }

  /** A result line (stdout). */
  result(line: string): void {
    this.#clear();
    this.#out.write(`${line}\n`);
  }

  /** An informational line on stderr. */
  note(line: string): void {
    this.#clear();
    this.#err.write(`${line}\n`);
  }

  error(line: string): void {
    this.#clear();
    this.#err.write(`registry-proxy-agent import: ${line}\n`);
  }

  #draw(force: boolean): void {
    const now = Date.now();
    if (!force && now - this.#drawnAt < REDRAW_MS && this.#done < this.#total) return;
    this.#drawnAt = now;
    const percent = this.#total === 0 ? 100 : Math.floor((this.#done / this.#total) * 100);
    this.#err.write(`\r\x1b[2Kimporting ${this.#image}: ${formatBytes(this.#done)} / ${formatBytes(this.#total)} (${percent}%)`);
    this.#lineOpen = true;
  }

  #clear(): void {
    if (!this.#lineOpen) return;
    this.#err.write('\r\x1b[2K');
    this.#lineOpen = false;
  }
}
