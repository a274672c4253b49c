import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { RealmRegistry } from './realms.ts';

describe('RealmRegistry', () => {
  const harbor = new URL('https://harbor.corp.example/service/token');

  it('keeps a realm as upstream named it, under an id derived from that URL', () => {
    const realms = new RealmRegistry();
    const id = realms.learn(harbor);
    expect(id).toBe(createHash('sha256').update(harbor.href).digest('hex').slice(0, 16));
    expect(realms.learn(new URL(harbor.href))).toBe(id);
    expect(realms.get(id)?.href).toBe('https://harbor.corp.example/service/token');
  });

  it('knows nothing it did not learn', () => {
    const realms = new RealmRegistry();
    realms.learn(harbor);
    const other = createHash('sha256').update('http://auth.virtual/service/token').digest('hex').slice(0, 16);
    expect(realms.get(other)).toBeUndefined();
    expect(realms.get('')).toBeUndefined();
  });

  it('is bounded: the oldest realm is forgotten first', () => {
    const realms = new RealmRegistry(2);
    const ids = ['a', 'b', 'c'].map((host) => realms.learn(new URL(`https://${host}.example/token`)));
    expect(ids.map((id) => realms.get(id)?.host)).toEqual([undefined, 'b.example', 'c.example']);
  });
});
