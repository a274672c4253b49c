/**
 * Upstream wants credentials the puller has not (validly) presented, or the agent cannot vouch for
 * the puller while upstream is away. Carries the challenge for the puller: a Bearer realm already
 * points at the agent's token endpoint (see AccessBroker).
 */
export class AuthRequiredError extends Error {
  override readonly name = 'AuthRequiredError';
  readonly registry: string;
  /** The WWW-Authenticate value for the puller. */
  readonly challenge: string | undefined;

  constructor(registry: string, challenge: string | undefined, message = 'authentication required') {
    super(message);
    this.registry = registry;
    this.challenge = challenge;
  }
}

/** A token request names a realm this mirror did not learn from its upstream (or the mirror is not passthrough). */
export class TokenRealmUnknownError extends Error {
  override readonly name = 'TokenRealmUnknownError';
  readonly registry: string;

  constructor(registry: string) {
    super(`unknown token realm for registry ${registry}`);
    this.registry = registry;
  }
}

/** A realm's token answer over the size any real one has. */
export class TokenTooLargeError extends Error {
  override readonly name = 'TokenTooLargeError';
  readonly registry: string;

  constructor(registry: string) {
    super(`the token endpoint of ${registry} sent an answer over the size limit`);
    this.registry = registry;
  }
}
