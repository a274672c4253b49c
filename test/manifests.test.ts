// The Kubernetes manifests under manifests/: they parse, kustomize renders them, the rendered objects
// have the properties the agent relies on (DaemonSet, RBAC, configuration), and the RegistryMirror
// CRD's schema admits the examples and refuses what the agent's config loader would refuse.
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import type {
  V1ClusterRole,
  V1ClusterRoleBinding,
  V1ConfigMap,
  V1Container,
  V1DaemonSet,
  V1Namespace,
  V1PodSpec,
  V1PolicyRule,
  V1Probe,
  V1Role,
  V1RoleBinding,
  V1Service,
} from '@kubernetes/client-node';
import { Ajv } from 'ajv';
import type { ValidateFunction } from 'ajv';
import { type Manifest, all, kustomize, one, parseYaml } from './fixtures/kustomize.ts';
import { SPEC_TO_TOML } from '../agent/kube/translate.ts';
import { afterAll, describe, expect, it } from 'vitest';
import { isLoopback, parseRegistry } from '../agent/config/address.ts';
import { parseDuration } from '../agent/config/duration.ts';
import { parseConfig } from '../agent/config/load.ts';
import type { AgentConfig } from '../agent/config/types.ts';
import { parseByteRate, parsePreload, parsePreloadInterval } from '../agent/config/preload.ts';
import { parseCount, parseLocationId, parseProxyUrl, parseRepositoryPrefix, parseUpstream } from '../agent/config/values.ts';

const ROOT = resolve(import.meta.dirname, '..');
const MANIFESTS = join(ROOT, 'manifests');
const NAMESPACE = 'registry-proxy-agent';
const SERVICE_ACCOUNT = 'registry-proxy-agent';
const CONFIG_FILE = '/etc/registry-proxy-agent/config.toml';
const METRICS_PORT = 9402;
const PEER_PORT = 5443;
const PEER_SERVICE = 'registry-proxy-agent-peers';
const PEER_CA_SECRET = 'registry-proxy-agent-peer-ca';
/** What the downward API gives the agent on a test node (the DaemonSet's env). */
const NODE_ENV = { NODE_NAME: 'node-1', POD_NAMESPACE: 'registry-proxy-agent', NODE_IP: '10.0.0.5' };

type JsonObject = Record<string, unknown>;

// ---------------------------------------------------------------------------------------------------
// YAML and kustomize

function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return yamlFiles(path);
    return /\.ya?ml$/.test(entry.name) ? [path] : [];
  });
}

/** Every document of a multi-document YAML text, empty documents left out; throws on any YAML error. */
const rendered = new Map<string, Manifest[]>();

/** `kubectl kustomize DIR`, parsed (memoized per directory). */
function render(dir: string): Manifest[] {
  const cached = rendered.get(dir);
  if (cached) return cached;
  const docs = kustomize(dir, relative(ROOT, dir) || dir);
  rendered.set(dir, docs);
  return docs;
}

const base = (): Manifest[] => render(MANIFESTS);


function podSpec(ds: V1DaemonSet): V1PodSpec {
  const spec = ds.spec?.template.spec;
  if (!spec) throw new Error(`DaemonSet ${ds.metadata?.name} has no pod spec`);
  return spec;
}

function container(ds: V1DaemonSet, name: string): V1Container {
  const found = podSpec(ds).containers.find((c) => c.name === name);
  if (!found) throw new Error(`DaemonSet ${ds.metadata?.name} has no container ${name}`);
  return found;
}

/** The ConfigMap a DaemonSet mounts (by its generated name), and its config.toml parsed by the agent's own loader. */
function mountedConfig(docs: readonly Manifest[], ds: V1DaemonSet, purpose: 'agent' | 'cleanup' = 'agent'): AgentConfig {
  const volume = podSpec(ds).volumes?.find((v) => v.configMap !== undefined);
  const name = volume?.configMap?.name;
  expect(name, 'a ConfigMap volume').toBeDefined();
  const configMap = one<V1ConfigMap>(docs, 'ConfigMap', name);
  const text = configMap.data?.['config.toml'];
  if (text === undefined) throw new Error(`ConfigMap ${name} has no config.toml`);
  // The DaemonSet sets NODE_NAME, POD_NAMESPACE and NODE_IP; `cleanup` takes no mirror.
  return parseConfig(text, `ConfigMap ${name} config.toml`, {
    env: NODE_ENV,
    requireMirrors: purpose === 'agent',
  });
}

// ---------------------------------------------------------------------------------------------------

describe('manifests: files and rendering', () => {
  it('every YAML file under manifests/ parses', () => {
    const files = yamlFiles(MANIFESTS);
    expect(files.length).toBeGreaterThan(10);
    for (const file of files) {
      const docs = parseYaml(readFileSync(file, 'utf8'), relative(ROOT, file));
      expect(docs.length, relative(ROOT, file)).toBeGreaterThan(0);
      for (const doc of docs) {
        expect(typeof doc.apiVersion, `${relative(ROOT, file)}: apiVersion`).toBe('string');
        expect(typeof doc.kind, `${relative(ROOT, file)}: kind`).toBe('string');
      }
    }
  });

  it.each(['manifests', 'manifests/overlays/kyma', 'manifests/cleanup'])('kubectl kustomize %s renders', (dir) => {
    const docs = render(join(ROOT, dir));
    expect(docs.length).toBeGreaterThan(0);
    for (const doc of docs) expect(doc.metadata.name, `${doc.kind} has a name`).toBeTruthy();
  });

  it('the default install is the base: namespace, CRD, RBAC, ConfigMap, DaemonSet, metrics and peers Services', () => {
    const kinds = base().map((d) => `${d.kind}/${d.metadata.name.replace(/-[a-z0-9]{10}$/, '-<hash>')}`).sort();
    expect(kinds).toEqual(
      [
        'ClusterRole/registry-proxy-agent',
        'ClusterRoleBinding/registry-proxy-agent',
        'ConfigMap/registry-proxy-agent-config-<hash>',
        'CustomResourceDefinition/registrymirrors.registry-proxy.dev',
        'DaemonSet/registry-proxy-agent',
        'Namespace/registry-proxy-agent',
        'ResourceQuota/registry-proxy-agent-critical-pods',
        'Role/registry-proxy-agent',
        'RoleBinding/registry-proxy-agent',
        'Service/registry-proxy-agent-metrics',
        'Service/registry-proxy-agent-peers',
        'ServiceAccount/registry-proxy-agent',
      ].sort(),
    );
    for (const doc of base()) {
      const clusterScoped = ['Namespace', 'CustomResourceDefinition', 'ClusterRole', 'ClusterRoleBinding'].includes(doc.kind);
      expect(doc.metadata.namespace, `${doc.kind}/${doc.metadata.name} namespace`).toBe(clusterScoped ? undefined : NAMESPACE);
    }
  });

  it('the namespace admits hostNetwork and hostPath (pod security "privileged")', () => {
    for (const dir of [MANIFESTS, join(MANIFESTS, 'cleanup')]) {
      const ns = one<V1Namespace>(render(dir), 'Namespace', NAMESPACE);
      expect(ns.metadata?.labels?.['pod-security.kubernetes.io/enforce']).toBe('privileged');
    }
  });
});

