import { describe, expect, it } from 'vitest';
import { type Challenge, parseChallenge } from './challenge.ts';

describe('parseChallenge', () => {
  it.each<[string, Challenge]>([
    [
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
      { scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull' } },
    ],
    [
      // A comma inside a quoted value belongs to the value.
      'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull,push"',
      { scheme: 'bearer', params: { realm: 'https://ghcr.io/token', service: 'ghcr.io', scope: 'repository:a/b:pull,push' } },
    ],
    [
      'Bearer realm="https://r.example/token",scope="repository:a/b:pull,push repository:c/d:pull",error="insufficient_scope"',
      { scheme: 'bearer', params: { realm: 'https://r.example/token', scope: 'repository:a/b:pull,push repository:c/d:pull', error: 'insufficient_scope' } },
    ],
    ['Basic realm="Registry Realm"', { scheme: 'basic', params: { realm: 'Registry Realm' } }],
    ['Basic realm="Registry Realm", charset="UTF-8"', { scheme: 'basic', params: { realm: 'Registry Realm', charset: 'UTF-8' } }],
    // Scheme and parameter names are case-insensitive; values are not.
    ['BEARER Realm="https://R.example/Token",SERVICE="Reg"', { scheme: 'bearer', params: { realm: 'https://R.example/Token', service: 'Reg' } }],
    // Optional whitespace around "=" and after commas.
    ['Bearer realm = "https://r.example/token" ,  service="r.example" ,', { scheme: 'bearer', params: { realm: 'https://r.example/token', service: 'r.example' } }],
    ['  Bearer realm="x"', { scheme: 'bearer', params: { realm: 'x' } }],
    // Unquoted (token) values.
    ['Bearer realm=https://r.example/token,service=r.example', { scheme: 'bearer', params: { realm: 'https://r.example/token', service: 'r.example' } }],
    // Quoted-pair escapes.
    ['Basic realm="say \\"hi\\" \\\\ bye"', { scheme: 'basic', params: { realm: 'say "hi" \\ bye' } }],
    ['Bearer realm=""', { scheme: 'bearer', params: { realm: '' } }],
    // Only the first challenge is read.
    ['Bearer realm="https://a.example/token", Basic realm="b"', { scheme: 'bearer', params: { realm: 'https://a.example/token' } }],
    ['Basic realm="b", Bearer realm="https://a.example/token"', { scheme: 'basic', params: { realm: 'b' } }],
    // A scheme without parameters, or with parameters that cannot be read.
    ['Bearer', { scheme: 'bearer', params: {} }],
    ['Negotiate', { scheme: 'negotiate', params: {} }],
    ['Bearer !!!', { scheme: 'bearer', params: {} }],
    ['Bearer realm="x" !!! service="y"', { scheme: 'bearer', params: { realm: 'x' } }],
  ])('%s', (header, expected) => {
    expect(parseChallenge(header)).toEqual(expected);
  });

  it.each([undefined, '', '   ', '"Bearer"', '123 realm="x"', '=realm', ',Bearer'])('%j → undefined', (header) => {
    expect(parseChallenge(header)).toBeUndefined();
  });
});
