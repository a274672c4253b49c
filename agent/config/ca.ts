import { X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import type { MirrorCa } from './types.ts';

const BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g;
const MAX_BYTES = 4 * 1024 * 1024;

/**
 * Reads and checks a `ca_file` (already an absolute path). Read here, at load, rather than when the
 * route is built: a typo or a wrong file must stop start-up (or a reload) with the key named, not
 * surface later as a certificate error on the first pull. Certificates are public, so the path and
 * what is wrong with the content may appear in messages. Throws a plain Error naming the file.
 */
export function readCaFile(file: string): MirrorCa {
  let text: string;
  try {
    const stat = statSync(file);
    if (!stat.isFile()) throw new Error(`${file} is not a regular file`);
    // Every root of a public bundle together is ~250 KiB; anything this large is the wrong file.
    if (stat.size > MAX_BYTES) throw new Error(`${file} is over ${MAX_BYTES} bytes: not a CA bundle`);
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new Error(`cannot read ${file}: ${(error as Error).message}`, { cause: error });
  }
  return { file, pem: checkBundle(file, text) };
}

/** The PEM certificates of `text` joined, or an Error saying why it is no CA bundle. */
function checkBundle(file: string, text: string): string {
  const blocks = [...text.matchAll(BLOCK)];
  if (blocks.some((b) => /PRIVATE KEY/.test(b[1] ?? ''))) {
    throw new Error(`${file} contains a private key: ca_file takes CA certificates only (keep keys out of it)`);
  }
  const certificates = blocks.filter((b) => b[1] === 'CERTIFICATE').map((b) => b[0]);
  if (certificates.length === 0) {
    throw new Error(`${file} is not a PEM certificate bundle: no "-----BEGIN CERTIFICATE-----" block found (DER files must be converted: openssl x509 -inform der -in FILE -out FILE.pem)`);
  }
  certificates.forEach((pem, i) => {
    try {
      new X509Certificate(pem);
    } catch (error) {
      throw new Error(`${file}: certificate ${i + 1} of ${certificates.length} is not a valid X.509 certificate (${(error as Error).message})`, { cause: error });
    }
  });
  return `${certificates.join('\n')}\n`;
}