describe('manifests: the agent DaemonSet', () => {
  const ds = (): V1DaemonSet => one<V1DaemonSet>(base(), 'DaemonSet', 'registry-proxy-agent');
  const agent = (): V1Container => container(ds(), 'agent');

  it('uses the node network, resolving cluster services', () => {
    expect(podSpec(ds()).hostNetwork).toBe(true);
    expect(podSpec(ds()).dnsPolicy).toBe('ClusterFirstWithHostNet');
  });

  it('runs on every node, tainted or not, as node-critical', () => {
    expect(podSpec(ds()).tolerations).toEqual([{ operator: 'Exists' }]);
    expect(podSpec(ds()).priorityClassName).toBe('system-node-critical');
    expect(podSpec(ds()).nodeSelector).toBeUndefined();
    expect(podSpec(ds()).affinity).toBeUndefined();
  });

  it('runs as its own ServiceAccount', () => {
    expect(podSpec(ds()).serviceAccountName).toBe(SERVICE_ACCOUNT);
    one(base(), 'ServiceAccount', SERVICE_ACCOUNT);
  });

  it('pulls a pinned image only when the node does not have it (the agent never depends on itself)', () => {
    expect(agent().image).toMatch(/^[a-z0-9.-]+(:[0-9]+)?\/[a-z0-9/._-]+:[0-9]+\.[0-9]+\.[0-9]+$/);
    expect(agent().imagePullPolicy).toBe('IfNotPresent');
  });

  it("tells the agent its own image, so it refuses to mirror that image's registry", () => {
    const env = agent().env?.find((e) => e.name === 'AGENT_IMAGE');
    expect(env?.value).toBe(agent().image);
    const config = mountedConfig(base(), ds());
    expect(() => parseConfig(`[[mirror]]\nregistry = "ghcr.io"\nupstream = "https://ghcr.io"\n`, 'x', { env: { AGENT_IMAGE: env?.value ?? '' } })).toThrow(
      /allow_own_registry_mirror/,
    );
    expect(config.allowOwnRegistryMirror).toBe(false);
  });

  it('starts with the mounted configuration', () => {
    expect(agent().args).toEqual(['start', '--config', CONFIG_FILE]);
    const mount = agent().volumeMounts?.find((m) => m.mountPath === '/etc/registry-proxy-agent');
    const volume = podSpec(ds()).volumes?.find((v) => v.name === mount?.name);
    expect(volume?.configMap?.name).toMatch(/^registry-proxy-agent-config-/);
    expect(mount?.readOnly).toBe(true);
  });

  it('knows its node, its namespace and the node IP (downward API)', () => {
    const env = agent().env ?? [];
    expect(env.find((e) => e.name === 'NODE_NAME')?.valueFrom?.fieldRef?.fieldPath).toBe('spec.nodeName');
    expect(env.find((e) => e.name === 'POD_NAMESPACE')?.valueFrom?.fieldRef?.fieldPath).toBe('metadata.namespace');
    expect(env.find((e) => e.name === 'NODE_IP')?.valueFrom?.fieldRef?.fieldPath).toBe('status.hostIP');
    // mountedConfig() stands in for exactly these.
    expect(Object.keys(NODE_ENV).every((name) => env.some((e) => e.name === name))).toBe(true);
  });

  it('mounts from the node exactly the hosts dir and the cache (writable) and containerd config (read-only)', () => {
    const volumes = podSpec(ds()).volumes ?? [];
    const hostPaths = volumes.flatMap((v) => (v.hostPath ? [{ name: v.name, path: v.hostPath.path, type: v.hostPath.type }] : []));
    expect(hostPaths.map(({ path, type }) => ({ path, type })).sort((a, b) => a.path.localeCompare(b.path))).toEqual([
      { path: '/etc/containerd', type: 'DirectoryOrCreate' },
      { path: '/etc/containerd/certs.d', type: 'DirectoryOrCreate' },
      { path: '/var/lib/registry-proxy-agent', type: 'DirectoryOrCreate' },
    ]);
    const mounts = new Map((agent().volumeMounts ?? []).map((m) => [m.name, m]));
    const mountOf = (hostPath: string) => {
      const volume = hostPaths.find((h) => h.path === hostPath);
      const mount = volume && mounts.get(volume.name);
      if (!mount) throw new Error(`hostPath ${hostPath} is not mounted`);
      return mount;
    };
    const config = mountedConfig(base(), ds());
    // Writable: exactly the hosts dir and the cache, where the configuration says they are.
    expect(mountOf('/etc/containerd/certs.d')).toMatchObject({ mountPath: config.hostsDir });
    expect(mountOf('/etc/containerd/certs.d').readOnly).not.toBe(true);
    expect(mountOf('/var/lib/registry-proxy-agent')).toMatchObject({ mountPath: config.cacheDir });
    expect(mountOf('/var/lib/registry-proxy-agent').readOnly).not.toBe(true);
    // containerd's config: read, never written.
    const containerd = mountOf('/etc/containerd');
    expect(containerd).toMatchObject({ mountPath: '/host/etc/containerd', readOnly: true });
    expect(config.containerdConfig).toBe('/host/etc/containerd/config.toml');
    // Nothing else from the node: only the ConfigMap and an emptyDir for /tmp besides.
    const others = volumes.filter((v) => !v.hostPath).map((v) => Object.keys(v).filter((k) => k !== 'name')[0]);
    expect(others.sort()).toEqual(['configMap', 'emptyDir']);
    expect(agent().volumeMounts?.find((m) => m.mountPath === '/tmp')).toBeDefined();
  });

  it('has no capabilities, no privilege escalation, a read-only root file system and the runtime seccomp profile', () => {
    const security = agent().securityContext;
    expect(security?.readOnlyRootFilesystem).toBe(true);
    expect(security?.allowPrivilegeEscalation).toBe(false);
    expect(security?.privileged).not.toBe(true);
    expect(security?.capabilities?.drop).toEqual(['ALL']);
    expect(security?.capabilities?.add).toBeUndefined();
    const seccomp = security?.seccompProfile ?? podSpec(ds()).securityContext?.seccompProfile;
    expect(seccomp?.type).toBe('RuntimeDefault');
    // Root (uid 0) because the hosts dir is root-owned; with no capability at all.
    expect(security?.runAsUser ?? podSpec(ds()).securityContext?.runAsUser).toBe(0);
    expect(podSpec(ds()).hostPID).toBeUndefined();
    expect(podSpec(ds()).hostIPC).toBeUndefined();
  });

  it('requests CPU and memory, limits memory, and has no CPU limit', () => {
    const resources = agent().resources;
    expect(resources?.requests).toMatchObject({ cpu: '50m', memory: '160Mi' });
    expect(resources?.limits?.['memory']).toBe('384Mi');
    expect(resources?.limits?.['cpu']).toBeUndefined();
  });

  it('is probed on the metrics port: /healthz for startup and liveness, /readyz for readiness', () => {
    const port = agent().ports?.find((p) => p.name === 'metrics');
    expect(port).toMatchObject({ containerPort: METRICS_PORT, protocol: 'TCP' });
    const target = (probe: V1Probe | undefined) => {
      const get = probe?.httpGet;
      if (!get) throw new Error('probe is not an httpGet probe');
      const resolved = typeof get.port === 'number' ? get.port : agent().ports?.find((p) => p.name === get.port)?.containerPort;
      return { port: resolved, path: get.path, host: get.host };
    };
    // On 127.0.0.1 (the node's loopback: hostNetwork), where the metrics port keeps connections for
    // loopback clients beyond its cap; Prometheus scrapes the node's address, so metrics_listen must
    // still not be loopback-only.
    expect(ds().spec?.template.spec?.hostNetwork).toBe(true);
    expect(target(agent().startupProbe)).toEqual({ port: METRICS_PORT, path: '/healthz', host: '127.0.0.1' });
    expect(target(agent().livenessProbe)).toEqual({ port: METRICS_PORT, path: '/healthz', host: '127.0.0.1' });
    expect(target(agent().readinessProbe)).toEqual({ port: METRICS_PORT, path: '/readyz', host: '127.0.0.1' });
    const config = mountedConfig(base(), ds());
    expect(config.metricsListen.port).toBe(METRICS_PORT);
    expect(isLoopback(config.metricsListen.host)).toBe(false);
  });

  it('rolls out a bounded share of the nodes at a time, without surge', () => {
    const strategy = ds().spec?.updateStrategy;
    expect(strategy?.type).toBe('RollingUpdate');
    const maxUnavailable = strategy?.rollingUpdate?.maxUnavailable;
    expect(maxUnavailable).toBeDefined();
    if (typeof maxUnavailable === 'string') {
      const percent = /^(\d+)%$/.exec(maxUnavailable);
      expect(percent, `maxUnavailable ${maxUnavailable}`).not.toBeNull();
      expect(Number(percent?.[1])).toBeGreaterThan(0);
      expect(Number(percent?.[1])).toBeLessThanOrEqual(25);
    } else {
      expect(maxUnavailable).toBeGreaterThanOrEqual(1);
    }
    expect(strategy?.rollingUpdate?.maxSurge ?? 0).toBe(0);
  });

  it('gives in-flight blobs time to finish on termination', () => {
    expect(podSpec(ds()).terminationGracePeriodSeconds).toBeGreaterThanOrEqual(30);
  });

  it('serves the mirror on loopback only', () => {
    const config = mountedConfig(base(), ds());
    expect(isLoopback(config.listen.host)).toBe(true);
    expect(config.listen.port).toBe(5050);
    // Node ports (hostNetwork): metrics and the peer listener, never the mirror.
    expect(agent().ports?.map((p) => [p.name, p.containerPort])).toEqual([
      ['metrics', METRICS_PORT],
      ['peer', PEER_PORT],
    ]);
  });

  it('shares blobs with the other agents: the peer listener on the node IP, the port of the DaemonSet and the peers Service', () => {
    const peers = mountedConfig(base(), ds()).peers;
    expect(peers).toMatchObject({
      enabled: true,
      nodeName: NODE_ENV.NODE_NAME,
      listen: { host: NODE_ENV.NODE_IP, port: PEER_PORT },
      service: PEER_SERVICE,
      tls: { kind: 'kubernetes', secret: PEER_CA_SECRET },
    });
    // Members come from the Service's EndpointSlices, not from a list in the file.
    expect(peers?.members).toBeUndefined();
    expect(agent().ports?.find((p) => p.name === 'peer')).toEqual({ name: 'peer', containerPort: peers?.listen.port, protocol: 'TCP' });
    // An unprivileged port outside the NodePort and ephemeral ranges: with hostNetwork it is a port of the node.
    expect(PEER_PORT).toBeGreaterThan(1023);
    expect(PEER_PORT).toBeLessThan(30000);
  });

  it('has a headless peers Service listing exactly the ready agent pods, by node, on the peer port', () => {
    const service = one<V1Service>(base(), 'Service', PEER_SERVICE);
    expect(service.spec?.clusterIP).toBe('None');
    // EndpointSlices carry only ready agents: membership follows readiness.
    expect(service.spec?.publishNotReadyAddresses).toBe(false);
    expect(service.spec?.ports).toEqual([{ name: 'peer', port: PEER_PORT, targetPort: 'peer', protocol: 'TCP' }]);
    expect(ds().spec?.selector.matchLabels).toEqual(service.spec?.selector);
    expect(service.spec?.type ?? 'ClusterIP').toBe('ClusterIP');
  });

  it('has a headless metrics Service selecting exactly the agent pods', () => {
    const service = one<V1Service>(base(), 'Service', 'registry-proxy-agent-metrics');
    expect(service.spec?.clusterIP).toBe('None');
    expect(service.spec?.ports).toEqual([{ name: 'metrics', port: METRICS_PORT, targetPort: 'metrics', protocol: 'TCP' }]);
    const podLabels = ds().spec?.template.metadata?.labels ?? {};
    expect(podLabels).toMatchObject(service.spec?.selector ?? { missing: 'selector' });
    expect(ds().spec?.selector.matchLabels).toEqual(service.spec?.selector);
  });
});

