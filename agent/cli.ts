/** Parsed command line. `npm start -- [start|cleanup] [--config FILE]`. */
export interface CommandLine {
  readonly command: 'start' | 'cleanup' | 'help';
  readonly configFile: string | undefined;
}

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export const USAGE = `usage: registry-proxy-agent [start|cleanup] [--config FILE]

  start     run the mirror (default). Without --config, an embedded default mirrors docker.io
            on 127.0.0.1:5050 with cache and hosts dir under ./.agent-data
  cleanup   restore every hosts.toml the agent changed and remove the ones it created, then exit
  --config  TOML configuration file (see README)
`;

export function parseCommandLine(argv: readonly string[]): CommandLine {
  let command: CommandLine['command'] = 'start';
  let configFile: string | undefined;
  let sawCommand = false;
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i] ?? '';
    if (arg === '--help' || arg === '-h') return { command: 'help', configFile };
    if (arg === '--config' || arg === '-c') {
      const value = argv[i + 1];
      if (value === undefined || value.startsWith('-')) throw new UsageError(`${arg} needs a file`);
      configFile = value;
      i += 1;
    } else if (arg.startsWith('--config=')) {
      configFile = arg.slice('--config='.length);
      if (configFile === '') throw new UsageError('--config needs a file');
    } else if (!sawCommand && (arg === 'start' || arg === 'cleanup')) {
      command = arg;
      sawCommand = true;
    } else {
      throw new UsageError(`unknown argument: ${arg}`);
    }
  }
  return { command, configFile };
}
