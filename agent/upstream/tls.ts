import { type SecureContext, createSecureContext, getCACertificates } from 'node:tls';
import type { MirrorCa } from '../config/types.ts';
import { UpstreamError, errorCode } from './errors.ts';

/** TLS options for undici's connector (`connect`, or a ProxyAgent's `requestTls`). */
export interface TrustOptions {
  readonly secureContext: SecureContext;
}

/**
 * What a mirror's route trusts: Node's default store plus the mirror's `ca_file`, or undefined (no
 * options: Node's default store alone). A `ca` option replaces the default store for the connections
 * that carry it, so the defaults go in first: getCACertificates('default') is the bundled roots plus
 * NODE_EXTRA_CA_CERTS (plus the system store under --use-system-ca), so a process-wide extra CA keeps
 * working for this mirror too. Built once per route as a SecureContext: passing the `ca` array itself
 * would parse every root again for each new connection.
 */
export function trustOptions(ca: MirrorCa | undefined): TrustOptions | undefined {
  if (ca === undefined) return undefined;
  return { secureContext: createSecureContext({ ca: [...getCACertificates('default'), ca.pem] }) };
}

type TlsProblem = 'untrusted' | 'name' | 'validity' | 'handshake';

/** OpenSSL's verification results as Node names them (the error's `code`), by what fixes them. */
const CERTIFICATE_CODES: Readonly<Record<string, TlsProblem>> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'untrusted',
  UNABLE_TO_GET_ISSUER_CERT: 'untrusted',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'untrusted',
  SELF_SIGNED_CERT_IN_CHAIN: 'untrusted',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'untrusted',
  CERT_UNTRUSTED: 'untrusted',
  CERT_REJECTED: 'untrusted',
  CERT_SIGNATURE_FAILURE: 'untrusted',
  CERT_CHAIN_TOO_LONG: 'untrusted',
  CERT_REVOKED: 'untrusted',
  INVALID_CA: 'untrusted',
  INVALID_PURPOSE: 'untrusted',
  PATH_LENGTH_EXCEEDED: 'untrusted',
  UNABLE_TO_DECRYPT_CERT_SIGNATURE: 'untrusted',
  UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY: 'untrusted',
  ERR_TLS_CERT_ALTNAME_INVALID: 'name',
  HOSTNAME_MISMATCH: 'name',
  CERT_HAS_EXPIRED: 'validity',
  CERT_NOT_YET_VALID: 'validity',
  ERROR_IN_CERT_NOT_BEFORE_FIELD: 'validity',
  ERROR_IN_CERT_NOT_AFTER_FIELD: 'validity',
};

/** Where the failing connection went and what the mirror trusts, for the words of the diagnosis. */
export interface TlsContext {
  readonly registry: string;
  /** The URL the connection was for: the upstream, a token realm or a redirect target. */
  readonly url: URL;
  readonly ca: MirrorCa | undefined;
}

/**
 * A transport error that is a TLS failure, as an UpstreamError with cause `tls`; undefined for any
 * other error. Such a failure is not retried (failure `proxy`: the same certificate fails the same
 * way) and is not `unreachable`: the host answered, the agent refused it, and the fix is on the
 * trust or the certificate, not the network.
 */
export function tlsError(error: unknown, context: TlsContext): UpstreamError | undefined {
  const code = errorCode(error);
  const problem = CERTIFICATE_CODES[code] ?? (code.startsWith('ERR_SSL_') ? 'handshake' : undefined);
  if (problem === undefined) return undefined;
  const { cause, fix } = explain(problem, code, detailOf(error), context);
  return new UpstreamError(context.registry, 'proxy', `TLS with ${context.url.host} failed (${code})`, {
    cause: error,
    diagnosis: { code: 'tls', cause, fix },
  });
}

function explain(problem: TlsProblem, code: string, detail: string, { registry, url, ca }: TlsContext): { cause: string; fix: string } {
  const host = url.host;
  switch (problem) {
    case 'untrusted':
      return {
        cause: `the TLS certificate of ${host} is not trusted (${code}: ${detail})${ca ? `: its issuer is in neither Node's default roots nor ca_file ${ca.file}` : ''}`,
        fix: ca
          ? `add the CA that issued ${host}'s certificate (its root, and intermediates the server does not send) to ${ca.file}, then reload the agent`
          : `set ca_file for mirror ${registry} to a PEM file with the CA that issued ${host}'s certificate (for a self-signed certificate, the certificate itself); it is trusted for this mirror on top of the default roots`,
      };
    case 'name':
      return {
        cause: `the TLS certificate of ${host} does not name ${url.hostname} (${code}: ${detail})`,
        fix: `reissue ${host}'s certificate with ${url.hostname} in its subjectAltName, or reach it by a name the certificate carries (the mirror's upstream)`,
      };
    case 'validity':
      return {
        cause: `the TLS certificate of ${host} is outside its validity period (${code}: ${detail})`,
        fix: `renew ${host}'s certificate; if it is current, check this node's clock`,
      };
    case 'handshake':
      return {
        cause: `the TLS handshake with ${host} failed (${code}: ${detail})`,
        fix: `check that ${host} speaks TLS on that port (for a plain-HTTP registry use an http:// upstream) with TLS 1.2 or newer`,
      };
  }
}

/** Node's message without the hint it appends for the CLI ("try running Node.js with --use-system-ca"). */
function detailOf(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split('; if the root CA')[0] ?? message;
}