describe('manifests: RBAC is least privilege', () => {
  const normalize = (rules: readonly V1PolicyRule[] | undefined) =>
    (rules ?? []).map((r) => ({
      apiGroups: [...(r.apiGroups ?? [])].sort(),
      resources: [...(r.resources ?? [])].sort(),
      verbs: [...r.verbs].sort(),
      ...(r.resourceNames ? { resourceNames: r.resourceNames } : {}),
      ...(r.nonResourceURLs ? { nonResourceURLs: r.nonResourceURLs } : {}),
    }));

  // Exactly what agent/kube/ calls; test/kube.test.ts proves each verb is used and none is missing.
  it('the ClusterRole lists and watches RegistryMirrors, applies their status and creates events; nothing else', () => {
    const role = one<V1ClusterRole>(base(), 'ClusterRole', 'registry-proxy-agent');
    expect(role.aggregationRule).toBeUndefined();
    expect(normalize(role.rules)).toEqual([
      { apiGroups: ['registry-proxy.dev'], resources: ['registrymirrors'], verbs: ['list', 'watch'] },
      { apiGroups: ['registry-proxy.dev'], resources: ['registrymirrors/status'], verbs: ['patch'] },
      { apiGroups: [''], resources: ['events'], verbs: ['create'] },
    ]);
  });

  it('the namespaced Role lists and watches the Secrets of its own namespace, reads and creates the peer CA, watches the peers Service\'s EndpointSlices and keeps Leases (no patch); nothing else', () => {
    const role = one<V1Role>(base(), 'Role', 'registry-proxy-agent');
    expect(role.metadata?.namespace).toBe(NAMESPACE);
    expect(normalize(role.rules)).toEqual([
      { apiGroups: [''], resources: ['secrets'], verbs: ['list', 'watch'] },
      // get by name only; create cannot be limited by name (RBAC authorizes it before the object has one).
      { apiGroups: [''], resources: ['secrets'], verbs: ['get'], resourceNames: [PEER_CA_SECRET] },
      { apiGroups: [''], resources: ['secrets'], verbs: ['create'] },
      { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['list', 'watch'] },
      { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['create', 'get', 'list', 'update', 'watch'] },
    ]);
    // The Secret the configuration names is the one the Role lets it read.
    const tls = mountedConfig(base(), one<V1DaemonSet>(base(), 'DaemonSet', 'registry-proxy-agent')).peers?.tls;
    expect(tls).toEqual({ kind: 'kubernetes', secret: PEER_CA_SECRET });
  });

  it('the roles are bound to the agent ServiceAccount only', () => {
    const subjects = [{ kind: 'ServiceAccount', name: SERVICE_ACCOUNT, namespace: NAMESPACE }];
    const clusterBinding = one<V1ClusterRoleBinding>(base(), 'ClusterRoleBinding', 'registry-proxy-agent');
    expect(clusterBinding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'registry-proxy-agent' });
    expect(clusterBinding.subjects).toEqual(subjects);
    const binding = one<V1RoleBinding>(base(), 'RoleBinding', 'registry-proxy-agent');
    expect(binding.metadata?.namespace).toBe(NAMESPACE);
    expect(binding.roleRef).toEqual({ apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'registry-proxy-agent' });
    expect(binding.subjects).toEqual(subjects);
  });

  it.each(['manifests', 'manifests/overlays/kyma', 'manifests/cleanup'])('%s: no wildcard anywhere, Secrets only in a namespaced Role', (dir) => {
    const docs = render(join(ROOT, dir));
    for (const role of [...all(docs, 'ClusterRole'), ...all(docs, 'Role')]) {
      const rules = (role as unknown as V1Role).rules ?? [];
      for (const rule of rules) {
        for (const value of [...(rule.apiGroups ?? []), ...(rule.resources ?? []), ...rule.verbs]) {
          expect(value, `${role.kind}/${role.metadata.name}`).not.toContain('*');
        }
        if (role.kind === 'ClusterRole') expect(rule.resources ?? [], 'Secrets in a ClusterRole').not.toContain('secrets');
      }
    }
    // Nothing grants cluster-admin or any other built-in role.
    for (const binding of [...all(docs, 'ClusterRoleBinding'), ...all(docs, 'RoleBinding')]) {
      expect((binding as unknown as V1RoleBinding).roleRef.name).toBe('registry-proxy-agent');
    }
  });
});

