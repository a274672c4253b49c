import { createHash, createPrivateKey, generateKeyPairSync, type KeyObject, randomBytes, sign, X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import type { PeerCertificate } from 'node:tls';
import * as der from './der.ts';

/*
 * X.509 certificates for the peers' mutual TLS. Node can generate keys, sign, and parse certificates,
 * but cannot write one: this builds the TBSCertificate with der.ts and signs it with node:crypto.
 * Every key is a fresh ECDSA P-256 key, every signature SHA-256.
 */

/** A certificate and its private key, both PEM (the key PKCS#8). */
export interface IssuedPem {
  readonly certPem: string;
  readonly keyPem: string;
}

export interface CaOptions {
  readonly commonName: string;
  readonly validityMs: number;
  /** Milliseconds since the epoch; default Date.now(). */
  readonly now?: number;
}

export interface LeafOptions extends CaOptions {
  readonly ipAddresses?: readonly string[];
  readonly dnsNames?: readonly string[];
}

/** notBefore lies this far in the past, so a peer whose clock is a little behind accepts a fresh certificate. */
export const CLOCK_SKEW_MS = 5 * 60_000;

const OID = {
  commonName: '2.5.4.3',
  ecPublicKey: '1.2.840.10045.2.1',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
  sha256WithRsa: '1.2.840.113549.1.1.11',
  subjectKeyIdentifier: '2.5.29.14',
  keyUsage: '2.5.29.15',
  subjectAltName: '2.5.29.17',
  basicConstraints: '2.5.29.19',
  authorityKeyIdentifier: '2.5.29.35',
  extKeyUsage: '2.5.29.37',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

/** keyUsage bit numbers (RFC 5280 §4.2.1.3). */
const KEY_USAGE = { digitalSignature: 0, keyCertSign: 5, cRLSign: 6 } as const;

/** ub-common-name (RFC 5280 Appendix A). */
const MAX_COMMON_NAME = 64;

function checkCommon(options: CaOptions): { now: number; notAfter: number } {
  const { commonName, validityMs } = options;
  if (typeof commonName !== 'string' || commonName.trim() === '') throw new Error('certificate: the common name is empty');
  if ([...commonName].length > MAX_COMMON_NAME) throw new Error(`certificate: the common name is longer than ${MAX_COMMON_NAME} characters`);
  if (/[\u0000-\u001f\u007f]/.test(commonName)) throw new Error('certificate: the common name contains control characters');
  if (!Number.isFinite(validityMs) || validityMs <= 0) throw new Error(`certificate: validity must be a positive number of milliseconds, not ${validityMs}`);
  const now = options.now ?? Date.now();
  if (!Number.isFinite(now)) throw new Error(`certificate: "now" is not a time: ${now}`);
  return { now, notAfter: now + validityMs };
}

function name(commonName: string): Buffer {
  return der.sequence(der.setOf(der.sequence(der.oid(OID.commonName), der.utf8String(commonName))));
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  // DER omits a BOOLEAN that equals its DEFAULT (critical FALSE).
  return critical ? der.sequence(der.oid(id), der.boolean(true), der.octetString(value)) : der.sequence(der.oid(id), der.octetString(value));
}

/** RFC 7093 method 1: the leftmost 160 bits of SHA-256 over the subjectPublicKey bits. */
function keyIdentifier(spki: Buffer): Buffer {
  const [, key] = der.childrenOf(der.readElement(spki));
  if (key?.tag !== der.TAG.bitString) throw new Error('certificate: malformed SubjectPublicKeyInfo');
  return createHash('sha256').update(key.content.subarray(1)).digest().subarray(0, 20);
}

/** The AlgorithmIdentifier of a SHA-256 signature by `key` (an administrator's CA may be RSA). */
function signatureAlgorithm(key: KeyObject): Buffer {
  if (key.asymmetricKeyType === 'ec') return der.sequence(der.oid(OID.ecdsaWithSha256)); // parameters absent (RFC 5758)
  if (key.asymmetricKeyType === 'rsa') return der.sequence(der.oid(OID.sha256WithRsa), der.nullValue());
  throw new Error(`certificate: CA keys of type ${key.asymmetricKeyType ?? 'unknown'} are not supported (EC or RSA)`);
}

function pem(label: string, body: Buffer): string {
  const lines = body.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

interface Signer {
  readonly issuer: Buffer;
  readonly key: KeyObject;
  readonly keyId: Buffer | undefined;
}

interface Body {
  readonly subject: Buffer;
  readonly spki: Buffer;
  readonly notBefore: number;
  readonly notAfter: number;
  readonly extensions: readonly Buffer[];
}

function randomSerial(): Buffer {
  for (;;) {
    const serial = randomBytes(16);
    if (serial.some((b) => b !== 0)) return serial;
  }
}

function signCertificate(signer: Signer, body: Body): string {
  const algorithm = signatureAlgorithm(signer.key);
  const tbs = der.sequence(
    der.explicit(0, der.integer(2)), // v3
    der.integer(randomSerial()),
    algorithm,
    signer.issuer,
    der.sequence(der.time(new Date(body.notBefore)), der.time(new Date(body.notAfter))),
    body.subject,
    body.spki,
    der.explicit(3, der.sequence(...body.extensions)),
  );
  const signature = sign('sha256', tbs, signer.key); // ECDSA: DER ECDSA-Sig-Value, as X.509 wants it
  return pem('CERTIFICATE', der.sequence(tbs, algorithm, der.bitString(signature)));
}

function newKeyPair(): { spki: Buffer; keyPem: string } {
  const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { spki: publicKey.export({ type: 'spki', format: 'der' }), keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

/** A self-signed CA (ECDSA P-256, SHA-256): basicConstraints CA:true critical, keyUsage keyCertSign|cRLSign critical, subjectKeyIdentifier. */
export function createCa(options: CaOptions): IssuedPem {
  const { now, notAfter } = checkCommon(options);
  const { spki, keyPem } = newKeyPair();
  const subject = name(options.commonName);
  const keyId = keyIdentifier(spki);
  const certPem = signCertificate(
    { issuer: subject, key: createPrivateKey(keyPem), keyId },
    {
      subject,
      spki,
      notBefore: now - CLOCK_SKEW_MS,
      notAfter,
      extensions: [
        // pathLenConstraint 0: this CA issues agents' certificates, never another CA.
        extension(OID.basicConstraints, true, der.sequence(der.boolean(true), der.integer(0))),
        extension(OID.keyUsage, true, der.namedBits([KEY_USAGE.keyCertSign, KEY_USAGE.cRLSign])),
        extension(OID.subjectKeyIdentifier, false, der.octetString(keyId)),
      ],
    },
  );
  return { certPem, keyPem };
}

/** The first certificate of a PEM bundle: the issuing CA comes first, older CAs still trusted may follow. */
function firstCertificate(certPem: string): X509Certificate {
  const block = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(certPem)?.[0];
  if (block === undefined) throw new Error('CA certificate: no PEM certificate found');
  try {
    return new X509Certificate(block);
  } catch (error) {
    throw new Error(`CA certificate: cannot be parsed (${error instanceof Error ? error.message : String(error)})`);
  }
}

/** The CA's raw subject (the leaf's issuer must be byte for byte the same) and its subjectKeyIdentifier, if any. */
function caFields(ca: X509Certificate): { subject: Buffer; keyId: Buffer | undefined } {
  const [tbs] = der.childrenOf(der.readElement(ca.raw));
  if (tbs === undefined) throw new Error('CA certificate: malformed');
  const fields = der.childrenOf(tbs);
  const first = fields[0]?.tag === der.TAG.contextExplicit(0) ? 1 : 0;
  const subject = fields[first + 4];
  if (subject?.tag !== der.TAG.sequence) throw new Error('CA certificate: malformed subject');
  const wrapper = fields.find((f) => f.tag === der.TAG.contextExplicit(3));
  const extensions = wrapper === undefined ? undefined : der.childrenOf(wrapper)[0];
  const list = extensions === undefined ? [] : der.childrenOf(extensions);
  const skiOid = der.oid(OID.subjectKeyIdentifier);
  const ski = list.map((e) => der.childrenOf(e)).find((parts) => parts[0]?.encoded.equals(skiOid) === true);
  const value = ski?.at(-1);
  return { subject: Buffer.from(subject.encoded), keyId: value === undefined ? undefined : Buffer.from(der.readElement(value.content).content) };
}

function loadCa(ca: IssuedPem, now: number): Signer & { notAfter: number } {
  const cert = firstCertificate(ca.certPem);
  let key: KeyObject;
  try {
    key = createPrivateKey(ca.keyPem);
  } catch {
    throw new Error('CA key: not a PEM private key');
  }
  if (!cert.ca) throw new Error('CA certificate: not a CA (basicConstraints CA:false or missing)');
  if (!cert.checkPrivateKey(key)) throw new Error('CA key: does not belong to the CA certificate');
  signatureAlgorithm(key); // throws for key types we cannot sign with
  const notAfter = cert.validToDate.getTime();
  if (notAfter <= now) throw new Error(`CA certificate: expired at ${cert.validToDate.toISOString()}`);
  const { subject, keyId } = caFields(cert);
  return { issuer: subject, keyId, key, notAfter };
}

const DNS_NAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;

/** The 4 or 16 octets of an IPv4 or IPv6 address (RFC 5280 iPAddress). */
export function ipBytes(ip: string): Buffer {
  const version = isIP(ip);
  if (version === 4) return Buffer.from(ip.split('.').map(Number));
  if (version !== 6 || ip.includes('%')) throw new Error(`certificate: "${ip}" is not an IP address`);
  let text = ip;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(text)?.[1];
  if (v4 !== undefined) {
    const [a = 0, b = 0, c = 0, d = 0] = v4.split('.').map(Number);
    text = `${text.slice(0, -v4.length)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const groups = (part: string): string[] => (part === '' ? [] : part.split(':'));
  const left = groups(head);
  const right = tail === undefined ? [] : groups(tail);
  const all = tail === undefined ? left : [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(Number.parseInt(g, 16), i * 2));
  return out;
}

function subjectAltName(ipAddresses: readonly string[], dnsNames: readonly string[]): Buffer | undefined {
  const names: Buffer[] = [];
  for (const dns of dnsNames) {
    if (!DNS_NAME.test(dns)) throw new Error(`certificate: "${dns}" is not a DNS name`);
    names.push(der.implicit(2, der.ia5String(dns)));
  }
  for (const ip of ipAddresses) names.push(der.implicit(7, der.octetString(ipBytes(ip))));
  return names.length === 0 ? undefined : extension(OID.subjectAltName, false, der.sequence(...names));
}

/** A leaf for mutual TLS issued by `ca`: new P-256 key, random 16-byte positive serial, notBefore = now − 5 min (clock skew), extKeyUsage serverAuth+clientAuth, keyUsage digitalSignature critical, basicConstraints CA:false, SAN with the given IPs and DNS names, authorityKeyIdentifier. */
export function issueCertificate(ca: IssuedPem, options: LeafOptions): IssuedPem {
  const { now, notAfter } = checkCommon(options);
  const san = subjectAltName(options.ipAddresses ?? [], options.dnsNames ?? []);
  const signer = loadCa(ca, now);
  const { spki, keyPem } = newKeyPair();
  const extensions = [
    extension(OID.basicConstraints, true, der.sequence()),
    extension(OID.keyUsage, true, der.namedBits([KEY_USAGE.digitalSignature])),
    extension(OID.extKeyUsage, false, der.sequence(der.oid(OID.serverAuth), der.oid(OID.clientAuth))),
    extension(OID.subjectKeyIdentifier, false, der.octetString(keyIdentifier(spki))),
    // Only when the CA has a subjectKeyIdentifier: OpenSSL rejects a keyIdentifier that differs from it.
    ...(signer.keyId === undefined ? [] : [extension(OID.authorityKeyIdentifier, false, der.sequence(der.implicit(0, der.octetString(signer.keyId))))]),
    ...(san === undefined ? [] : [san]),
  ];
  // A leaf that outlives its CA fails verification anyway; ending with it keeps renewal honest.
  const end = Math.min(notAfter, signer.notAfter);
  const certPem = signCertificate(signer, { subject: name(options.commonName), spki, notBefore: now - CLOCK_SKEW_MS, notAfter: end, extensions });
  return { certPem, keyPem };
}

/**
 * `checkServerIdentity` for connections to peers: the certificate chain (verified by TLS against the
 * agents' CA, with `rejectUnauthorized: true`) is the whole identity check. Every agent is an equal
 * member and any certificate the agents' CA issued is a legitimate peer, so a host name or IP check
 * would add no security, only failures (a node's address changes, dual stack, addresses from an
 * EndpointSlice that the certificate was not issued for).
 */
export function checkPeerServerIdentity(_host: string, _cert: PeerCertificate): Error | undefined {
  return undefined;
}
