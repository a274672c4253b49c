import { chmod, chown, lstat, mkdir, mkdtemp, open, readFile, readdir, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { BACKUP_FILE, HostsManager } from './hosts-manager.ts';
import type { HostsLogger } from './hosts-manager.ts';

const AGENT = 'http://127.0.0.1:5050';

const MANAGED = '# Managed by registry-proxy-agent: regenerated on every agent start, edits here are lost.';
const CREATED_FILE =
  '# Created by the agent and deleted when it stops mirroring this registry. To customise, replace this file with your own: the agent keeps it as hosts.toml.registry-proxy-agent.orig and puts its mirror first.';
const FROM_ORIGINAL =
  "# Derived from hosts.toml.registry-proxy-agent.orig (the original, put back when the agent stops mirroring this registry) with the agent's mirror first; edit that file instead.";
const CREATED_DIR = '# registry-proxy-agent: created this directory; it is removed again when left empty.';

const ADMIN_QUAY = `# Corp mirror for quay.io, maintained by the platform team.
server = "https://quay.io"
ca = "corp-root.pem"
skip_verify = false

[header]
  X-Corp-Tenant = "platform"

[host."https://quay-mirror.corp.example"]
  capabilities = ["pull", "resolve"]
  ca = "certs/quay-mirror-ca.pem"   # relative to this directory
  skip_verify = true
  [host."https://quay-mirror.corp.example".header]
    Authorization = "Basic Zm9vOmJhcg=="
`;

let root: string;
let hostsDir: string;
let logLines: Array<{ level: string; obj: object; msg: string }>;
let manager: HostsManager;

const log: HostsLogger = {
  info: (obj, msg) => logLines.push({ level: 'info', obj, msg }),
  warn: (obj, msg) => logLines.push({ level: 'warn', obj, msg }),
};

beforeEach(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'hosts-manager-'));
  hostsDir = path.join(root, 'certs.d');
  logLines = [];
  manager = new HostsManager({ hostsDir, agentUrl: AGENT, log });
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

function hostsFile(registry: string): string {
  return path.join(hostsDir, registry, 'hosts.toml');
}

function backupFile(registry: string): string {
  return path.join(hostsDir, registry, BACKUP_FILE);
}