describe('manifests: configuration', () => {
  it('the base ConfigMap parses with the agent loader: loopback mirror, node paths, mirrors from RegistryMirrors', () => {
    const config = mountedConfig(base(), one<V1DaemonSet>(base(), 'DaemonSet', 'registry-proxy-agent'));
    expect(config).toMatchObject({
      listen: { host: '127.0.0.1', port: 5050 },
      metricsListen: { host: '0.0.0.0', port: METRICS_PORT },
      cacheDir: '/var/lib/registry-proxy-agent',
      cacheMaxBytes: 20 * 1024 ** 3,
      hostsDir: '/etc/containerd/certs.d',
      manageHosts: true,
      containerdConfig: '/host/etc/containerd/config.toml',
      logLevel: 'info',
    });
    expect(config.connectivityProxy).toBeUndefined();
    expect(config.mirrors).toEqual([]);
    expect(config.kubernetes).toMatchObject({ enabled: true, nodeName: 'node-1', namespace: 'registry-proxy-agent' });
    expect(config.peers).toMatchObject({ enabled: true, connectTimeoutMs: 1_000, progressTimeoutMs: 10_000, maxConnections: 256 });
    expect(isLoopback(config.peers?.listen.host ?? '127.0.0.1')).toBe(false);
  });

  it('the Kyma overlay adds the Connectivity Proxy; mirrors come from RegistryMirrors', () => {
    const docs = render(join(MANIFESTS, 'overlays/kyma'));
    const ds = one<V1DaemonSet>(docs, 'DaemonSet', 'registry-proxy-agent');
    expect(all(docs, 'ConfigMap')).toHaveLength(1);
    const config = mountedConfig(docs, ds);
    expect(config.connectivityProxy?.url.href).toBe('http://connectivity-proxy.kyma-system.svc.cluster.local:20003/');
    expect(config.mirrors).toEqual([]);
    expect(config.kubernetes?.enabled).toBe(true);
    // Everything else as in the base.
    const baseConfig = mountedConfig(base(), one<V1DaemonSet>(base(), 'DaemonSet', 'registry-proxy-agent'));
    const { source: _s1, mirrors: _m1, connectivityProxy: _c1, ...kymaRest } = config;
    const { source: _s2, mirrors: _m2, connectivityProxy: _c2, ...baseRest } = baseConfig;
    expect(kymaRest).toEqual(baseRest);
  });

  it('the Kyma overlay lets the sidecar-less agent reach the proxy port 20003 (PeerAuthentication)', () => {
    const docs = render(join(MANIFESTS, 'overlays/kyma'));
    const peer = one<Manifest>(docs, 'PeerAuthentication');
    expect(peer.apiVersion).toBe('security.istio.io/v1');
    expect(peer.metadata.namespace).toBe('kyma-system');
    expect(peer['spec']).toEqual({
      selector: { matchLabels: { app: 'connectivity-proxy' } },
      portLevelMtls: { '20003': { mode: 'PERMISSIVE' } },
    });
  });
});

describe('manifests: cleanup', () => {
  const docs = (): Manifest[] => render(join(MANIFESTS, 'cleanup'));
  const ds = (): V1DaemonSet => one<V1DaemonSet>(docs(), 'DaemonSet', 'registry-proxy-agent-cleanup');

  it('runs `cleanup` once per node in an init container, then idles without a shell', () => {
    const init = podSpec(ds()).initContainers ?? [];
    expect(init.map((c) => c.args)).toEqual([['cleanup', '--config', CONFIG_FILE]]);
    const agentImage = container(one<V1DaemonSet>(base(), 'DaemonSet', 'registry-proxy-agent'), 'agent').image;
    const containers = podSpec(ds()).containers;
    expect(containers).toHaveLength(1);
    for (const c of [...init, ...containers]) {
      expect(c.image).toBe(agentImage);
      expect(c.imagePullPolicy).toBe('IfNotPresent');
      expect(c.securityContext).toMatchObject({ readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } });
    }
    const idle = containers[0]?.command ?? [];
    expect(idle.slice(0, 2)).toEqual(['node', '-e']);
    expect(idle[2]).toContain('SIGTERM');
    expect(podSpec(ds()).tolerations).toEqual([{ operator: 'Exists' }]);
    expect(podSpec(ds()).automountServiceAccountToken).toBe(false);
  });

  it('mounts only the hosts dir from the node, the same one the agent manages', () => {
    const hostPaths = (podSpec(ds()).volumes ?? []).flatMap((v) => (v.hostPath ? [v.hostPath.path] : []));
    expect(hostPaths).toEqual(['/etc/containerd/certs.d']);
    const cleanupConfig = mountedConfig(docs(), ds(), 'cleanup');
    const agentConfig = mountedConfig(base(), one<V1DaemonSet>(base(), 'DaemonSet', 'registry-proxy-agent'));
    expect(cleanupConfig.hostsDir).toBe(agentConfig.hostsDir);
    const mount = podSpec(ds()).initContainers?.[0]?.volumeMounts?.find((m) => m.mountPath === cleanupConfig.hostsDir);
    expect(mount?.readOnly).not.toBe(true);
  });

  it('is self-contained: namespace and configuration of its own, nothing of the agent', () => {
    expect(docs().map((d) => d.kind).sort()).toEqual(['ConfigMap', 'DaemonSet', 'Namespace']);
  });
});

