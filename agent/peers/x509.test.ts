import { createPrivateKey, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, request } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCommand } from '../../test/fixtures/process.ts';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import * as der from './der.ts';
import { checkPeerServerIdentity, createCa, type IssuedPem, issueCertificate } from './x509.ts';

const hex = (b: Buffer): string => b.toString('hex');
const DAY = 86_400_000;

describe('der: encodings', () => {
  it('INTEGER: shortest form, a leading zero exactly when the top bit is set, no negatives', () => {
    expect(hex(der.integer(0))).toBe('020100');
    expect(hex(der.integer(127))).toBe('02017f');
    expect(hex(der.integer(128))).toBe('02020080');
    expect(hex(der.integer(256))).toBe('02020100');
    expect(hex(der.integer(2n ** 64n))).toBe('0209010000000000000000');
    expect(hex(der.integer(Buffer.from([0, 0, 0x80])))).toBe('02020080');
    expect(hex(der.integer(Buffer.from([0, 0, 1])))).toBe('020101');
    expect(hex(der.integer(Buffer.from([0xff, 0x01])))).toBe('020300ff01');
    expect(() => der.integer(-1)).toThrow(/negative/);
    expect(() => der.integer(1.5)).toThrow(/safe integer/);
  });

  it('OBJECT IDENTIFIER: first two arcs folded, the rest base 128', () => {
    expect(hex(der.oid('1.2.840.10045.4.3.2'))).toBe('06082a8648ce3d040302');
    expect(hex(der.oid('2.5.29.14'))).toBe('0603551d0e');
    expect(hex(der.oid('2.999.3'))).toBe('0603883703');
    expect(() => der.oid('3.1')).toThrow(/malformed OID/);
    expect(() => der.oid('1.40')).toThrow(/malformed OID/);
    expect(() => der.oid('1')).toThrow(/malformed OID/);
  });

  it('lengths: short form below 128, else the fewest length octets', () => {
    expect(hex(der.octetString(Buffer.alloc(127)).subarray(0, 2))).toBe('047f');
    expect(hex(der.octetString(Buffer.alloc(200)).subarray(0, 3))).toBe('0481c8');
    expect(hex(der.octetString(Buffer.alloc(300)).subarray(0, 4))).toBe('0482012c');
    expect(hex(der.octetString(Buffer.alloc(70_000)).subarray(0, 5))).toBe('0483011170');
  });

  it('Time: UTCTime through 2049, GeneralizedTime from 2050 and before 1950, whole seconds', () => {
    const at = (iso: string): string => der.time(new Date(iso)).toString('latin1');
    expect(at('2049-12-31T23:59:59.999Z')).toBe('\x17\x0d491231235959Z');
    expect(at('2050-01-01T00:00:00Z')).toBe('\x18\x0f20500101000000Z');
    expect(at('1950-01-01T00:00:00Z')).toBe('\x17\x0d500101000000Z');
    expect(at('1949-12-31T23:59:59Z')).toBe('\x18\x0f19491231235959Z');
    expect(at('2026-03-04T05:06:07Z')).toBe('\x17\x0d260304050607Z');
    expect(() => der.utcTime(new Date('2050-01-01T00:00:00Z'))).toThrow(/UTCTime/);
    expect(() => der.time(new Date(Number.NaN))).toThrow(/cannot hold/);
  });

  it('BIT STRING: named bits drop trailing zero bits; raw bytes carry their unused-bit count', () => {
    expect(hex(der.namedBits([5, 6]))).toBe('03020106'); // keyCertSign | cRLSign
    expect(hex(der.namedBits([0]))).toBe('03020780'); // digitalSignature
    expect(hex(der.namedBits([7]))).toBe('03020001');
    expect(hex(der.namedBits([8]))).toBe('0303070080');
    expect(hex(der.namedBits([]))).toBe('030100');
    expect(hex(der.bitString(Buffer.from([0xab])))).toBe('030200ab');
    expect(() => der.bitString(Buffer.alloc(0), 3)).toThrow(/unused bits/);
  });

  it('BOOLEAN, NULL, strings, SET OF ordering, explicit and implicit context tags', () => {
    expect(hex(der.boolean(true))).toBe('0101ff');
    expect(hex(der.boolean(false))).toBe('010100');
    expect(hex(der.nullValue())).toBe('0500');
    expect(hex(der.utf8String('né'))).toBe('0c036ec3a9');
    expect(hex(der.printableString('Ab 1'))).toBe('130441622031');
    expect(() => der.printableString('a@b')).toThrow(/PrintableString/);
    expect(() => der.ia5String('é')).toThrow(/IA5String/);
    expect(hex(der.setOf(der.integer(2), der.integer(1)))).toBe('3106020101020102');
    expect(hex(der.sequence(der.integer(2), der.integer(1)))).toBe('3006020102020101');
    expect(hex(der.explicit(0, der.integer(2)))).toBe('a003020102');
    expect(hex(der.implicit(2, der.ia5String('a')))).toBe('820161');
    expect(hex(der.implicit(0, der.sequence()))).toBe('a000');
    expect(() => der.explicit(31, der.nullValue())).toThrow(/not supported/);
  });

  it('reads back what it writes and refuses truncated or non-minimal input', () => {
    const encoded = der.sequence(der.integer(5), der.octetString(Buffer.alloc(300, 1)), der.explicit(3, der.boolean(true)));
    const [a, b, c] = der.childrenOf(der.readElement(encoded));
    expect(a?.tag).toBe(0x02);
    expect(hex(a?.content ?? Buffer.alloc(0))).toBe('05');
    expect(b?.content.length).toBe(300);
    expect(c?.tag).toBe(der.TAG.contextExplicit(3));
    expect(() => der.readElement(encoded.subarray(0, encoded.length - 1))).toThrow(/longer than its input/);
    expect(() => der.readElement(Buffer.from('04810100', 'hex'))).toThrow(/shortest form/);
    expect(() => der.readElement(Buffer.from('3080', 'hex'))).toThrow(/indefinite/);
    expect(() => der.readElement(Buffer.from('04', 'hex'))).toThrow(/truncated/);
  });
});

