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

  it("is bounded per credential: one credential's tokens displace only its own oldest", () => {
    const grants = new TokenGrants({ tokensPerCredential: 3 });
    const anonymous = hashCredential('anonymous');
    grants.record(answer({ token: 'alice-1', expires_in: 300 }), alice, ['priv/app'], 0);
    // Anyone can mint anonymous tokens: a flood of them keeps the last 3, and alice's.
    for (let i = 0; i < 10_000; i += 1) grants.record(answer({ token: `anon-${i}`, expires_in: 300 }), anonymous, ['pub/app'], 0);
    expect(grants.size).toBe(4);
    expect(grants.issuedTo('Bearer alice-1', 'priv/app', 1)).toBe(alice);
    expect(grants.issuedTo('Bearer anon-9999', 'pub/app', 1)).toBe(anonymous);
    expect(grants.issuedTo('Bearer anon-9997', 'pub/app', 1)).toBe(anonymous);
    expect(grants.issuedTo('Bearer anon-9996', 'pub/app', 1)).toBeUndefined();
  });

  it('is bounded in credentials: the one that least recently got or used a token goes, with its tokens', () => {
    const grants = new TokenGrants({ credentials: 2 });
    const [bob, carol] = [hashCredential('password:bob\0pw'), hashCredential('password:carol\0pw')];
    grants.record(answer({ token: 'a1' }), alice, ['priv/app'], 0);
    grants.record(answer({ token: 'a2' }), alice, ['priv/app'], 0);
    grants.record(answer({ token: 'b1' }), bob, ['priv/app'], 0);
    // Alice uses a token: bob is now the least recently used credential.
    expect(grants.issuedTo('Bearer a1', 'priv/app', 1)).toBe(alice);
    grants.record(answer({ token: 'c1' }), carol, ['priv/app'], 0);
    expect(grants.size).toBe(3);
    expect(grants.issuedTo('Bearer b1', 'priv/app', 1)).toBeUndefined();
    expect(grants.issuedTo('Bearer a2', 'priv/app', 1)).toBe(alice);
    expect(grants.issuedTo('Bearer c1', 'priv/app', 1)).toBe(carol);
  });

  it('a token recorded again belongs to its latest grant only', () => {
    const grants = new TokenGrants({ tokensPerCredential: 1 });
    const bob = hashCredential('password:bob\0pw');
    grants.record(answer({ token: 'same' }), alice, ['priv/app'], 0);
    grants.record(answer({ token: 'same' }), bob, ['priv/other'], 0);
    expect(grants.size).toBe(1);
    expect(grants.issuedTo('Bearer same', 'priv/app', 1)).toBeUndefined();
    expect(grants.issuedTo('Bearer same', 'priv/other', 1)).toBe(bob);
    // Alice holds no token any more: her next one does not push bob's out.
    grants.record(answer({ token: 'alice-2' }), alice, ['priv/app'], 0);
    expect(grants.size).toBe(2);
  });

  it('a minted (offline) token: issued to its credential until its expiry, and marked as minted', () => {
    const grants = new TokenGrants();
    grants.mint('rpa-offline.x', alice, ['priv/app'], 300_000);
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