describe('manifests: monitoring component', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'rpa-kustomize-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('adds a PodMonitor scraping /metrics on the agent pods', () => {
    // kustomize takes directories by relative path; an overlay in a temp dir uses the component.
    writeFileSync(
      join(tmp, 'kustomization.yaml'),
      [
        'apiVersion: kustomize.config.k8s.io/v1beta1',
        'kind: Kustomization',
        `resources: [${JSON.stringify(relative(tmp, join(MANIFESTS, 'base')))}]`,
        `components: [${JSON.stringify(relative(tmp, join(MANIFESTS, 'components/monitoring')))}]`,
        '',
      ].join('\n'),
    );
    const docs = render(tmp);
    const monitor = one<Manifest>(docs, 'PodMonitor', 'registry-proxy-agent');
    expect(monitor.apiVersion).toBe('monitoring.coreos.com/v1');
    expect(monitor.metadata.namespace).toBe(NAMESPACE);
    const spec = monitor['spec'] as { selector: { matchLabels: Record<string, string> }; podMetricsEndpoints: JsonObject[] };
    expect(spec.podMetricsEndpoints.map((e) => [e['port'], e['path']])).toEqual([['metrics', '/metrics']]);
    const ds = one<V1DaemonSet>(docs, 'DaemonSet', 'registry-proxy-agent');
    expect(ds.spec?.template.metadata?.labels).toMatchObject(spec.selector.matchLabels);
  });
});

// ---------------------------------------------------------------------------------------------------
// The RegistryMirror CRD

interface CrdVersion {
  name: string;
  served: boolean;
  storage: boolean;
  subresources?: JsonObject;
  additionalPrinterColumns?: { name: string; type: string; jsonPath: string; priority?: number }[];
  schema: { openAPIV3Schema: JsonObject };
}

interface Crd extends Manifest {
  spec: { group: string; scope: string; names: JsonObject; versions: CrdVersion[] };
}

interface CelRule {
  rule: string;
  message: string;
}

const crd = (): Crd => one<Crd>(base(), 'CustomResourceDefinition', 'registrymirrors.registry-proxy.dev');
const openApiSchema = (): JsonObject => {
  const version = crd().spec.versions[0];
  if (!version) throw new Error('the CRD has no version');
  return version.schema.openAPIV3Schema;
};

function objectAt(schema: JsonObject, ...path: string[]): JsonObject {
  let node: unknown = schema;
  for (const key of path) node = (node as JsonObject | undefined)?.[key];
  if (typeof node !== 'object' || node === null) throw new Error(`no schema at ${path.join('.')}`);
  return node as JsonObject;
}

/** The schema without Kubernetes' own keywords (x-kubernetes-*), which JSON Schema validators do not know. */
function withoutKubernetesKeywords(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutKubernetesKeywords);
  if (typeof value !== 'object' || value === null) return value;
  return Object.fromEntries(
    Object.entries(value).filter(([key]) => !key.startsWith('x-kubernetes-')).map(([key, v]) => [key, withoutKubernetesKeywords(v)]),
  );
}

function newAjv(): Ajv {
  const ajv = new Ajv({ strict: false, allErrors: true });
  ajv.addFormat('int32', { type: 'number', validate: (n: number) => Number.isInteger(n) && Math.abs(n) < 2 ** 31 });
  ajv.addFormat('int64', { type: 'number', validate: (n: number) => Number.isSafeInteger(n) });
  ajv.addFormat('date-time', (s: string) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(s) && !Number.isNaN(Date.parse(s)));
  return ajv;
}

let compiled: ValidateFunction | undefined;
function validateMirror(object: unknown): string[] {
  compiled ??= newAjv().compile(withoutKubernetesKeywords(openApiSchema()) as JsonObject);
  return compiled(object) ? [] : (compiled.errors ?? []).map((e) => `${e.instancePath} ${e.message ?? ''}`);
}

function fieldAccepts(field: string, value: unknown): boolean {
  const schema = withoutKubernetesKeywords(objectAt(openApiSchema(), 'properties', 'spec', 'properties', field)) as JsonObject;
  return newAjv().validate(schema, value);
}

function loaderAccepts(parse: (value: unknown) => unknown, value: unknown): boolean {
  try {
    parse(value);
    return true;
  } catch {
    return false;
  }
}

const examples = (): Manifest[] => parseYaml(readFileSync(join(MANIFESTS, 'examples/registrymirror.yaml'), 'utf8'), 'examples/registrymirror.yaml');

const VALID: JsonObject = {
  apiVersion: 'registry-proxy.dev/v1alpha1',
  kind: 'RegistryMirror',
  metadata: { name: 'corp' },
  spec: { registry: 'registry.corp.example:5000', upstream: 'http://registry.corp.example:5000' },
};

function withSpec(spec: JsonObject): JsonObject {
  return { ...VALID, spec: { ...(VALID['spec'] as JsonObject), ...spec } };
}

function withoutSpecField(field: string): JsonObject {
  const spec: JsonObject = { ...(VALID['spec'] as JsonObject) };
  delete spec[field];
  return { ...VALID, spec };
}

const failingNodes = (n: number) => Array.from({ length: n }, (_, i) => ({ node: `node-${i}`, reason: 'ConfigPathUnset', message: 'set config_path' }));