describe('x509: certificates', () => {
  const NOW = Date.UTC(2031, 4, 6, 7, 8, 9, 750);
  let ca: IssuedPem;
  let caCert: X509Certificate;

  beforeAll(() => {
    ca = createCa({ commonName: 'agents CA', validityMs: 365 * DAY, now: NOW });
    caCert = new X509Certificate(ca.certPem);
  });

  it('a CA: self-signed, CA flag, validity from now − 5 min to now + validity (whole seconds)', () => {
    expect(caCert.subject).toBe('CN=agents CA');
    expect(caCert.issuer).toBe('CN=agents CA');
    expect(caCert.ca).toBe(true);
    expect(caCert.checkIssued(caCert)).toBe(true);
    expect(caCert.verify(caCert.publicKey)).toBe(true);
    expect(caCert.validFromDate.getTime()).toBe(NOW - 750 - 5 * 60_000);
    expect(caCert.validToDate.getTime()).toBe(NOW - 750 + 365 * DAY);
    expect(caCert.publicKey.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
  });

  it('a leaf: issued by the CA, its SANs, serverAuth + clientAuth, not a CA, its own fresh key', () => {
    const leaf = issueCertificate(ca, { commonName: 'node-a', ipAddresses: ['10.1.2.3', 'fd00::1', '::ffff:192.0.2.1'], dnsNames: ['node-a.example'], validityMs: 7 * DAY, now: NOW });
    const cert = new X509Certificate(leaf.certPem);
    expect(cert.subject).toBe('CN=node-a');
    expect(cert.issuer).toBe('CN=agents CA');
    expect(cert.ca).toBe(false);
    expect(cert.checkIssued(caCert)).toBe(true);
    expect(cert.verify(caCert.publicKey)).toBe(true);
    expect(cert.subjectAltName).toBe('DNS:node-a.example, IP Address:10.1.2.3, IP Address:FD00:0:0:0:0:0:0:1, IP Address:0:0:0:0:0:FFFF:C000:201');
    expect(cert.checkIP('10.1.2.3')).toBe('10.1.2.3');
    expect(cert.checkIP('fd00:0::1')).toBe('fd00:0::1');
    expect(cert.checkIP('10.1.2.4')).toBeUndefined();
    expect(cert.checkHost('node-a.example')).toBe('node-a.example');
    expect(cert.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
    expect(cert.validFromDate.getTime()).toBe(NOW - 750 - 5 * 60_000);
    expect(cert.validToDate.getTime()).toBe(NOW - 750 + 7 * DAY);
    expect(cert.checkPrivateKey(createPrivateKey(leaf.keyPem))).toBe(true);
    expect(cert.checkPrivateKey(createPrivateKey(ca.keyPem))).toBe(false);
    expect(leaf.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    const other = createCa({ commonName: 'agents CA', validityMs: DAY, now: NOW });
    expect(cert.verify(new X509Certificate(other.certPem).publicKey)).toBe(false);
  });

  it('serials are random and positive, with at most 16 bytes of magnitude', () => {
    const serials = Array.from({ length: 64 }, () => {
      const raw = new X509Certificate(issueCertificate(ca, { commonName: 'n', validityMs: DAY, now: NOW }).certPem).raw;
      const [tbs] = der.childrenOf(der.readElement(raw));
      const serial = tbs === undefined ? undefined : der.childrenOf(tbs)[1];
      if (serial?.tag !== der.TAG.integer) throw new Error('no serial number');
      return serial.content;
    });
    expect(new Set(serials.map(hex)).size).toBe(64);
    for (const s of serials) {
      expect(s[0]! & 0x80).toBe(0); // a set top bit would make it negative: DER then needs a leading zero
      expect(s.length).toBeLessThanOrEqual(17);
      expect(s.length === 17 ? s[0] : 0).toBe(0);
    }
    // Half of all random serials have the top bit set: at least one of 64 takes the leading-zero path.
    expect(serials.some((s) => s.length === 17)).toBe(true);
  });

  it('uses GeneralizedTime past 2049 (a UTCTime would read back as 1950s)', () => {
    const late = createCa({ commonName: 'late', validityMs: 10 * 365 * DAY, now: Date.UTC(2045, 0, 1) });
    expect(new X509Certificate(late.certPem).validToDate.getUTCFullYear()).toBe(2054);
    const leaf = issueCertificate(late, { commonName: 'n', validityMs: 8 * 365 * DAY, now: Date.UTC(2045, 0, 1) });
    expect(new X509Certificate(leaf.certPem).validToDate.getUTCFullYear()).toBe(2052);
  });

  it('ends a leaf with its CA when the CA expires first', () => {
    const short = createCa({ commonName: 'short', validityMs: DAY, now: NOW });
    const leaf = new X509Certificate(issueCertificate(short, { commonName: 'n', validityMs: 7 * DAY, now: NOW }).certPem);
    expect(leaf.validToDate.getTime()).toBe(new X509Certificate(short.certPem).validToDate.getTime());
  });

  it('rejects bad input with a message naming the problem', () => {
    const leaf = (o: Partial<Parameters<typeof issueCertificate>[1]>, from: IssuedPem = ca): IssuedPem => issueCertificate(from, { commonName: 'n', validityMs: DAY, now: NOW, ...o });
    expect(() => createCa({ commonName: '', validityMs: DAY })).toThrow(/common name is empty/);
    expect(() => leaf({ commonName: '  ' })).toThrow(/common name is empty/);
    expect(() => leaf({ commonName: 'x'.repeat(65) })).toThrow(/longer than 64/);
    expect(() => leaf({ commonName: 'a\nb' })).toThrow(/control characters/);
    for (const validityMs of [0, -1, Number.NaN, Number.POSITIVE_INFINITY]) expect(() => leaf({ validityMs })).toThrow(/positive number/);
    for (const ip of ['10.0.0.256', 'fe80::1%eth0', 'node-a', '', '1.2.3']) expect(() => leaf({ ipAddresses: [ip] })).toThrow(/not an IP address/);
    for (const dns of ['-bad.example', 'a..b', '', 'under_score.example']) expect(() => leaf({ dnsNames: [dns] })).toThrow(/not a DNS name/);
    const other = createCa({ commonName: 'other', validityMs: DAY, now: NOW });
    expect(() => leaf({}, { certPem: ca.certPem, keyPem: other.keyPem })).toThrow(/does not belong/);
    expect(() => leaf({}, leaf({}))).toThrow(/not a CA/);
    expect(() => leaf({ now: NOW + 366 * DAY })).toThrow(/expired at/);
    expect(() => leaf({}, { certPem: 'garbage', keyPem: ca.keyPem })).toThrow(/no PEM certificate/);
    expect(() => leaf({}, { certPem: ca.certPem, keyPem: 'garbage' })).toThrow(/not a PEM private key/);
    expect(() => leaf({}, { certPem: ca.certPem.replace(/[A-Za-z]{8}\n/, 'AAAAAAAA\n'), keyPem: ca.keyPem })).toThrow(/CA certificate/);
  });
});

const opensslAvailable = (await runCommand('openssl', ['version'], { timeoutMs: 10_000 }).catch(() => ({ code: -1 }))).code === 0;

describe('x509: OpenSSL agrees', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await makeTempDir('x509-openssl');
  });
  afterAll(async () => {
    await removeTempDir(dir);
  });

  // Skipped only where the openssl binary is absent (the CI image has it).
  it.skipIf(!opensslAvailable)('openssl verify -x509_strict accepts the leaf for TLS server and client use, and refuses it under another CA', async () => {
    const ca = createCa({ commonName: 'agents CA', validityMs: DAY });
    const leaf = issueCertificate(ca, { commonName: 'node-a', ipAddresses: ['10.0.0.7'], validityMs: DAY });
    const other = createCa({ commonName: 'agents CA', validityMs: DAY });
    await writeFile(join(dir, 'ca.pem'), ca.certPem);
    await writeFile(join(dir, 'other.pem'), other.certPem);
    await writeFile(join(dir, 'leaf.pem'), leaf.certPem);
    for (const purpose of ['sslserver', 'sslclient']) {
      const ok = await runCommand('openssl', ['verify', '-x509_strict', '-purpose', purpose, '-CAfile', join(dir, 'ca.pem'), join(dir, 'leaf.pem')], { timeoutMs: 15_000 });
      expect(ok.stdout + ok.stderr).toContain('leaf.pem: OK');
      expect(ok.code).toBe(0);
    }
    const refused = await runCommand('openssl', ['verify', '-x509_strict', '-CAfile', join(dir, 'other.pem'), join(dir, 'leaf.pem')], { timeoutMs: 15_000 });
    expect(refused.code).not.toBe(0);

    const text = await runCommand('openssl', ['x509', '-noout', '-text', '-in', join(dir, 'leaf.pem')], { timeoutMs: 15_000 });
    expect(text.stdout).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
    expect(text.stdout).toMatch(/Key Usage: critical\s+Digital Signature\n/);
    expect(text.stdout).toMatch(/Extended Key Usage: \s*TLS Web Server Authentication, TLS Web Client Authentication/);
    expect(text.stdout).toMatch(/Authority Key Identifier: \s*[0-9A-F:]{59}/);
    expect(text.stdout).toContain('Signature Algorithm: ecdsa-with-SHA256');
    const caText = await runCommand('openssl', ['x509', '-noout', '-text', '-in', join(dir, 'ca.pem')], { timeoutMs: 15_000 });
    expect(caText.stdout).toMatch(/Basic Constraints: critical\s+CA:TRUE, pathlen:0/);
    expect(caText.stdout).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);
    const ski = /Subject Key Identifier: \s*([0-9A-F:]+)/.exec(caText.stdout)?.[1];
    expect(text.stdout).toContain(`Authority Key Identifier: \n                ${ski}`);
  });

  it.skipIf(!opensslAvailable)('issues from a CA an administrator made with openssl: RSA, sha256WithRSAEncryption, its own key identifier', async () => {
    const [caKey, caPem] = [join(dir, 'rsa-ca.key'), join(dir, 'rsa-ca.pem')];
    const made = await runCommand(
      'openssl',
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', caKey, '-out', caPem, '-days', '30', '-subj', '/O=Example Corp/CN=Peer CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign', '-addext', 'subjectKeyIdentifier=hash'],
      { timeoutMs: 30_000 },
    );
    expect(made.code, made.stderr).toBe(0);
    const rsaCa = { certPem: await readFile(caPem, 'utf8'), keyPem: await readFile(caKey, 'utf8') };
    const leaf = issueCertificate(rsaCa, { commonName: 'node-a', validityMs: DAY });
    const cert = new X509Certificate(leaf.certPem);
    expect(cert.issuer).toBe('O=Example Corp\nCN=Peer CA');
    expect(cert.checkIssued(new X509Certificate(rsaCa.certPem))).toBe(true);
    await writeFile(join(dir, 'rsa-leaf.pem'), leaf.certPem);
    const ok = await runCommand('openssl', ['verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', caPem, join(dir, 'rsa-leaf.pem')], { timeoutMs: 15_000 });
    expect(ok.stdout + ok.stderr).toContain('rsa-leaf.pem: OK');
    const text = await runCommand('openssl', ['x509', '-noout', '-text', '-in', join(dir, 'rsa-leaf.pem')], { timeoutMs: 15_000 });
    expect(text.stdout).toContain('Signature Algorithm: sha256WithRSAEncryption');
  });
});