async function writeAdmin(registry: string, text: string | Buffer): Promise<void> {
  await mkdir(path.join(hostsDir, registry), { recursive: true });
  await writeFile(hostsFile(registry), text);
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

function lines(...text: string[]): string {
  return `${text.join('\n')}\n`;
}

describe('HostsManager.reconcile', () => {
  it('creates a new file and directory for a registry without configuration', async () => {
    const reports = await manager.reconcile(['ghcr.io']);
    expect(reports).toEqual([{ registry: 'ghcr.io', path: hostsFile('ghcr.io'), state: 'written', preservedAdminFile: false }]);
    expect(await readFile(hostsFile('ghcr.io'), 'utf8')).toBe(
      lines(MANAGED, CREATED_FILE, CREATED_DIR, '', 'server = "https://ghcr.io"', '', '[host."http://127.0.0.1:5050"]', '  capabilities = ["pull", "resolve"]'),
    );
    expect((await stat(hostsFile('ghcr.io'))).mode & 0o777).toBe(0o644);
    expect((await stat(path.join(hostsDir, 'ghcr.io'))).mode & 0o777).toBe(0o755);
    expect(logLines).toEqual([{ level: 'info', obj: { registry: 'ghcr.io', path: hostsFile('ghcr.io'), preservedAdminFile: false }, msg: 'hosts.toml written' }]);
  });

  it('uses registry-1.docker.io as the server for docker.io', async () => {
    await manager.reconcile(['docker.io']);
    expect(await readFile(hostsFile('docker.io'), 'utf8')).toBe(
      lines(MANAGED, CREATED_FILE, CREATED_DIR, '', 'server = "https://registry-1.docker.io"', '', '[host."http://127.0.0.1:5050"]', '  capabilities = ["pull", "resolve"]'),
    );
  });

  it('names the directory host:port for a registry with a port', async () => {
    await manager.reconcile(['registry.corp.example:5000']);
    expect(await readdir(hostsDir)).toEqual(['registry.corp.example:5000']);
    expect(await readFile(hostsFile('registry.corp.example:5000'), 'utf8')).toBe(
      lines(MANAGED, CREATED_FILE, CREATED_DIR, '', 'server = "https://registry.corp.example:5000"', '', '[host."http://127.0.0.1:5050"]', '  capabilities = ["pull", "resolve"]'),
    );
  });

  it('writes _default without a server, and only when asked to', async () => {
    await manager.reconcile(['ghcr.io']);
    expect(await exists(path.join(hostsDir, '_default'))).toBe(false);
    await manager.reconcile(['_default']);
    expect(await readFile(hostsFile('_default'), 'utf8')).toBe(
      lines(MANAGED, CREATED_FILE, CREATED_DIR, '', '[host."http://127.0.0.1:5050"]', '  capabilities = ["pull", "resolve"]'),
    );
  });

  it('backs up an admin file byte for byte and merges it, our host first', async () => {
    await writeAdmin('quay.io', ADMIN_QUAY);
    const reports = await manager.reconcile(['quay.io']);
    expect(reports).toEqual([{ registry: 'quay.io', path: hostsFile('quay.io'), state: 'written', preservedAdminFile: true }]);
    expect(await readFile(backupFile('quay.io'), 'utf8')).toBe(ADMIN_QUAY);
    expect(await readFile(hostsFile('quay.io'), 'utf8')).toBe(
      lines(
        MANAGED,
        FROM_ORIGINAL,
        '',
        'server = "https://quay.io"',
        'ca = "corp-root.pem"',
        'skip_verify = false',
        '',
        '[header]',
        '  X-Corp-Tenant = "platform"',
        '',
        '[host."http://127.0.0.1:5050"]',
        '  capabilities = ["pull", "resolve"]',
        '',
        '[host."https://quay-mirror.corp.example"]',
        '  capabilities = ["pull", "resolve"]',
        '  ca = "certs/quay-mirror-ca.pem"',
        '  skip_verify = true',
        '  [host."https://quay-mirror.corp.example".header]',
        '    Authorization = "Basic Zm9vOmJhcg=="',
      ),
    );
    expect(logLines.map((l) => l.msg)).toEqual(['admin hosts.toml backed up', 'hosts.toml written']);
  });

  it('changes nothing on a repeated reconcile: same inode, same mtime, backup untouched', async () => {
    await writeAdmin('quay.io', ADMIN_QUAY);
    await manager.reconcile(['quay.io', 'ghcr.io']);
    const before = await Promise.all([stat(hostsFile('quay.io')), stat(backupFile('quay.io')), stat(hostsFile('ghcr.io'))]);
    logLines = [];

    const restarted = new HostsManager({ hostsDir, agentUrl: AGENT, log });
    const reports = await restarted.reconcile(['quay.io', 'ghcr.io']);

    expect(reports.map((r) => [r.registry, r.state, r.preservedAdminFile])).toEqual([
      ['quay.io', 'unchanged', true],
      ['ghcr.io', 'unchanged', false],
    ]);
    const after = await Promise.all([stat(hostsFile('quay.io')), stat(backupFile('quay.io')), stat(hostsFile('ghcr.io'))]);
    expect(after.map((s) => [s.ino, s.mtimeMs])).toEqual(before.map((s) => [s.ino, s.mtimeMs]));
    expect(await readFile(backupFile('quay.io'), 'utf8')).toBe(ADMIN_QUAY);
    expect(logLines).toEqual([]);
  });

  it('re-derives from the backup when the agent URL changes, never backing up its own file', async () => {
    await writeAdmin('quay.io', ADMIN_QUAY);
    await manager.reconcile(['quay.io']);
    const moved = new HostsManager({ hostsDir, agentUrl: 'http://127.0.0.1:6060', log });
    const [report] = await moved.reconcile(['quay.io']);
    expect(report?.state).toBe('written');
    const text = await readFile(hostsFile('quay.io'), 'utf8');
    expect(text).toContain('[host."http://127.0.0.1:6060"]');
    expect(text).not.toContain('5050');
    expect(await readFile(backupFile('quay.io'), 'utf8')).toBe(ADMIN_QUAY);
  });

  it('restores the original byte for byte when a registry is no longer mirrored', async () => {
    const original = Buffer.from(`${ADMIN_QUAY}\r\n# trailing bytes kept: \u00e9\n`);
    await writeAdmin('quay.io', original);
    await manager.reconcile(['quay.io', 'ghcr.io']);
    logLines = [];

    const reports = await manager.reconcile(['ghcr.io']);

    expect(reports).toEqual([
      { registry: 'ghcr.io', path: hostsFile('ghcr.io'), state: 'unchanged', preservedAdminFile: false },
      { registry: 'quay.io', path: hostsFile('quay.io'), state: 'restored', preservedAdminFile: true },
    ]);
    expect((await readFile(hostsFile('quay.io'))).equals(original)).toBe(true);
    expect(await exists(backupFile('quay.io'))).toBe(false);
    expect(logLines).toEqual([{ level: 'info', obj: { registry: 'quay.io', path: hostsFile('quay.io') }, msg: 'admin hosts.toml restored' }]);
  });

  it('gives back the very same file: same inode, and a symlink stays a symlink', async () => {
    await writeAdmin('quay.io', ADMIN_QUAY);
    const inode = (await stat(hostsFile('quay.io'))).ino;
    const target = path.join(root, 'corp-ghcr.toml');
    await writeFile(target, '[host."https://ghcr-mirror.corp.example"]\n');
    await mkdir(path.join(hostsDir, 'ghcr.io'));
    await symlink(target, hostsFile('ghcr.io'));

    await manager.reconcile(['quay.io', 'ghcr.io']);
    expect(await readFile(hostsFile('ghcr.io'), 'utf8')).toContain('[host."https://ghcr-mirror.corp.example"]');
    expect((await lstat(hostsFile('ghcr.io'))).isSymbolicLink()).toBe(false);
    await manager.cleanup();

    expect((await stat(hostsFile('quay.io'))).ino).toBe(inode);
    expect(await readlink(hostsFile('ghcr.io'))).toBe(target);
    expect(await readFile(target, 'utf8')).toBe('[host."https://ghcr-mirror.corp.example"]\n');
  });

  it('does not duplicate the agent host when the admin already lists it', async () => {
    await writeAdmin('ghcr.io', '[host."http://127.0.0.1:5050"]\n  capabilities = ["pull"]\n\n[host."https://ghcr-mirror.example"]\n');
    await manager.reconcile(['ghcr.io']);
    expect(await readFile(hostsFile('ghcr.io'), 'utf8')).toBe(
      lines(MANAGED, FROM_ORIGINAL, '', '[host."http://127.0.0.1:5050"]', '  capabilities = ["pull", "resolve"]', '', '[host."https://ghcr-mirror.example"]'),
    );
  });

  it('leaves an invalid admin file alone and reports it', async () => {
    const broken = 'server = "https://quay.io\n[host."x"\n';
    await writeAdmin('quay.io', broken);
    const before = await stat(hostsFile('quay.io'));

    const [report] = await manager.reconcile(['quay.io']);

    expect(report).toMatchObject({ registry: 'quay.io', state: 'admin_file_invalid', preservedAdminFile: true });
    expect(report?.message).toMatch(/^hosts\.toml is invalid, left untouched: invalid TOML at line 1, column \d+: /);
    expect(await readFile(hostsFile('quay.io'), 'utf8')).toBe(broken);
    expect((await stat(hostsFile('quay.io'))).mtimeMs).toBe(before.mtimeMs);
    expect(await exists(backupFile('quay.io'))).toBe(false);
    expect(await manager.cleanup()).toEqual([]);
    expect(await readFile(hostsFile('quay.io'), 'utf8')).toBe(broken);
  });

  it('treats a file with types containerd rejects as invalid too', async () => {
    await writeAdmin('quay.io', 'server = 443\n');
    const [report] = await manager.reconcile(['quay.io']);
    expect(report?.state).toBe('admin_file_invalid');
    expect(report?.message).toContain('"server" (top level) must be a string');
  });

  it('never touches directories of registries it does not manage', async () => {
    const other = '[host."https://elsewhere.example"]\n';
    await writeAdmin('other.example', other);
    await mkdir(path.join(hostsDir, 'empty.example'));
    await writeFile(path.join(hostsDir, 'stray-file'), 'x');

    expect((await manager.reconcile(['ghcr.io'])).map((r) => r.registry)).toEqual(['ghcr.io']);
    expect((await manager.cleanup()).map((r) => r.registry)).toEqual(['ghcr.io']);

    expect(await readFile(hostsFile('other.example'), 'utf8')).toBe(other);
    expect(await readdir(path.join(hostsDir, 'other.example'))).toEqual(['hosts.toml']);
    expect(await readdir(path.join(hostsDir, 'empty.example'))).toEqual([]);
    expect((await readdir(hostsDir)).sort()).toEqual(['empty.example', 'other.example', 'stray-file']);
  });

  it('rejects registry names that would escape the hosts dir', async () => {
    const reports = await manager.reconcile(['../etc', 'a/b', 'x\0y', '..', '', 'ok.example']);
    expect(reports.map((r) => [r.registry, r.state])).toEqual([
      ['../etc', 'error'],
      ['a/b', 'error'],
      ['x\0y', 'error'],
      ['..', 'error'],
      ['', 'error'],
      ['ok.example', 'written'],
    ]);
    expect(await readdir(hostsDir)).toEqual(['ok.example']);
    expect(await readdir(root)).toEqual(['certs.d']);
  });

  it('adopts a file the admin put in place of the managed one as the new original', async () => {
    await writeAdmin('quay.io', ADMIN_QUAY);
    await manager.reconcile(['quay.io']);
    const replacement = 'server = "https://quay.io"\n\n[host."https://new-mirror.example"]\n';
    await writeFile(hostsFile('quay.io'), replacement);

    const [report] = await manager.reconcile(['quay.io']);

    expect(report?.state).toBe('written');
    expect(await readFile(backupFile('quay.io'), 'utf8')).toBe(replacement);
    expect(await readFile(hostsFile('quay.io'), 'utf8')).toContain('[host."https://new-mirror.example"]');
    await manager.cleanup();
    expect(await readFile(hostsFile('quay.io'), 'utf8')).toBe(replacement);
  });

  it('keeps a directory it created once the admin adds files to it', async () => {
    await manager.reconcile(['ghcr.io']);
    await writeFile(path.join(hostsDir, 'ghcr.io', 'ca.crt'), 'cert');
    const [report] = await manager.cleanup();
    expect(report?.state).toBe('removed');
    expect(await readdir(path.join(hostsDir, 'ghcr.io'))).toEqual(['ca.crt']);
  });

  it('does not remove a registry directory that existed before it', async () => {
    await mkdir(path.join(hostsDir, 'ghcr.io'), { recursive: true });
    await manager.reconcile(['ghcr.io']);
    expect(await readFile(hostsFile('ghcr.io'), 'utf8')).not.toContain(CREATED_DIR);
    await manager.cleanup();
    expect(await readdir(path.join(hostsDir, 'ghcr.io'))).toEqual([]);
  });

  it('restores the backup when its managed file was deleted', async () => {
    await writeAdmin('quay.io', ADMIN_QUAY);
    await manager.reconcile(['quay.io']);
    await rm(hostsFile('quay.io'));
    const [report] = await manager.cleanup();
    expect(report?.state).toBe('restored');
    expect(await readFile(hostsFile('quay.io'), 'utf8')).toBe(ADMIN_QUAY);
  });
});

describe('HostsManager.cleanup', () => {
  it('removes created files and directories and restores admin files byte for byte', async () => {
    const adminDocker = Buffer.from('server = "https://registry-1.docker.io"\n[host."https://mirror.gcr.io"]\n  capabilities = ["pull"]\n');
    await writeAdmin('quay.io', ADMIN_QUAY);
    await writeAdmin('docker.io', adminDocker);
    await manager.reconcile(['quay.io', 'docker.io', 'ghcr.io', 'registry.corp.example:5000']);
    logLines = [];

    const reports = await new HostsManager({ hostsDir, agentUrl: AGENT, log }).cleanup();

    expect(reports.map((r) => [r.registry, r.state, r.preservedAdminFile])).toEqual([
      ['docker.io', 'restored', true],
      ['ghcr.io', 'removed', false],
      ['quay.io', 'restored', true],
      ['registry.corp.example:5000', 'removed', false],
    ]);
    expect((await readdir(hostsDir)).sort()).toEqual(['docker.io', 'quay.io']);
    expect(await readdir(path.join(hostsDir, 'quay.io'))).toEqual(['hosts.toml']);
    expect(await readFile(hostsFile('quay.io'), 'utf8')).toBe(ADMIN_QUAY);
    expect((await readFile(hostsFile('docker.io'))).equals(adminDocker)).toBe(true);
    expect(logLines.map((l) => l.msg)).toEqual(['admin hosts.toml restored', 'hosts.toml removed', 'admin hosts.toml restored', 'hosts.toml removed']);
    expect(await manager.cleanup()).toEqual([]);
  });

  it('is a no-op when the hosts dir does not exist', async () => {
    expect(await manager.cleanup()).toEqual([]);
    expect(await exists(hostsDir)).toBe(false);
  });
});

describe('HostsManager: modes and owners', () => {
  const IS_ROOT = process.geteuid?.() === 0;
  const AUTHORIZATION = '    Authorization = "Basic Zm9vOmJhcg=="';

  afterEach(() => {
    vi.restoreAllMocks();
  });

  async function writeAdminWithMode(registry: string, text: string | Buffer, mode: number): Promise<void> {
    await writeAdmin(registry, text);
    await chmod(hostsFile(registry), mode); // explicit: writeFile's mode is narrowed by the umask
  }

  async function modeOf(file: string): Promise<string> {
    return ((await stat(file)).mode & 0o7777).toString(8).padStart(4, '0');
  }

  async function ownerOf(file: string): Promise<[number, number]> {
    const info = await stat(file);
    return [info.uid, info.gid];
  }

  it.each([
    ['0600', 0o600],
    ['0640', 0o640],
  ])('keeps the mode of a %s admin file with a secret header through merge, rebuild and cleanup', async (octal, mode) => {
    const original = Buffer.from(`${ADMIN_QUAY}# no newline at the end`);
    await writeAdminWithMode('quay.io', original, mode);

    await manager.reconcile(['quay.io']);
    expect(await readFile(hostsFile('quay.io'), 'utf8')).toContain(AUTHORIZATION);
    expect(await modeOf(hostsFile('quay.io'))).toBe(octal);
    expect(await modeOf(backupFile('quay.io'))).toBe(octal);

    // Every start rebuilds the managed file from the backup (here: the agent moved, so the text changes).
    const [rebuilt] = await new HostsManager({ hostsDir, agentUrl: 'http://127.0.0.1:6060', log }).reconcile(['quay.io']);
    expect(rebuilt?.state).toBe('written');
    expect(await readFile(hostsFile('quay.io'), 'utf8')).toContain(AUTHORIZATION);
    expect(await modeOf(hostsFile('quay.io'))).toBe(octal);

    const [restored] = await manager.cleanup();
    expect(restored?.state).toBe('restored');
    expect((await readFile(hostsFile('quay.io'))).equals(original)).toBe(true);
    expect(await modeOf(hostsFile('quay.io'))).toBe(octal);
    expect(await readdir(path.join(hostsDir, 'quay.io'))).toEqual(['hosts.toml']);
  });

  it('never makes the managed file wider than 0644, even from a wider admin file', async () => {
    await writeAdminWithMode('quay.io', ADMIN_QUAY, 0o775);
    await manager.reconcile(['quay.io']);
    expect(await modeOf(hostsFile('quay.io'))).toBe('0644');
    await manager.cleanup();
    expect(await modeOf(hostsFile('quay.io'))).toBe('0775');
  });

  it('narrows a managed file an older agent left 0644 although its text is current', async () => {
    await writeAdminWithMode('quay.io', ADMIN_QUAY, 0o600);
    await manager.reconcile(['quay.io']);
    await chmod(hostsFile('quay.io'), 0o644);

    const [report] = await new HostsManager({ hostsDir, agentUrl: AGENT, log }).reconcile(['quay.io']);

    expect(report?.state).toBe('written');
    expect(await modeOf(hostsFile('quay.io'))).toBe('0600');
    expect((await manager.reconcile(['quay.io']))[0]?.state).toBe('unchanged');
  });

  it('writes files it creates 0644 in 0755 directories, and a 0640 admin file stays 0640, whatever the umask', async () => {
    await writeAdminWithMode('quay.io', ADMIN_QUAY, 0o640);
    const umask = process.umask(0o077);
    try {
      await manager.reconcile(['ghcr.io', 'quay.io']);
    } finally {
      process.umask(umask);
    }
    expect(await modeOf(hostsFile('ghcr.io'))).toBe('0644');
    expect(await modeOf(path.join(hostsDir, 'ghcr.io'))).toBe('0755');
    expect(await modeOf(hostsFile('quay.io'))).toBe('0640');
  });

  it.runIf(IS_ROOT)("gives the managed file the admin file's owner and group, and restores them", async () => {
    await writeAdminWithMode('quay.io', ADMIN_QUAY, 0o640);
    await chown(hostsFile('quay.io'), 1234, 5678);

    await manager.reconcile(['quay.io']);
    expect(await ownerOf(hostsFile('quay.io'))).toEqual([1234, 5678]);
    expect(await modeOf(hostsFile('quay.io'))).toBe('0640');

    await new HostsManager({ hostsDir, agentUrl: 'http://127.0.0.1:6060', log }).reconcile(['quay.io']);
    expect(await ownerOf(hostsFile('quay.io'))).toEqual([1234, 5678]);

    await manager.cleanup();
    expect(await readFile(hostsFile('quay.io'), 'utf8')).toBe(ADMIN_QUAY);
    expect(await ownerOf(hostsFile('quay.io'))).toEqual([1234, 5678]);
    expect(await modeOf(hostsFile('quay.io'))).toBe('0640');
  });

  it.runIf(IS_ROOT)('without CAP_CHOWN: the file stays ours without group permissions, reported once, not rewritten', async () => {
    const probe = await open(path.join(root, 'probe'), 'w');
    const fileHandleProto = Object.getPrototypeOf(probe) as FileHandle;
    await probe.close();
    vi.spyOn(fileHandleProto, 'chown').mockRejectedValue(Object.assign(new Error('EPERM: operation not permitted'), { code: 'EPERM' }));
    await writeAdminWithMode('quay.io', ADMIN_QUAY, 0o640);
    await chown(hostsFile('quay.io'), 1234, 5678);

    await manager.reconcile(['quay.io']);
    expect(await ownerOf(hostsFile('quay.io'))).toEqual([process.geteuid?.(), process.getegid?.()]);
    expect(await modeOf(hostsFile('quay.io'))).toBe('0600');
    expect(logLines.filter((l) => l.level === 'warn').map((l) => l.obj)).toEqual([
      { registry: 'quay.io', path: hostsFile('quay.io'), adminOwner: { uid: 1234, gid: 5678 }, owner: { uid: process.geteuid?.(), gid: process.getegid?.() }, mode: '600' },
    ]);
    logLines = [];

    expect((await new HostsManager({ hostsDir, agentUrl: AGENT, log }).reconcile(['quay.io']))[0]?.state).toBe('unchanged');
    expect(logLines).toEqual([]);

    await manager.cleanup();
    expect(await ownerOf(hostsFile('quay.io'))).toEqual([1234, 5678]);
    expect(await modeOf(hostsFile('quay.io'))).toBe('0640');
  });
});