describe('manifests: the RegistryMirror CRD', () => {
  it('defines registry-proxy.dev/v1alpha1 RegistryMirror, cluster-scoped, with a status subresource', () => {
    const { spec } = crd();
    expect(spec.group).toBe('registry-proxy.dev');
    expect(spec.scope).toBe('Cluster');
    expect(spec.names).toMatchObject({ kind: 'RegistryMirror', plural: 'registrymirrors', singular: 'registrymirror' });
    expect(spec.versions.map((v) => [v.name, v.served, v.storage])).toEqual([['v1alpha1', true, true]]);
    expect(spec.versions[0]?.subresources).toEqual({ status: {} });
  });

  it('prints registry, upstream, route, ready nodes, preloaded images and age', () => {
    const columns = crd().spec.versions[0]?.additionalPrinterColumns ?? [];
    const shown = columns.filter((c) => (c.priority ?? 0) === 0).map((c) => [c.name, c.jsonPath]);
    expect(shown).toEqual([
      ['Registry', '.spec.registry'],
      ['Upstream', '.spec.upstream'],
      ['Route', '.spec.route'],
      ['Ready Nodes', '.status.nodes.ready'],
      ['Preloaded', '.status.preloadSummary'],
      ['Age', '.metadata.creationTimestamp'],
    ]);
    // Printer columns cannot compute: the leader writes the summary text.
    expect(columns.find((c) => c.name === 'Preloaded')?.type).toBe('string');
    expect(columns.find((c) => c.name === 'Mode')).toMatchObject({ jsonPath: '.spec.mode', priority: 1 });
  });

  it('admits the examples', () => {
    const mirrors = all(examples(), 'RegistryMirror');
    expect(mirrors.length).toBeGreaterThanOrEqual(2);
    for (const mirror of mirrors) expect(validateMirror(mirror), mirror.metadata.name).toEqual([]);
    const secret = one<Manifest>(examples(), 'Secret');
    expect(secret.metadata.namespace).toBe(NAMESPACE);
    expect(secret['type']).toBe('kubernetes.io/basic-auth');
  });

  it('the examples are mirrors the agent accepts, credentials Secrets resolved to files', () => {
    for (const mirror of all(examples(), 'RegistryMirror')) {
      const toml = mirrorToml(mirror['spec'] as JsonObject);
      expect(() => parseConfig(toml, `RegistryMirror ${mirror.metadata.name}`), toml).not.toThrow();
    }
    const referenced = all(examples(), 'RegistryMirror').flatMap((m) => {
      const ref = (m['spec'] as JsonObject)['credentialsSecretRef'] as { name: string } | undefined;
      return ref ? [ref.name] : [];
    });
    for (const name of referenced) one(examples(), 'Secret', name);
  });

  it('admits a full status: conditions, per-node counts and preload per image', () => {
    const status = {
      observedGeneration: 3,
      conditions: [{ type: 'Ready', status: 'True', observedGeneration: 3, lastTransitionTime: '2025-11-22T13:00:00Z', reason: 'AllNodesReady', message: '' }],
      nodes: { ready: 12, failing: 10, failingNodes: failingNodes(10) },
      preloadSummary: '1/3 images on all 22 nodes, 1 failing',
      preload: [
        { image: 'team/app:1.2', nodesReady: 22, nodesFailed: 0, nodesTotal: 22, digest: 'sha256:3f2a9c1e0b7d' },
        { image: 'team/db:7', nodesReady: 3, nodesFailed: 0, nodesTotal: 22, digest: 'mixed' },
        { image: 'team/web:2', nodesReady: 0, nodesFailed: 22, nodesTotal: 22, lastError: `node-1: ${'manifest unknown '.repeat(14)}`.slice(0, 256) },
      ],
    };
    expect(validateMirror({ ...VALID, status })).toEqual([]);
    const hundred = Array.from({ length: 100 }, (_, i) => ({ image: `team/app-${i}:1`, nodesReady: 1, nodesTotal: 1 }));
    expect(validateMirror({ ...VALID, status: { preload: hundred } })).toEqual([]);
  });

  it('admits preload, mode, preloadInterval, maxBytesPerSecond and maxFetches as the agent reads them', () => {
    const spec = {
      preload: [{ image: 'team/app:1.2' }, { image: `registry.corp.example:5000/team/db@sha256:${'a'.repeat(64)}`, platforms: ['linux/amd64', 'linux/arm/v7'] }, { image: `team/x:1@sha256:${'b'.repeat(64)}` }],
      preloadInterval: '30m',
      maxBytesPerSecond: '20MiB',
      maxFetches: 4,
      mode: 'online',
    };
    const object = withSpec(spec);
    expect(validateMirror(object)).toEqual([]);
    expect(() => parseConfig(mirrorToml(object['spec'] as JsonObject), 'preload'), mirrorToml(object['spec'] as JsonObject)).not.toThrow();
    expect(validateMirror(withSpec({ maxBytesPerSecond: 1_048_576 }))).toEqual([]);
    // Offline: upstream may be left out (a CEL rule asks for it otherwise).
    const offline = { ...VALID, spec: { registry: 'airgap.corp.example', mode: 'offline' } };
    expect(validateMirror(offline)).toEqual([]);
    expect(() => parseConfig(mirrorToml(offline.spec), 'offline')).not.toThrow();
    expect(validateMirror(withSpec({ preload: Array.from({ length: 100 }, (_, i) => ({ image: `team/app-${i}:1` })) }))).toEqual([]);
  });

  it.each<[string, JsonObject]>([
    ['an upper-case registry', withSpec({ registry: 'Registry.Corp.Example:5000' })],
    ['a registry with a scheme', withSpec({ registry: 'https://registry.corp.example' })],
    ['a registry with a path', withSpec({ registry: 'registry.corp.example/team' })],
    ['a registry with a bad port', withSpec({ registry: 'registry.corp.example:70000' })],
    ['a registry that is no IPv4 address', withSpec({ registry: '999.1.1.1' })],
    ['an ftp:// upstream', withSpec({ upstream: 'ftp://registry.corp.example' })],
    ['an upstream with credentials', withSpec({ upstream: 'https://alice:secret@registry.corp.example' })],
    ['an upstream with a query', withSpec({ upstream: 'https://registry.corp.example/?x=1' })],
    ['an unknown route', withSpec({ route: 'socks5' })],
    ['an unknown auth', withSpec({ auth: 'anonymous' })],
    ['an https:// httpProxy', withSpec({ route: 'http-proxy', httpProxy: 'https://proxy.corp.example:3128' })],
    ['a tagTTL in words', withSpec({ tagTTL: '5 minutes' })],
    ['a maxStale without unit', withSpec({ maxStale: '86400' })],
    ['a locationId with a space', withSpec({ route: 'connectivity-proxy', locationId: 'on prem' })],
    ['a repositoryPrefix with upper case', withSpec({ repositoryPrefix: 'Team/images' })],
    ['a credentialsSecretRef without name', withSpec({ auth: 'agent', credentialsSecretRef: {} })],
    ['a realmMap to an https:// origin', withSpec({ route: 'connectivity-proxy', upstream: 'http://registry.virtual:5000', realmMap: { 'https://harbor.corp.example': 'https://harbor.virtual' } })],
    ['a realmMap value with a path', withSpec({ route: 'connectivity-proxy', upstream: 'http://registry.virtual:5000', realmMap: { 'https://harbor.corp.example': 'http://harbor.virtual/token' } })],
    ['a realmMap value that is no string', withSpec({ route: 'connectivity-proxy', upstream: 'http://registry.virtual:5000', realmMap: { 'https://harbor.corp.example': 80 } })],
    ['a credentialsSecretRef with a bad name', withSpec({ auth: 'agent', credentialsSecretRef: { name: 'Bad_Name' } })],
    ['an unknown mode', withSpec({ mode: 'Offline' })],
    ['101 preload images', withSpec({ preload: Array.from({ length: 101 }, (_, i) => ({ image: `team/app-${i}:1` })) })],
    ['a preload entry as a string (the CRD takes { image })', withSpec({ preload: ['team/app:1'] })],
    ['a preload entry without image', withSpec({ preload: [{ platforms: ['linux/amd64'] }] })],
    ['a preload image without tag or digest', withSpec({ preload: [{ image: 'team/app' }] })],
    ['a preload image with upper case', withSpec({ preload: [{ image: 'Team/app:1' }] })],
    ['a preload image with a short digest', withSpec({ preload: [{ image: 'team/app@sha256:abc' }] })],
    ['a preload image with a space', withSpec({ preload: [{ image: 'team/app:1 ' }] })],
    ['a preload platform without architecture', withSpec({ preload: [{ image: 'team/app:1', platforms: ['linux'] }] })],
    ['an empty preload platforms list', withSpec({ preload: [{ image: 'team/app:1', platforms: [] }] })],
    ['a preloadInterval without unit', withSpec({ preloadInterval: '600' })],
    ['a maxBytesPerSecond in words', withSpec({ maxBytesPerSecond: '20 megabytes' })],
    ['a maxBytesPerSecond below 64KiB', withSpec({ maxBytesPerSecond: 1024 })],
    ['a maxBytesPerSecond that is no number', withSpec({ maxBytesPerSecond: true })],
    ['maxFetches 0', withSpec({ maxFetches: 0 })],
    ['maxFetches 1001', withSpec({ maxFetches: 1001 })],
    ['a status preload entry without nodesTotal', { ...VALID, status: { preload: [{ image: 'team/app:1', nodesReady: 0 }] } }],
    ['a status preload digest that is no digest', { ...VALID, status: { preload: [{ image: 'team/app:1', nodesReady: 0, nodesTotal: 1, digest: 'latest' }] } }],
    ['a status preload lastError over 256 characters', { ...VALID, status: { preload: [{ image: 'team/app:1', nodesReady: 0, nodesTotal: 1, lastError: 'x'.repeat(257) }] } }],
    ['101 status preload entries', { ...VALID, status: { preload: Array.from({ length: 101 }, (_, i) => ({ image: `team/app-${i}:1`, nodesReady: 1, nodesTotal: 1 })) } }],
    ['no registry', withoutSpecField('registry')],
    ['no spec', { apiVersion: VALID['apiVersion'], kind: VALID['kind'], metadata: VALID['metadata'] }],
    ['11 failing nodes', { ...VALID, status: { nodes: { failing: 11, failingNodes: failingNodes(11) } } }],
    ['a failing node message over 256 characters', { ...VALID, status: { nodes: { failingNodes: [{ node: 'n', reason: 'Failed', message: 'x'.repeat(257) }] } } }],
    ['a negative ready count', { ...VALID, status: { nodes: { ready: -1 } } }],
    ['a condition status other than True/False/Unknown', { ...VALID, status: { conditions: [{ type: 'Ready', status: 'Maybe', lastTransitionTime: '2025-11-22T13:00:00Z', reason: 'X', message: '' }] } }],
  ])('refuses %s', (_name, object) => {
    expect(validateMirror(object)).not.toEqual([]);
  });

  it('has CEL rules for what spans fields (evaluated by the API server, not here)', () => {
    const rules = objectAt(openApiSchema(), 'properties', 'spec')['x-kubernetes-validations'] as CelRule[];
    const find = (rule: RegExp, message: RegExp) =>
      expect(rules.filter((r) => rule.test(r.rule) && message.test(r.message)), `${rule} / ${message}`).toHaveLength(1);
    find(/has\(self\.httpProxy\).*'http-proxy'/, /httpProxy is required with route http-proxy/);
    find(/has\(self\.locationId\).*'connectivity-proxy'/, /locationId is only used with route connectivity-proxy/);
    find(/self\.auth != 'agent' \|\| has\(self\.credentialsSecretRef\)/, /auth agent needs credentialsSecretRef/);
    find(/has\(self\.credentialsSecretRef\).*self\.auth == 'agent'/, /credentialsSecretRef is only used with auth agent/);
    find(/'connectivity-proxy'.*self\.upstream\.startsWith\('http:\/\/'\)/, /http:\/\/ upstream.*virtual host.*Cloud Connector/s);
    find(/has\(self\.realmMap\).*'connectivity-proxy'/, /realmMap is only used with route connectivity-proxy/);
    find(/has\(self\.upstream\) \|\| .*self\.mode == 'offline'/, /upstream is required unless mode is offline/);
    find(/self\.mode != 'offline' \|\| !has\(self\.preload\) \|\| size\(self\.preload\) == 0/, /offline mirror .* cannot preload/);
    expect(rules).toHaveLength(8);
    // Without upstream (offline), the route rule must not read it.
    expect(rules.find((r) => r.rule.includes('startsWith'))?.rule).toContain('!has(self.upstream) ||');
    // upstream is not required by the schema itself: the CEL rule asks for it unless mode is offline.
    expect(objectAt(openApiSchema(), 'properties', 'spec')['required']).toEqual(['registry']);
  });

  it('spec.preload is a list keyed by image (server-side apply merges it, the API server refuses an image twice)', () => {
    expect(objectAt(openApiSchema(), 'properties', 'spec', 'properties', 'preload')).toMatchObject({ maxItems: 100, 'x-kubernetes-list-type': 'map', 'x-kubernetes-list-map-keys': ['image'] });
    expect(objectAt(openApiSchema(), 'properties', 'status', 'properties', 'preload')).toMatchObject({ maxItems: 100, 'x-kubernetes-list-type': 'map', 'x-kubernetes-list-map-keys': ['image'] });
    // int-or-string the way a structural schema allows it: allOf[0] is exactly anyOf integer/string.
    const rate = objectAt(openApiSchema(), 'properties', 'spec', 'properties', 'maxBytesPerSecond');
    expect(rate['x-kubernetes-int-or-string']).toBe(true);
    expect(rate['type']).toBeUndefined();
    expect((rate['allOf'] as JsonObject[])[0]).toEqual({ anyOf: [{ type: 'integer' }, { type: 'string' }] });
  });

  it('a preload entry the CRD admits is one the agent reads (the registry in front aside, which only the agent checks)', () => {
    const REGISTRY = 'registry.corp.example:5000';
    const valid = ['team/app:1.2', 'app:latest', `team/app@sha256:${'c'.repeat(64)}`, `team/app:1@sha256:${'c'.repeat(64)}`, `${REGISTRY}/team/app:1`, 'a_b__c--d/e.f:V1.0-rc_1'];
    const invalid = ['team/app', 'Team/app:1', 'team//app:1', 'team/app:', 'team/app:-1', `team/app@sha256:${'C'.repeat(64)}`, 'team/app@sha256:abc', '/team/app:1', 'team/app:1/x'];
    for (const image of valid) {
      expect(fieldAccepts('preload', [{ image }]), image).toBe(true);
      expect(loaderAccepts((v) => parsePreload(v, REGISTRY), [{ image }]), image).toBe(true);
    }
    for (const image of invalid) {
      expect(fieldAccepts('preload', [{ image }]), image).toBe(false);
      expect(loaderAccepts((v) => parsePreload(v, REGISTRY), [{ image }]), image).toBe(false);
    }
    // Cross-field, the agent's alone: another registry in front.
    expect(fieldAccepts('preload', [{ image: 'other.example/team/app:1' }])).toBe(true);
    expect(loaderAccepts((v) => parsePreload(v, REGISTRY), [{ image: 'other.example/team/app:1' }])).toBe(false);
    for (const platform of ['linux/amd64', 'linux/arm/v7', 'windows/amd64']) expect(fieldAccepts('preload', [{ image: 'a:1', platforms: [platform] }]), platform).toBe(true);
    for (const platform of ['linux', 'Linux/amd64', 'linux/arm/v7/x', 'linux/']) {
      expect(fieldAccepts('preload', [{ image: 'a:1', platforms: [platform] }]), platform).toBe(false);
      expect(loaderAccepts((v) => parsePreload(v, REGISTRY), [{ image: 'a:1', platforms: [platform] }]), platform).toBe(false);
    }
  });

  it('conditions and failing nodes are maps keyed by type and node (server-side apply merges them)', () => {
    const status = objectAt(openApiSchema(), 'properties', 'status', 'properties');
    expect(objectAt(status, 'conditions')).toMatchObject({ 'x-kubernetes-list-type': 'map', 'x-kubernetes-list-map-keys': ['type'] });
    expect(objectAt(status, 'nodes', 'properties', 'failingNodes')).toMatchObject({
      maxItems: 10,
      'x-kubernetes-list-type': 'map',
      'x-kubernetes-list-map-keys': ['node'],
    });
  });

  // The CRD must never admit what the agent refuses; it may be stricter (lower case only, no
  // leading zeros in ports, no slashes around a prefix).
  describe.each<[string, (value: unknown) => unknown, unknown[], unknown[], unknown[]]>([
    [
      'registry',
      parseRegistry,
      ['docker.io', 'registry.corp.example:5000', 'localhost:5000', '10.0.0.7:5000', '[fd00::7]:5000', '[::1]', '[::ffff:10.0.0.7]:5000', '[2001:db8:0:0:0:0:0:1]', '_default', 'a-b.example', '1a.example', 'quay.io:443'],
      ['http://registry.corp', 'registry.corp/team', 'user@registry.corp', '999.1.1.1', '10.0.0.256:5000', '123', 'registry:0', 'registry:65536', '-bad.example', 'bad-.example', 'a..b', '', 'fd00::7', '[1.2.3.4]', '[zz::1]', '[fd00::7', '[]', 'registry.corp:'],
      ['Registry.Corp.Example', 'registry.corp.example:05000'],
    ],
    ['upstream', parseUpstream, ['http://registry.virtual:5000', 'https://registry-1.docker.io', 'https://registry.corp.example/prefix/path', 'https://registry.corp.example/', 'http://[fd00::7]:5000'], ['ftp://registry.corp.example', 'https://alice:pw@registry.corp.example', 'https://registry.corp.example?x=1', 'https://registry.corp.example/#f', 'registry.corp.example:5000', 'https://'], []],
    ['httpProxy', parseProxyUrl, ['http://proxy.corp.example:3128', 'http://proxy:3128/'], ['https://proxy:3128', 'http://alice:pw@proxy:3128', 'http://proxy:3128/path', 'http://proxy:3128?x=1', 'proxy:3128'], []],
    ['tagTTL', parseDuration, ['0', '0s', '90s', '1h30m', '1.5h', '500ms', '7d'], ['5 minutes', '5', '-1s', '1w', '1h 30m', '', 'ms', '1H'], []],
    ['maxStale', parseDuration, ['24h', '7d'], ['24 h', 'forever'], []],
    ['repositoryPrefix', parseRepositoryPrefix, ['', 'library', 'team/images', 'a.b_c__d--e/f'], ['Team', 'team//images', 'team/-x', 'with space', 'a/../b'], ['/team/']],
    ['locationId', parseLocationId, ['onprem-1', 'loc.A_b'], ['on prem', '', 'tab\tx', 'ümlaut'], []],
    ['mode', (v) => parseConfig(`[[mirror]]\nregistry = "r.example"\nupstream = "http://r.example"\nmode = ${JSON.stringify(v)}\n`, 't'), ['online', 'offline'], ['Online', 'air-gapped', ''], []],
    ['preloadInterval', parsePreloadInterval, ['10s', '15m', '1h30m', '7d', '10000ms'], ['600', '15 m', '', 'soon', '-1m'], []],
    ['maxBytesPerSecond', parseByteRate, [65_536, '64KiB', '20MiB', '1.5GiB', '10 MB', '100000000', '1gb'], ['20 megabytes', 'MiB', '', -1, 1.5, true, '1e9'], ['20 MiB ']],
    ['maxFetches', (v) => parseCount(v, 1_000), [1, 8, 1_000], [0, 1_001, -1, 1.5, '8'], []],
  ])('the CRD field %s agrees with the config loader', (field, parse, validBoth, invalidBoth, crdStricter) => {
    it.each(validBoth)('both accept %j', (value) => {
      expect(loaderAccepts(parse, value)).toBe(true);
      expect(fieldAccepts(field, value)).toBe(true);
    });
    it.each(invalidBoth)('both refuse %j', (value) => {
      expect(loaderAccepts(parse, value)).toBe(false);
      expect(fieldAccepts(field, value)).toBe(false);
    });
    if (crdStricter.length > 0) {
      it.each(crdStricter)('the CRD is stricter on %j', (value) => {
        expect(loaderAccepts(parse, value)).toBe(true);
        expect(fieldAccepts(field, value)).toBe(false);
      });
    }
  });
});

