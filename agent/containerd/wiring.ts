import type { Logger } from 'pino';
import type { AgentConfig } from '../config/types.ts';
import { type ContainerdVerdict, detectContainerd } from './detect.ts';
import { HostsManager, type HostsReport } from './hosts-manager.ts';

export interface WiringState {
  readonly hosts: readonly HostsReport[];
  readonly containerd: ContainerdVerdict;
}

/**
 * Points containerd at the agent for every configured mirror (hosts.toml) and reports whether
 * containerd reads that hosts dir at all. Never edits containerd's own config, never restarts it.
 */
export async function wireContainerd(config: AgentConfig, agentUrl: string, log: Logger, previous?: ContainerdVerdict): Promise<WiringState> {
  let hosts: HostsReport[] = [];
  if (config.manageHosts) {
    const manager = new HostsManager({ hostsDir: config.hostsDir, agentUrl, log: log.child({ component: 'hosts' }) });
    hosts = await manager.reconcile(config.mirrors.map((m) => m.registry));
    for (const report of hosts) {
      if (report.state === 'admin_file_invalid' || report.state === 'error') {
        log.error({ registry: report.registry, path: report.path, state: report.state, problem: report.message }, 'hosts.toml not written: pulls for this registry bypass the agent');
      }
    }
  }
  const containerd = await detectContainerd(config.containerdConfig, config.hostsDir, config.hostRoot);
  if (!previous || previous.state !== containerd.state || previous.message !== containerd.message) {
    const line = { state: containerd.state, containerdConfig: config.containerdConfig, hostsDir: config.hostsDir, warnings: containerd.warnings };
    if (containerd.ok) log.info(line, containerd.message);
    else log.warn(line, `containerd is not using the agent: ${containerd.message}`);
  }
  return { hosts, containerd };
}

/** `cleanup`: restores every hosts.toml the agent changed and removes the ones it created. */
export async function cleanupHosts(config: AgentConfig, log: Logger): Promise<boolean> {
  const manager = new HostsManager({ hostsDir: config.hostsDir, agentUrl: 'http://127.0.0.1:0', log: log.child({ component: 'hosts' }) });
  const reports = await manager.cleanup();
  const failed = reports.filter((r) => r.state === 'error');
  log.info({ restored: reports.filter((r) => r.state === 'restored').length, removed: reports.filter((r) => r.state === 'removed').length, failed: failed.length }, 'cleanup finished');
  return failed.length > 0;
}