// ─── Mutual TLS ──────────────────────────────────────────────────────────────────────────────────

interface Outcome {
  /** The response body: the server saw a verified client certificate. */
  body?: string;
  /** Why the client failed (its error code). */
  clientError?: string;
  /** The server's side of the same connection: 'accepted', or the code of the error it refused it with. */
  server: string;
}

interface ClientSide {
  readonly ca: string;
  readonly identity?: IssuedPem;
  readonly checkServerIdentity?: typeof checkPeerServerIdentity;
}

/**
 * One connection to a fresh peer listener as the agent runs it (client certificates required and
 * verified against `serverCa`). One listener per connection, so its first verdict (handshake accepted,
 * or refused and why) belongs to this client and to no other.
 */
async function handshake(serverIdentity: IssuedPem, serverCa: string, client: ClientSide): Promise<Outcome> {
  const server = createServer({ key: serverIdentity.keyPem, cert: serverIdentity.certPem, ca: serverCa, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    const peer: PeerCertificate = (req.socket as TLSSocket).getPeerCertificate();
    res.end(`hello ${peer.subject.CN}`);
  });
  const verdict = new Promise<string>((resolve) => {
    server.once('secureConnection', () => resolve('accepted'));
    server.once('tlsClientError', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const outcome = await new Promise<Omit<Outcome, 'server'>>((resolve) => {
      const req = request(
        {
          host: '127.0.0.1',
          port: (server.address() as AddressInfo).port,
          path: '/',
          agent: false,
          ca: client.ca,
          ...(client.identity === undefined ? {} : { key: client.identity.keyPem, cert: client.identity.certPem }),
          ...(client.checkServerIdentity === undefined ? {} : { checkServerIdentity: client.checkServerIdentity }),
        },
        (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => (body += chunk));
          res.on('end', () => resolve({ body }));
          res.on('error', (error: NodeJS.ErrnoException) => resolve({ clientError: error.code ?? error.message }));
        },
      );
      req.on('error', (error: NodeJS.ErrnoException) => resolve({ clientError: error.code ?? error.message }));
      req.end();
    });
    return { ...outcome, server: await verdict };
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
}

describe('x509: real mutual-TLS handshakes', () => {
  let ca: IssuedPem;
  let other: IssuedPem;
  let nodeA: IssuedPem;
  let nodeB: IssuedPem;

  const issued = (commonName: string, from: IssuedPem, extra: { now?: number; validityMs?: number; ipAddresses?: string[] } = {}): IssuedPem =>
    issueCertificate(from, { commonName, ipAddresses: ['127.0.0.1'], validityMs: DAY, ...extra });

  beforeAll(() => {
    ca = createCa({ commonName: 'agents CA', validityMs: DAY });
    other = createCa({ commonName: 'agents CA', validityMs: DAY }); // same name, different key: only the signature tells them apart
    nodeA = issued('node-a', ca);
    nodeB = issued('node-b', ca);
  });

  const chainOnly = { checkServerIdentity: checkPeerServerIdentity };

  it('a client with a certificate from the agents’ CA is served, and the server sees who it is', async () => {
    expect(await handshake(nodeA, ca.certPem, { ca: ca.certPem, identity: nodeB, ...chainOnly })).toEqual({ body: 'hello node-b', server: 'accepted' });
  });

  it('a client without a certificate is refused by the server', async () => {
    const outcome = await handshake(nodeA, ca.certPem, { ca: ca.certPem, ...chainOnly });
    expect(outcome.body).toBeUndefined();
    expect(outcome.clientError).toBeDefined();
    expect(outcome.server).toBe('ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE');
  });

  it('the same client is served once its certificate is issued by the CA the listener trusts', async () => {
    // The counterpart of the refusals: the listener trusts a bundle (a rotation in progress), the client's CA is in it.
    const outcome = await handshake(nodeA, `${ca.certPem}${other.certPem}`, { ca: ca.certPem, identity: issued('rotated', other), ...chainOnly });
    expect(outcome).toEqual({ body: 'hello rotated', server: 'accepted' });
  });

  it('a client with a certificate from another CA (same CA name) is refused by the server', async () => {
    const outcome = await handshake(nodeA, ca.certPem, { ca: ca.certPem, identity: issued('intruder', other), ...chainOnly });
    // Node's server finishes the handshake, finds the verification error and destroys the socket:
    // no 'secureConnection', no request, and no reason on the server side.
    expect(outcome).toEqual({ clientError: 'ECONNRESET', server: 'ECONNRESET' });
  });

  it('an expired certificate is refused, on either side', async () => {
    const expired = issued('old', ca, { now: Date.now() - 2 * DAY, validityMs: DAY });
    expect(new X509Certificate(expired.certPem).validToDate.getTime()).toBeLessThan(Date.now());

    const asClient = await handshake(nodeA, ca.certPem, { ca: ca.certPem, identity: expired, ...chainOnly });
    expect(asClient).toEqual({ clientError: 'ECONNRESET', server: 'ECONNRESET' });

    const asServer = await handshake(expired, ca.certPem, { ca: ca.certPem, identity: nodeB, ...chainOnly });
    expect(asServer.body).toBeUndefined();
    expect(asServer.clientError).toBe('CERT_HAS_EXPIRED');
  });

  it('the client refuses a server certificate from another CA, even with the chain-only identity check', async () => {
    const outcome = await handshake(issued('impostor', other), other.certPem, { ca: ca.certPem, identity: nodeB, ...chainOnly });
    expect(outcome.body).toBeUndefined();
    // The listener sends its CA along; the client has another certificate of that name, whose signature does not match.
    expect(outcome.clientError).toBe('SELF_SIGNED_CERT_IN_CHAIN');
    expect(outcome.server).not.toBe('accepted');
  });

  it('the chain is the identity: a peer reached at an address its certificate does not name is still a peer', async () => {
    // The certificate names 10.9.9.9; the client reaches it as 127.0.0.1 (a node with a new address, another interface).
    const elsewhere = issued('node-a', ca, { ipAddresses: ['10.9.9.9'] });
    const strict = await handshake(elsewhere, ca.certPem, { ca: ca.certPem, identity: nodeB });
    expect(strict.clientError).toBe('ERR_TLS_CERT_ALTNAME_INVALID');
    expect(await handshake(elsewhere, ca.certPem, { ca: ca.certPem, identity: nodeB, ...chainOnly })).toEqual({ body: 'hello node-b', server: 'accepted' });
  });
});
