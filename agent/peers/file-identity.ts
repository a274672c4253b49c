import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { PeerIdentity, PeerIdentitySource } from './identity.ts';

export interface IdentityFiles {
  readonly caFile: string;
  readonly certFile: string;
  readonly keyFile: string;
}

/** Key material that does not fit together, named by file (never showing a key). */
export class PeerIdentityError extends Error {
  override readonly name = 'PeerIdentityError';
}

/**
 * The peer identity from PEM files (outside Kubernetes, tests): checked at start (the certificate
 * is issued by the CA, the key is the certificate's, it is valid now) and read again by `reload()`
 * (SIGHUP), which hands a changed identity to the subscribers.
 */
export class FileIdentity implements PeerIdentitySource {
  #files: IdentityFiles;
  readonly #listeners = new Set<(identity: PeerIdentity) => void>();
  #current: PeerIdentity | undefined;

  constructor(files: IdentityFiles) {
    this.#files = files;
  }

  current(): PeerIdentity | undefined {
    return this.#current;
  }

  subscribe(listener: (identity: PeerIdentity) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async start(): Promise<void> {
    await this.reload();
  }

  /**
   * Reads the files again (`files`: other paths, from a reloaded configuration); true when the
   * identity changed. Throws, and keeps the old identity and paths, when they do not fit.
   */
  async reload(files: IdentityFiles = this.#files): Promise<boolean> {
    const next = await readIdentity(files);
    this.#files = { caFile: files.caFile, certFile: files.certFile, keyFile: files.keyFile };
    const previous = this.#current;
    if (previous && previous.ca === next.ca && previous.cert === next.cert && previous.key === next.key) return false;
    this.#current = next;
    for (const listener of this.#listeners) listener(next);
    return true;
  }

  async stop(): Promise<void> {
    this.#listeners.clear();
  }
}

async function readIdentity(files: IdentityFiles, now = Date.now()): Promise<PeerIdentity> {
  const [ca, cert, key] = await Promise.all([files.caFile, files.certFile, files.keyFile].map((file) => readFile(file, 'utf8')));
  checkIdentity({ ca: ca!, cert: cert!, key: key! }, files, now);
  return { ca: ca!, cert: cert!, key: key! };
}

/** Throws a PeerIdentityError naming the file at fault. */
export function checkIdentity(identity: PeerIdentity, files: IdentityFiles, now = Date.now()): void {
  const parse = (pem: string, file: string): X509Certificate => {
    try {
      return new X509Certificate(pem);
    } catch (error) {
      throw new PeerIdentityError(`${file}: not a PEM certificate (${(error as Error).message})`);
    }
  };
  const ca = parse(identity.ca, files.caFile);
  const cert = parse(identity.cert, files.certFile);
  let key;
  try {
    key = createPrivateKey(identity.key);
  } catch {
    throw new PeerIdentityError(`${files.keyFile}: not a PEM private key`);
  }
  if (!cert.checkPrivateKey(key)) throw new PeerIdentityError(`${files.keyFile} is not the key of ${files.certFile}`);
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) throw new PeerIdentityError(`${files.certFile} is not issued by the CA in ${files.caFile}`);
  if (Date.parse(cert.validTo) <= now || Date.parse(cert.validFrom) > now) {
    throw new PeerIdentityError(`${files.certFile} is not valid now (valid ${cert.validFrom} to ${cert.validTo})`);
  }
}
