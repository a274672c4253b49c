#!/usr/bin/env node
import type { Logger } from 'pino';
import { USAGE, UsageError, parseCommandLine } from './cli.ts';
import { ConfigError } from './config/errors.ts';
import { defaultConfig, loadConfig } from './config/load.ts';
import type { AgentConfig } from './config/types.ts';
import { IMPORT_USAGE, importCommand, isImportCommand } from './import/command.ts';
import type { KubernetesIntegration } from './kube/kubernetes.ts';
import { createLogger } from './log.ts';
import { AgentRuntime } from './runtime.ts';

/** The logger in use, flushed before the process exits: pino writes asynchronously, and the last lines (e.g. "stopped") must not be lost. */
let activeLog: Logger | undefined;

function exit(code: number): void {
  const log = activeLog;
  if (!log) process.exit(code);
  // A flush that never calls back must not keep the process alive.
  setTimeout(() => process.exit(code), 2_000).unref();
  log.flush(() => process.exit(code));
}

async function main(argv: readonly string[]): Promise<number> {
  // `import` has arguments of its own (SOURCE, --name, --platform) and prints what it does, no log.
  if (isImportCommand(argv)) return importCommand(argv);
  const commandLine = parseCommandLine(argv);
  if (commandLine.command === 'help') {
    process.stdout.write(`${USAGE}\n${IMPORT_USAGE}`);
    return 0;
  }
  const config = commandLine.configFile
    ? await loadConfig(commandLine.configFile, { requireMirrors: commandLine.command !== 'cleanup' })
    : defaultConfig(process.cwd());
  const log = createLogger(config.logLevel);
  activeLog = log;
  if (commandLine.command === 'cleanup') return cleanup(config, log);
  return serve(config, log, commandLine.configFile);
}

async function serve(config: AgentConfig, log: Logger, configFile: string | undefined): Promise<number> {
  // Signals are taken from the first moment: a SIGHUP during start-up must not kill the process
  // (its default action), and a SIGTERM during start-up stops the agent once it is up.
  let runtime: AgentRuntime | undefined;
  let kube: KubernetesIntegration | undefined;
  let reloadPending = false;
  if (configFile) {
    process.on('SIGHUP', () => {
      if (runtime) void reload(runtime, kube, configFile, log);
      else reloadPending = true;
    });
  }
  const stopSignal = new Promise<string>((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
  // With [kubernetes] enabled the runtime starts with the persisted RegistryMirror mirrors too, so a
  // restart never drops their hosts.toml; the live RegistryMirrors replace them once listed.
  kube = config.kubernetes?.enabled ? await (await import('./kube/kubernetes.ts')).KubernetesIntegration.prepare(config, log) : undefined;
  runtime = await AgentRuntime.start(kube?.startConfig ?? config, log, kube?.peerIdentity ? { peerIdentity: kube.peerIdentity } : {});
  await kube?.start(runtime);
  explain(runtime, log);
  if (reloadPending && configFile) void reload(runtime, kube, configFile, log);
  const signal = await stopSignal;
  // hosts.toml entries stay: a restarting agent must not send pulls to the unreachable original registry.
  log.info({ signal }, 'stopping: finishing in-flight responses; hosts.toml entries are kept');
  await kube?.stop().catch(() => undefined);
  await runtime.stop().catch(() => undefined);
  log.info('stopped');
  return 0;
}

/**
 * SIGHUP: re-reads the file and applies its mirrors live; other keys need a restart. A bad file
 * changes nothing. Each reload counts once in config_reloads_total: a file that does not load is
 * counted here, everything after that by setMirrors itself (ok or error), which is also the path
 * of the Kubernetes reconfigurations.
 */
async function reload(runtime: AgentRuntime, kube: KubernetesIntegration | undefined, file: string, log: Logger): Promise<void> {
  const failed = (error: unknown): void =>
    log.error({ err: error instanceof Error ? error.message : String(error) }, 'configuration reload failed: keeping the running configuration');
  let next: AgentConfig;
  try {
    next = await loadConfig(file);
  } catch (error) {
    runtime.metrics.configReloads.inc({ result: 'error' });
    failed(error);
    return;
  }
  try {
    // The file's mirrors are merged with the RegistryMirrors, never applied alone.
    if (kube) await kube.setTomlMirrors(next.mirrors);
    else await runtime.setMirrors(next.mirrors);
    await runtime.reloadPeers(next.peers);
    // Images imported while the agent ran (registry-proxy-agent import) are indexed now.
    await runtime.reloadContent();
  } catch (error) {
    failed(error);
  }
}

async function cleanup(config: AgentConfig, log: Logger): Promise<number> {
  const { cleanupHosts } = await import('./containerd/wiring.ts');
  const failed = await cleanupHosts(config, log);
  return failed ? 1 : 0;
}

function explain(runtime: AgentRuntime, log: Logger): void {
  const endpoint = runtime.mirrorUrl;
  for (const mirror of runtime.mirrors.list()) {
    log.info(
      {
        registry: mirror.registry,
        upstream: mirror.config.upstream.origin,
        containerd: `${runtime.config.hostsDir}/${mirror.registry}/hosts.toml -> [host."${endpoint}"] capabilities = ["pull", "resolve"]`,
        try: `ctr images pull --hosts-dir ${runtime.config.hostsDir} ${mirror.registry}/<repository>:<tag>`,
        skopeo: `skopeo inspect --tls-verify=false docker://${endpoint.replace(/^http:\/\//, '')}/<repository>:<tag>`,
      },
      'serving mirror',
    );
  }
}

main(process.argv.slice(2)).then(
  (code) => exit(code),
  (error: unknown) => {
    if (error instanceof ConfigError || error instanceof UsageError) {
      process.stderr.write(`registry-proxy-agent: ${error.message}\n`);
      if (error instanceof UsageError) process.stderr.write(USAGE);
      process.exit(2);
    }
    process.stderr.write(`registry-proxy-agent: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exit(1);
  },
);
