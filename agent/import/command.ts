import { ConfigError } from '../config/errors.ts';
import { parsePlatform } from '../config/preload.ts';
import type { Platform } from '../config/types.ts';
import { ImportError } from './errors.ts';
import { type ImageName, parseImageName } from './names.ts';
import type { Output } from './progress.ts';

export const IMPORT_USAGE = `usage: registry-proxy-agent import --config FILE [--name REGISTRY/REPOSITORY[:TAG]] [--platform OS/ARCH[/VARIANT]]... SOURCE

  import    load images into the cache for isolated sites, verified, all or nothing per image.
            SOURCE: an OCI image layout directory (skopeo copy … oci:DIR:TAG), an oci-archive or a
            docker-archive tar (docker save, skopeo copy … docker-archive:FILE:REF).
  --name    where the image is served: a configured mirror's registry, the repository and a tag;
            without a tag, tags come from the source (ref.name, RepoTags). Default: the source's names
  --platform  for an image index: import only these platforms (repeatable); without it every
            platform's manifest must be in SOURCE
`;

export interface ImportCommandLine {
  readonly configFile: string;
  readonly source: string;
  readonly name?: ImageName;
  readonly platforms: readonly Platform[];
}

export class ImportUsageError extends Error {
  override readonly name = 'ImportUsageError';
}

/** Whether argv is the `import` command: its first word that is not `--config FILE`. */
export function isImportCommand(argv: readonly string[]): boolean {
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i] ?? '';
    if (arg === '--config' || arg === '-c') i += 1;
    else if (!arg.startsWith('--config=')) return arg === 'import';
  }
  return false;
}

/** `import [--config FILE] [--name REF] [--platform P]... SOURCE`, options before or after SOURCE; undefined for --help. */
export function parseImportCommandLine(argv: readonly string[]): ImportCommandLine | undefined {
  let configFile: string | undefined;
  let name: string | undefined;
  const platforms: Platform[] = [];
  const sources: string[] = [];
  let sawCommand = false;
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i] ?? '';
    const [flag, inline] = arg.startsWith('--') && arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined];
    const value = (): string => {
      if (inline !== undefined) {
        if (inline === '') throw new ImportUsageError(`${flag} needs a value`);
        return inline;
      }
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('-')) throw new ImportUsageError(`${flag} needs a value`);
      i += 1;
      return next;
    };
    if (flag === '--help' || flag === '-h') return undefined;
    else if (flag === '--config' || flag === '-c') configFile = value();
    else if (flag === '--name') {
      if (name !== undefined) throw new ImportUsageError('--name given twice');
      name = value();
    } else if (flag === '--platform') {
      const text = value();
      try {
        platforms.push(parsePlatform(text, '--platform'));
      } catch (error) {
        throw new ImportUsageError((error as Error).message);
      }
    } else if (!sawCommand && arg === 'import') sawCommand = true;
    else if (arg.startsWith('-') && arg !== '-') throw new ImportUsageError(`unknown option: ${arg}`);
    else sources.push(arg);
  }
  if (configFile === undefined) throw new ImportUsageError('import needs --config FILE (the agent\'s configuration: its cache_dir and [[mirror]] registries)');
  if (sources.length !== 1) throw new ImportUsageError(sources.length === 0 ? 'import needs a SOURCE' : `import takes one SOURCE, got ${sources.length}: ${sources.join(' ')}`);
  let parsedName: ImageName | undefined;
  if (name !== undefined) {
    try {
      parsedName = parseImageName(name, { familiar: false, what: '--name' });
    } catch (error) {
      throw new ImportUsageError((error as Error).message);
    }
    if (!parsedName) throw new ImportUsageError(`--name ${JSON.stringify(name)} names no registry: give REGISTRY/REPOSITORY[:TAG], e.g. registry.corp.example:5000/team/app:1.2`);
  }
  return { configFile, source: sources[0] as string, ...(parsedName ? { name: parsedName } : {}), platforms };
}

export interface ImportIo {
  readonly out: Output;
  readonly err: Output;
}

/**
 * Runs the command: 0 when every image was imported, 1 when any was refused (or the source as a
 * whole), 2 for usage and configuration errors, 130 when interrupted. The caller exits with it.
 */
export async function importCommand(argv: readonly string[], io: ImportIo = { out: process.stdout, err: process.stderr }): Promise<number> {
  let commandLine: ImportCommandLine | undefined;
  try {
    commandLine = parseImportCommandLine(argv);
  } catch (error) {
    if (!(error instanceof ImportUsageError)) throw error;
    io.err.write(`registry-proxy-agent import: ${error.message}\n${IMPORT_USAGE}`);
    return 2;
  }
  if (!commandLine) {
    io.out.write(IMPORT_USAGE);
    return 0;
  }
  const { loadConfig } = await import('../config/load.ts');
  let config;
  try {
    config = await loadConfig(commandLine.configFile);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    io.err.write(`registry-proxy-agent import: ${error.message}\n`);
    return 2;
  }
  if (commandLine.name) {
    const { checkRegistry } = await import('./names.ts');
    const { registry, repository, tag } = commandLine.name;
    try {
      checkRegistry(registry, `--name ${registry}/${repository}${tag === undefined ? '' : `:${tag}`}`, { names: config.mirrors.map((m) => m.registry), source: config.source });
    } catch (error) {
      io.err.write(`registry-proxy-agent import: ${(error as Error).message}\n`);
      return 1;
    }
  }
  const controller = new AbortController();
  const interrupt = (signal: NodeJS.Signals): void => {
    // A second signal: leave now (the staging directory is removed on exit all the same).
    if (controller.signal.aborted) process.exit(130);
    io.err.write(`\nregistry-proxy-agent import: ${signal}: stopping; the staging directory is removed, nothing more is written\n`);
    controller.abort();
  };
  process.on('SIGINT', interrupt);
  process.on('SIGTERM', interrupt);
  try {
    const { runImport } = await import('./importer.ts');
    const summary = await runImport({
      source: commandLine.source,
      ...(commandLine.name ? { name: commandLine.name } : {}),
      platforms: commandLine.platforms,
      config,
      out: io.out,
      err: io.err,
      signal: controller.signal,
    });
    if (summary.aborted) return 130;
    return summary.failed > 0 ? 1 : 0;
  } catch (error) {
    // Refusals, and the file system's own errors (EACCES on the cache dir, ENOSPC, …), as one line each.
    if (!(error instanceof ImportError) && (error as NodeJS.ErrnoException | undefined)?.code === undefined) throw error;
    io.err.write(`registry-proxy-agent import: ${(error as Error).message}\n`);
    return 1;
  } finally {
    process.off('SIGINT', interrupt);
    process.off('SIGTERM', interrupt);
  }
}
