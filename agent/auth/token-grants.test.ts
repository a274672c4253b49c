import { describe, expect, it } from 'vitest';
import { hashCredential } from './access-memory.ts';
import { TokenGrants, realmKey } from './token-grants.ts';

const alice = hashCredential('password:alice\0wonder land');
const answer = (fields: Record<string, unknown>): Buffer => Buffer.from(JSON.stringify(fields));

describe('TokenGrants', () => {
  it('names the credential a forwarded token was issued to, for the repositories it was asked for only', () => {
    const grants = new TokenGrants();
    grants.record(answer({ token: 'tok-1', expires_in: 300 }), alice, ['priv/app'], 0);
    expect(grants.issuedTo('Bearer tok-1', 'priv/app', 1)).toBe(alice);
    expect(grants.issuedTo('bearer tok-1', 'priv/app', 1)).toBe(alice);
    expect(grants.issuedTo('Bearer tok-1', 'other/app', 1)).toBeUndefined();
    expect(grants.issuedTo('Bearer tok-2', 'priv/app', 1)).toBeUndefined();
    expect(grants.issuedTo('Basic tok-1', 'priv/app', 1)).toBeUndefined();
    expect(grants.issuedTo(undefined, 'priv/app', 1)).toBeUndefined();
  });

  it('knows both token fields of an answer (GET answers token, OAuth2 POST answers access_token)', () => {
    const grants = new TokenGrants();
    grants.record(answer({ token: 'a', access_token: 'b' }), alice, ['priv/app'], 0);
    expect(grants.issuedTo('Bearer a', 'priv/app', 1)).toBe(alice);
    expect(grants.issuedTo('Bearer b', 'priv/app', 1)).toBe(alice);
  });

  it("forgets a token at the end of its life (expires_in, else the spec's 60 s)", () => {
    const grants = new TokenGrants();
    grants.record(answer({ access_token: 'short', expires_in: 5 }), alice, ['priv/app'], 0);
    grants.record(answer({ token: 'default' }), alice, ['priv/app'], 0);
    expect(grants.issuedTo('Bearer short', 'priv/app', 4_999)).toBe(alice);
    expect(grants.issuedTo('Bearer short', 'priv/app', 5_000)).toBeUndefined();
    expect(grants.issuedTo('Bearer default', 'priv/app', 59_999)).toBe(alice);
    expect(grants.issuedTo('Bearer default', 'priv/app', 60_000)).toBeUndefined();
  });

  it('ignores answers that carry no token', () => {
    const grants = new TokenGrants();
    for (const body of ['not json', '[]', 'null', '{"token":42}', '{"token":""}', '{}']) grants.record(Buffer.from(body), alice, ['priv/app'], 0);
    grants.record(answer({ token: 'no-scope' }), alice, [], 0);
    expect(grants.size).toBe(0);
  });

  it('is bounded: the least recently used tokens go first', () => {
    const grants = new TokenGrants(2);
    for (const token of ['t1', 't2', 't3']) grants.record(answer({ token }), alice, ['priv/app'], 0);
    expect(grants.size).toBe(2);
    expect(grants.issuedTo('Bearer t1', 'priv/app', 1)).toBeUndefined();
    expect(grants.issuedTo('Bearer t3', 'priv/app', 1)).toBe(alice);
  });

  it('keys realm credentials apart from repositories', () => {
    expect(realmKey('priv/app')).not.toBe('priv/app');
  });
});
