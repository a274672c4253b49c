/** Command-line reading shared by the experiment scripts in this folder (not by scripts/bench: see args.ts). */

const argv = process.argv.slice(2);

/** The value given after `name`, if the option is there. */
export function option(name: string): string | undefined {
  const at = argv.indexOf(name);
  return at >= 0 ? argv[at + 1] : undefined;
}

/** Whether the flag `name` is given. */
export function flag(name: string): boolean {
  return argv.includes(name);
}

/** An agent build to measure: its entry point and the Node flags it runs with on top of the agent's own. */
export interface Build {
  readonly name: string;
  readonly main: string;
  readonly nodeArgs: string[];
}

/**
 * The builds to compare, run alternately: `--builds name=path/to/main.js,…`, a build's extra Node
 * flags after its path as `name=path+--flag+--flag`. Default: this checkout's dist.
 */
export function builds(): Build[] {
  const spec = option('--builds') ?? `this=${new URL('../../dist/agent/main.js', import.meta.url).pathname}`;
  return spec.split(',').map((entry) => {
    const [name = '', build = ''] = entry.split(/=(.*)/s);
    const [main = '', ...nodeArgs] = build.split('+');
    return { name, main, nodeArgs };
  });
}
