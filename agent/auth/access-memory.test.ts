import { describe, expect, it } from 'vitest';
import { AccessMemory, hashCredential } from './access-memory.ts';

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

  it('is bounded: the least recently used entries go first', () => {
    const memory = new AccessMemory(3);
    for (const repository of ['a', 'b', 'c']) memory.remember(alice, repository, 1);
    expect(memory.acceptedAt(alice, 'a')).toBe(1); // a is now the most recently used
    memory.remember(alice, 'd', 1);
    expect(memory.size).toBe(3);
    expect(memory.acceptedAt(alice, 'b')).toBeUndefined();
    expect(memory.acceptedAt(alice, 'a')).toBe(1);
    expect(memory.acceptedAt(alice, 'd')).toBe(1);
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
