/**
 * Upstream wants credentials the puller has not (validly) presented. Carries the upstream's
 * challenge; the HTTP surface rewrites a Bearer realm so the token request comes to the agent.
 */
export class AuthRequiredError extends Error {
  override readonly name = 'AuthRequiredError';
  readonly registry: string;
  /** The upstream's WWW-Authenticate header value, untouched. */
  readonly challenge: string | undefined;

  constructor(registry: string, challenge: string | undefined, message = 'authentication required') {
    super(message);
    this.registry = registry;
    this.challenge = challenge;
  }
}

/** The puller presented a credential and upstream (or the agent's memory of it) refused it. */
export class AccessDeniedError extends Error {
  override readonly name = 'AccessDeniedError';
  readonly registry: string;
  constructor(registry: string, message: string) {
    super(message);
    this.registry = registry;
  }
}
