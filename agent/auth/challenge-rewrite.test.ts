import { describe, expect, it } from 'vitest';
import { parseChallenge } from '../upstream/challenge.ts';
import { challengeForRepository } from './challenge-rewrite.ts';

describe('challengeForRepository', () => {
  it("scopes a remembered Bearer challenge to the requested repository and drops another puller's error", () => {
    const remembered = 'Bearer realm="http://auth.example/token",service="registry",scope="repository:priv/other/app:pull",error="insufficient_scope"';
    const challenge = parseChallenge(challengeForRepository(remembered, 'priv/app'));
    expect(challenge).toEqual({ scheme: 'bearer', params: { realm: 'http://auth.example/token', service: 'registry', scope: 'repository:priv/app:pull' } });
  });

  it('leaves Basic challenges alone', () => {
    expect(challengeForRepository('Basic realm="registry"', 'priv/app')).toBe('Basic realm="registry"');
  });
});
