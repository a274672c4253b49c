import { describe, expect, it } from 'vitest';
import { ANONYMOUS, ANONYMOUS_AT_REALM, AccessMemory, hashCredential } from './access-memory.ts';

const alice = hashCredential('Basic YWxpY2U6d29uZGVy');
const bob = hashCredential('Basic Ym9iOmJ1aWxkZXI=');

describe('AccessMemory', () => {
  it('keys by credential and repository: acceptance for one repository opens no other', () => {
    const memory = new AccessMemory();
    memory.remember(alice, 'priv/app', 1_000);
    expect(memory.acceptedWithin(alice, 'priv/app', 60_000, 2_000)).toBe(true);
    expect(memory.acceptedWithin(alice, 'other/app', 60_000, 2_000)).toBe(false);
    expect(memory.acceptedWithin(bob, 'priv/app', 60_000, 2_000)).toBe(false);
    expect(memory.acceptedWithin(hashCredential(undefined), 'priv/app', 60_000, 2_000)).toBe(false);
    // A repository name is not a prefix match, and a realm key is not the repository itself.
    expect(memory.acceptedWithin(alice, 'priv/app/sub', 60_000, 2_000)).toBe(false);
    expect(memory.acceptedWithin(alice, 'token:priv/app', 60_000, 2_000)).toBe(false);
  });

  it('expires: an acceptance counts for maxAgeMs and not a millisecond longer', () => {
    const memory = new AccessMemory();
    memory.remember(alice, 'priv/app', 10_000);
    expect(memory.acceptedAt(alice, 'priv/app')).toBe(10_000);
    expect(memory.acceptedWithin(alice, 'priv/app', 5_000, 15_000)).toBe(true);
    expect(memory.acceptedWithin(alice, 'priv/app', 5_000, 15_001)).toBe(false);
    // A later acceptance renews it.
    memory.remember(alice, 'priv/app', 15_001);
    expect(memory.acceptedWithin(alice, 'priv/app', 5_000, 15_001)).toBe(true);
  });

  it('forgets one credential for one repository only', () => {
    const memory = new AccessMemory();
    memory.remember(alice, 'priv/app', 1);
    memory.remember(alice, 'other/app', 1);
    memory.remember(bob, 'priv/app', 1);
    memory.forget(alice, 'priv/app');
    expect(memory.acceptedAt(alice, 'priv/app')).toBeUndefined();
    expect(memory.acceptedAt(alice, 'other/app')).toBe(1);
    expect(memory.acceptedAt(bob, 'priv/app')).toBe(1);
  });

  it("is bounded and fair: fresh credentials flooding one repository displace that repository's entries only", () => {
    const memory = new AccessMemory(100);
    memory.remember(alice, 'priv/app', 1);
    memory.remember(bob, 'token:priv/other', 1);
    for (let i = 0; i < 100_000; i += 1) memory.remember(hashCredential(`header:Junk ${i}`), 'token:pub/app', 1);
    expect(memory.size).toBe(100);
    expect(memory.acceptedAt(alice, 'priv/app')).toBe(1);
    expect(memory.acceptedAt(bob, 'token:priv/other')).toBe(1);
    expect(memory.acceptedAt(hashCredential('header:Junk 99999'), 'token:pub/app')).toBe(1);
    expect(memory.acceptedAt(hashCredential('header:Junk 0'), 'token:pub/app')).toBeUndefined();
  });

  it('the anonymous credentials (to the registry, to the realm) are kept apart: no flood displaces them', () => {
    const memory = new AccessMemory(10);
    memory.remember(ANONYMOUS, 'pub/app', 1);
    memory.remember(ANONYMOUS_AT_REALM, 'token:pub/app', 2);
    for (let i = 0; i < 1_000; i += 1) memory.remember(hashCredential(`header:Junk ${i}`), 'token:pub/app', 1);
    expect(memory.acceptedAt(ANONYMOUS, 'pub/app')).toBe(1);
    expect(memory.acceptedAt(ANONYMOUS_AT_REALM, 'token:pub/app')).toBe(2);
    expect(memory.acceptedAt(ANONYMOUS, 'token:pub/app')).toBeUndefined();
    memory.forget(ANONYMOUS_AT_REALM, 'token:pub/app');
    expect(memory.acceptedAt(ANONYMOUS_AT_REALM, 'token:pub/app')).toBeUndefined();
  });
});

describe('hashCredential', () => {
  it('keeps no trace of the secret and tells credentials apart', () => {
    const secret = 'Basic c2VjcmV0LXVzZXI6czNjcjN0LXBhc3N3b3Jk';
    const hash = hashCredential(secret);
    expect(hash).not.toContain('c2VjcmV0');
    expect(hash).toBe(hashCredential(secret));
    expect(hash).not.toBe(hashCredential(`${secret}x`));
    // No header value (they cannot contain NUL) hashes like "no credential".
    expect(hashCredential(undefined)).not.toBe(hashCredential(''));
    expect(hashCredential(undefined)).not.toBe(hashCredential('anonymous'));
  });
});
