import { describe, expect, it } from 'vitest';
import { thrown } from '../../test/fixtures/thrown.ts';
import { ConfigError } from './errors.ts';
import { parseConfig } from './load.ts';
import type { AgentConfig } from './types.ts';

const FILE = '/etc/rpa/agent.toml';
const MIRROR = '[[mirror]]\nregistry = "docker.io"\nupstream = "https://registry-1.docker.io"\n';
const FILES = '[peers.tls]\nca_file = "peers/ca.crt"\ncert_file = "peers/tls.crt"\nkey_file = "peers/tls.key"\n';
const MEMBERS = '[[peers.member]]\nname = "node-a"\nurl = "https://10.0.0.1:5443"\n[[peers.member]]\nname = "node-b"\nurl = "https://[fd00::2]:5443"\n';
const KUBE = '[kubernetes]\nenabled = true\n';

const parse = (text: string, env: Record<string, string | undefined> = {}): AgentConfig => parseConfig(text, FILE, { baseDir: '/etc/rpa', env });
const errorOf = (text: string, env: Record<string, string | undefined> = {}): string => thrown(ConfigError, () => parse(text, env)).message;

describe('[peers]', () => {
  it('is absent unless the table is there, and off unless enabled', () => {
    expect(parse(MIRROR).peers).toBeUndefined();
    const off = parse(`[peers]\n${MIRROR}`).peers;
    expect(off?.enabled).toBe(false);
  });

  it('static members and key files: paths resolved, timeouts and caps defaulted, IPv6 members kept in brackets', () => {
    const peers = parse(`${MIRROR}[peers]\nenabled = true\nnode_name = "node-a"\nlisten = "10.0.0.1:5443"\n${FILES}${MEMBERS}`).peers;
    expect(peers).toEqual({
      enabled: true,
      nodeName: 'node-a',
      listen: { host: '10.0.0.1', port: 5443 },
      members: [
        { name: 'node-a', url: 'https://10.0.0.1:5443' },
        { name: 'node-b', url: 'https://[fd00::2]:5443' },
      ],
      service: 'registry-proxy-agent-peers',
      tls: { kind: 'files', caFile: '/etc/rpa/peers/ca.crt', certFile: '/etc/rpa/peers/tls.crt', keyFile: '/etc/rpa/peers/tls.key' },
      connectTimeoutMs: 1_000,
      progressTimeoutMs: 10_000,
      maxConnections: 256,
    });
  });

  it('in Kubernetes: node name and address from the Downward API, members from the Service, the CA Secret by default', () => {
    const peers = parse(`${KUBE}[peers]\nenabled = true\nport = 6443\n`, { NODE_NAME: 'worker-7', NODE_IP: '192.168.4.7' }).peers;
    expect(peers).toMatchObject({ nodeName: 'worker-7', listen: { host: '192.168.4.7', port: 6443 }, tls: { kind: 'kubernetes', secret: 'registry-proxy-agent-peer-ca' } });
    expect(peers?.members).toBeUndefined();
  });

  it.each([
    [`[peers]\nenabled = true\nlisten = "10.0.0.1:5443"\n${FILES}${MEMBERS}${MIRROR}`, {}, 'peers.node_name: required with enabled = true'],
    [`[peers]\nenabled = true\nnode_name = "node-a"\n${FILES}${MEMBERS}${MIRROR}`, {}, 'peers.listen: required with enabled = true'],
    [`[peers]\nenabled = true\nnode_name = "node-a"\n${FILES}${MEMBERS}${MIRROR}`, { NODE_IP: 'node-a.local' }, 'NODE_IP is not an IP address'],
    [`[peers]\nenabled = true\nnode_name = "node-c"\nlisten = "10.0.0.3:5443"\n${FILES}${MEMBERS}${MIRROR}`, {}, 'this node ("node-c") is not among the members'],
    [`[peers]\nenabled = true\nnode_name = "node-a"\nlisten = "10.0.0.1:5443"\n${MEMBERS}${MIRROR}`, {}, 'peers.tls: without [kubernetes] enabled, set [peers.tls] ca_file, cert_file and key_file'],
    [`[peers]\nenabled = true\nnode_name = "node-a"\nlisten = "10.0.0.1:5443"\n[peers.tls]\nca_file = "ca.crt"\n${MEMBERS}${MIRROR}`, {}, 'ca_file, cert_file and key_file go together'],
    [`[peers]\nlisten = "10.0.0.1:5443"\nport = 5443\n${MIRROR}`, {}, 'give either listen or port'],
    [
      `[peers]\nenabled = true\nnode_name = "node-b"\nlisten = "10.0.0.1:5443"\n${FILES}${MEMBERS}${MIRROR}`,
      {},
      'peers.member[0].url: https://10.0.0.1:5443 is this node\'s own peer listener',
    ],
    [`[peers]\n[[peers.member]]\nname = "a"\nurl = "http://10.0.0.1:5443"\n${MIRROR}`, {}, 'expected https://<node IP>:<port>'],
    [`[peers]\n[[peers.member]]\nname = "a"\nurl = "https://node-a.cluster.local:5443"\n${MIRROR}`, {}, 'expected https://<node IP>:<port>'],
    [`[peers]\n[[peers.member]]\nname = "a"\nurl = "https://10.0.0.1"\n${MIRROR}`, {}, 'expected https://<node IP>:<port>'],
    [`[peers]\n[[peers.member]]\nname = "a"\nurl = "https://10.0.0.1:1/x"\n${MIRROR}`, {}, 'expected https://<node IP>:<port>'],
    [`[peers]\n[[peers.member]]\nname = "a"\nurl = "https://10.0.0.1:1"\n[[peers.member]]\nname = "a"\nurl = "https://10.0.0.2:1"\n${MIRROR}`, {}, '"a" is listed twice'],
    [`[peers]\n[[peers.member]]\nname = "Node_A"\nurl = "https://10.0.0.1:1"\n${MIRROR}`, {}, 'must be a node name'],
    [`[peers]\nconnect_timeout = "0s"\n${MIRROR}`, {}, 'peers.connect_timeout'],
    [`[peers]\nmax_connections = 0\n${MIRROR}`, {}, 'peers.max_connections'],
    [`[peers]\nlisten_on = "x"\n${MIRROR}`, {}, 'peers.listen_on: unknown key'],
  ])('refuses %j with a message naming the key', (text, env, message) => {
    expect(errorOf(text, env)).toContain(message);
  });
});
