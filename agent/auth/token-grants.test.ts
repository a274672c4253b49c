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

  it('a token asked for too many repositories (or too long names) is not remembered', () => {
    const grants = new TokenGrants();
    grants.record(answer({ token: 'many' }), alice, Array.from({ length: 17 }, (_, i) => `pub/app-${i}`), 0);
    grants.record(answer({ token: 'long' }), alice, ['a'.repeat(2_049)], 0);
    grants.record(answer({ token: 'ok' }), alice, Array.from({ length: 16 }, (_, i) => `pub/app-${i}`), 0);
    expect(grants.size).toBe(1);
    expect(grants.issuedTo('Bearer ok', 'pub/app-15', 1)).toBe(alice);
  });

  it('unconfirmed tokens are bounded apart: a flood of them never displaces a token upstream accepted', () => {
    const grants = new TokenGrants({ unconfirmed: 3, confirmed: 10 });
    const anonymous = hashCredential('anonymous');
    grants.record(answer({ token: 'alice-1', expires_in: 300 }), alice, ['priv/app'], 0);
    grants.confirm('Bearer alice-1', 'priv/app', 1);
    for (let i = 0; i < 10_000; i += 1) grants.record(answer({ token: `anon-${i}`, expires_in: 300 }), anonymous, ['priv/app'], 0);
    expect(grants.size).toBe(4);
    expect(grants.issuedTo('Bearer alice-1', 'priv/app', 1)).toBe(alice);
    expect(grants.issuedTo('Bearer anon-9999', 'priv/app', 1)).toBe(anonymous);
    expect(grants.issuedTo('Bearer anon-9996', 'priv/app', 1)).toBeUndefined();
  });

  it('confirmed tokens are grouped by the repository upstream accepted them for: a flood in one displaces only its own', () => {
    const grants = new TokenGrants({ confirmed: 5 });
    const anonymous = hashCredential('anonymous');
    grants.record(answer({ token: 'alice-1' }), alice, ['priv/app'], 0);
    grants.confirm('Bearer alice-1', 'priv/app', 1);
    for (let i = 0; i < 1_000; i += 1) {
      grants.record(answer({ token: `anon-${i}` }), anonymous, ['pub/app'], 0);
      grants.confirm(`Bearer anon-${i}`, 'pub/app', 1);
    }
    expect(grants.size).toBe(5);
    expect(grants.grantOf('Bearer alice-1', 'priv/app', 2)?.acceptedFor).toEqual(new Set(['priv/app']));
    expect(grants.issuedTo('Bearer anon-999', 'pub/app', 2)).toBe(anonymous);
    expect(grants.issuedTo('Bearer anon-995', 'pub/app', 2)).toBeUndefined();
    // Confirming is for a repository the token was asked for only.
    grants.confirm('Bearer alice-1', 'pub/app', 2);
    expect(grants.grantOf('Bearer alice-1', 'priv/app', 2)?.acceptedFor).toEqual(new Set(['priv/app']));
  });

  it('a token recorded again belongs to its latest grant only', () => {
    const grants = new TokenGrants();
    const bob = hashCredential('password:bob\0pw');
    grants.record(answer({ token: 'same' }), alice, ['priv/app'], 0);
    grants.confirm('Bearer same', 'priv/app', 0);
    grants.record(answer({ token: 'same' }), bob, ['priv/other'], 0);
    expect(grants.size).toBe(1);
    expect(grants.issuedTo('Bearer same', 'priv/app', 1)).toBeUndefined();
    expect(grants.grantOf('Bearer same', 'priv/other', 1)).toMatchObject({ credential: bob, acceptedFor: new Set() });
  });

  it('a minted (offline) token: issued to its credential until its expiry, and marked as minted', () => {
    const grants = new TokenGrants();
    grants.mint('rpa-offline.x', alice, ['priv/app'], 0, 300_000);
    expect(grants.grantOf('Bearer rpa-offline.x', 'priv/app', 299_999)).toMatchObject({ credential: alice, minted: true });
    expect(grants.issuedTo('Bearer rpa-offline.x', 'priv/other', 1)).toBeUndefined();
    expect(grants.issuedTo('Bearer rpa-offline.x', 'priv/app', 300_000)).toBeUndefined();
    expect(grants.size).toBe(0);
    grants.record(answer({ token: 'realm' }), alice, ['priv/app'], 0);
    expect(grants.grantOf('Bearer realm', 'priv/app', 1)?.minted).toBe(false);
  });

  it('keys realm credentials apart from repositories', () => {
    expect(realmKey('priv/app')).not.toBe('priv/app');
  });
});
