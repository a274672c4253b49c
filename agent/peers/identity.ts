/**
 * The key material of the peer listener and of this agent's peer client: one certificate, its key,
 * and the CA every agent's certificate is issued by. Both directions are authenticated against that
 * CA (mutual TLS): a connection without a certificate it issued gets nothing.
 */
export interface PeerIdentity {
  /** PEM: the CA certificate(s) peers are checked against. */
  readonly ca: string;
  /** PEM: this agent's certificate (with the chain up to, not including, the CA). */
  readonly cert: string;
  /** PEM: this agent's private key. Never logged. */
  readonly key: string;
}

/**
 * Where the identity comes from (files, or a CA Secret in Kubernetes). `current()` is undefined until
 * the first identity is known: peers are then not used (fail closed), pulls go upstream.
 */
export interface PeerIdentitySource {
  current(): PeerIdentity | undefined;
  /** Called with every new identity (a renewed certificate, a rotated CA); returns the unsubscribe. */
  subscribe(listener: (identity: PeerIdentity) => void): () => void;
  start(): Promise<void>;
  stop(): Promise<void>;
}
