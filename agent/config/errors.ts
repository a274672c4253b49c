/**
 * A configuration problem, located by file and dotted key (`mirror[1].upstream`).
 * The message is `file: key: problem`, or `file: problem` when the whole file is at fault.
 */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly file: string;
  /** Dotted path of the offending key, or '' for whole-file problems. */
  readonly key: string;
  readonly problem: string;

  constructor(file: string, key: string, problem: string, options?: ErrorOptions) {
    super(key === '' ? `${file}: ${problem}` : `${file}: ${key}: ${problem}`, options);
    this.file = file;
    this.key = key;
    this.problem = problem;
  }
}
