import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import { FileIdentity, PeerIdentityError } from './file-identity.ts';
import type { PeerIdentity } from './identity.ts';
import { createCa, issueCertificate } from './x509.ts';

const DAY = 24 * 60 * 60_000;
let dir: string;

beforeAll(async () => {
  dir = await makeTempDir('file-identity-');
});

afterAll(async () => {
  await removeTempDir(dir);
});

async function files(name: string, ca: string, cert: string, key: string): Promise<{ caFile: string; certFile: string; keyFile: string }> {
  const paths = { caFile: join(dir, `${name}-ca.crt`), certFile: join(dir, `${name}.crt`), keyFile: join(dir, `${name}.key`) };
  await writeFile(paths.caFile, ca);
  await writeFile(paths.certFile, cert);
  await writeFile(paths.keyFile, key);
  return paths;
}

describe('FileIdentity: peer key material from PEM files', () => {
  const ca = createCa({ commonName: 'agents', validityMs: DAY });
  const expiredFiles = () => {
    const old = issueCertificate(ca, { commonName: 'old', validityMs: 60_000, now: Date.now() - DAY / 2 });
    return files('expired', ca.certPem, old.certPem, old.keyPem);
  };
  const other = createCa({ commonName: 'someone else', validityMs: DAY });
  const leaf = issueCertificate(ca, { commonName: 'node-a', validityMs: DAY });

  it('loads a certificate the CA issued with its key, and hands a changed one to subscribers on reload', async () => {
    const paths = await files('good', ca.certPem, leaf.certPem, leaf.keyPem);
    const identity = new FileIdentity(paths);
    const seen: PeerIdentity[] = [];
    identity.subscribe((next) => seen.push(next));
    await identity.start();
    expect(identity.current()).toEqual({ ca: ca.certPem, cert: leaf.certPem, key: leaf.keyPem });
    expect(await identity.reload()).toBe(false);
    const renewed = issueCertificate(ca, { commonName: 'node-a', validityMs: DAY });
    await writeFile(paths.certFile, renewed.certPem);
    await writeFile(paths.keyFile, renewed.keyPem);
    expect(await identity.reload()).toBe(true);
    expect(seen.map((s) => s.cert)).toEqual([leaf.certPem, renewed.certPem]);
  });

  it('takes other paths on reload (a changed configuration), and keeps the old ones when the new files do not fit', async () => {
    const first = await files('first', ca.certPem, leaf.certPem, leaf.keyPem);
    const identity = new FileIdentity(first);
    await identity.start();
    const other = issueCertificate(ca, { commonName: 'node-a', validityMs: DAY });
    const second = await files('second', ca.certPem, other.certPem, other.keyPem);
    expect(await identity.reload(second)).toBe(true);
    expect(identity.current()?.cert).toBe(other.certPem);
    const broken = await files('broken', ca.certPem, leaf.certPem, other.keyPem);
    await expect(identity.reload(broken)).rejects.toBeInstanceOf(PeerIdentityError);
    expect(identity.current()?.cert).toBe(other.certPem);
    // The paths in use are still the good ones.
    expect(await identity.reload()).toBe(false);
  });

  it.each([
    ['a key that is not the certificate’s', () => files('wrong-key', ca.certPem, leaf.certPem, issueCertificate(ca, { commonName: 'x', validityMs: DAY }).keyPem), 'is not the key of'],
    ['a certificate from another CA', () => files('other-ca', other.certPem, leaf.certPem, leaf.keyPem), 'is not issued by the CA in'],
    ['an expired certificate', () => expiredFiles(), 'is not valid now'],
    ['a file that is not PEM', () => files('garbage', 'hello', leaf.certPem, leaf.keyPem), 'not a PEM certificate'],
  ])('refuses %s, naming the file, and keeps the identity it had', async (_what, make, message) => {
    const paths = await make();
    const identity = new FileIdentity(paths);
    const error = await identity.start().then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(PeerIdentityError);
    expect((error as Error).message).toContain(message);
    expect((error as Error).message).not.toContain('PRIVATE KEY');
    expect(identity.current()).toBeUndefined();
  });
});