/**
 * A RegistryMirror spec as the agent's TOML: a [[mirror]] with the keys in snake_case, a
 * [connectivity_proxy] table for its route, and credentials as files (as the agent will mount them).
 */
function mirrorToml(spec: JsonObject): string {
  const keys = SPEC_TO_TOML;
  const lines = ['[connectivity_proxy]', 'url = "http://connectivity-proxy.kyma-system.svc.cluster.local:20003"', '', '[[mirror]]'];
  for (const [field, value] of Object.entries(spec)) {
    if (field === 'credentialsSecretRef') {
      lines.push('username = "from-secret"', `password_file = "/var/run/secrets/registry-proxy-agent/${(value as { name: string }).name}/password"`);
      continue;
    }
    const key = keys[field];
    if (key === undefined) throw new Error(`spec.${field} has no [[mirror]] key`);
    lines.push(`${key} = ${tomlValue(value)}`);
  }
  return `${lines.join('\n')}\n`;
}

/** Maps (realmMap, preload entries) as TOML inline tables, arrays element by element; JSON strings and numbers are valid TOML. */
function tomlValue(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(', ')}]`;
  if (value !== null && typeof value === 'object') return `{ ${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)} = ${tomlValue(v)}`).join(', ')} }`;
  return JSON.stringify(value);
}
