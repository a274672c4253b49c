import { describe, expect, it } from 'vitest';
import { toOciError } from '../http/errors.ts';
import { InvalidRequestError, OciError, type OciErrorCode } from './errors.ts';
import { isReadMethod, parseDistributionRequest } from './request.ts';

const HEX = 'a'.repeat(64);
const DIGEST = `sha256:${HEX}`;

/** Runs the parser and returns the OciError it throws; fails the test when it does not throw one. */
function rejection(target: string): OciError {
  try {
    parseDistributionRequest(target);
  } catch (error) {
    // What the client gets: the HTTP surface translates the parser's error.
    if (error instanceof InvalidRequestError) return toOciError(error);
    throw error;
  }
  throw new Error(`expected ${JSON.stringify(target)} to be rejected`);
}

describe('parseDistributionRequest: accepted targets', () => {
  it.each<[string, unknown]>([
    ['/v2/', { kind: 'base', ns: undefined }],
    ['/v2', { kind: 'base', ns: undefined }],
    ['/v2/?ns=docker.io', { kind: 'base', ns: 'docker.io' }],
    ['/v2/library/alpine/manifests/3.20', { kind: 'manifest', ns: undefined, name: 'library/alpine', reference: { kind: 'tag', tag: '3.20' } }],
    ['/v2/team/app/manifests/latest?ns=registry.corp.example:5000', { kind: 'manifest', ns: 'registry.corp.example:5000', name: 'team/app', reference: { kind: 'tag', tag: 'latest' } }],
    ['/v2/team/app/manifests/_v1.0-rc_2', { kind: 'manifest', ns: undefined, name: 'team/app', reference: { kind: 'tag', tag: '_v1.0-rc_2' } }],
    [`/v2/team/app/manifests/${DIGEST}`, { kind: 'manifest', ns: undefined, name: 'team/app', reference: { kind: 'digest', digest: DIGEST } }],
    [`/v2/a/b/c/blobs/${DIGEST}?ns=ghcr.io`, { kind: 'blob', ns: 'ghcr.io', name: 'a/b/c', digest: DIGEST }],
    [`/v2/a.b_c__d-e--f/blobs/${DIGEST}`, { kind: 'blob', ns: undefined, name: 'a.b_c__d-e--f', digest: DIGEST }],
    // The endpoint is the second-to-last segment; earlier segments named like endpoints belong to the name.
    ['/v2/manifests/blobs/manifests/v1', { kind: 'manifest', ns: undefined, name: 'manifests/blobs', reference: { kind: 'tag', tag: 'v1' } }],
  ])('%s', (target, expected) => {
    expect(parseDistributionRequest(target)).toEqual(expected);
  });

  it('accepts a name of exactly 255 characters', () => {
    const name = `${'a'.repeat(127)}/${'b'.repeat(127)}`;
    expect(name).toHaveLength(255);
    expect(parseDistributionRequest(`/v2/${name}/manifests/latest`)).toMatchObject({ kind: 'manifest', name });
  });

  it('accepts a tag of 128 characters', () => {
    const tag = `v${'1'.repeat(127)}`;
    expect(parseDistributionRequest(`/v2/app/manifests/${tag}`)).toMatchObject({ reference: { kind: 'tag', tag } });
  });
});

describe('parseDistributionRequest: ns', () => {
  it.each<[string, string | undefined]>([
    ['', undefined],
    ['?', undefined],
    ['?other=1', undefined],
    ['?ns=docker.io', 'docker.io'],
    ['?foo=bar&ns=quay.io&baz', 'quay.io'],
    ['?ns=registry.corp.example:5000', 'registry.corp.example:5000'],
    ['?ns=localhost', 'localhost'],
    ['?ns=REGISTRY.Corp.Example', 'registry.corp.example'],
    ['?ns=10.0.0.1', '10.0.0.1'],
    ['?ns=10.0.0.1:5000', '10.0.0.1:5000'],
    ['?ns=[::1]:5000', '[::1]:5000'],
    ['?ns=%5B::1%5D:5000', '[::1]:5000'],
    ['?ns=[fd00::1]', '[fd00::1]'],
    ['?ns=registry.example%3A5000', 'registry.example:5000'],
    ['?ns=_default', '_default'],
  ])('query %j → ns %j', (query, ns) => {
    expect(parseDistributionRequest(`/v2/app/blobs/${DIGEST}${query}`)).toMatchObject({ kind: 'blob', ns });
    expect(parseDistributionRequest(`/v2/${query}`)).toEqual({ kind: 'base', ns });
  });

  it.each([
    ['?ns=a&ns=b', 'ns given more than once'],
    ['?ns=a&ns=a', 'ns given more than once'],
    ['?ns=a@b', 'ns is not a registry host[:port]'],
    ['?ns=user:pass@registry.example', 'ns is not a registry host[:port]'],
    ['?ns=a%40b', 'ns is not a registry host[:port]'],
    ['?ns=', 'ns is not a registry host[:port]'],
    ['?ns', 'ns is not a registry host[:port]'],
    ['?ns=registry.example/path', 'ns is not a registry host[:port]'],
    ['?ns=registry.example:123456', 'ns is not a registry host[:port]'],
    ['?ns=registry.example:', 'ns is not a registry host[:port]'],
    ['?ns=-registry.example', 'ns is not a registry host[:port]'],
    ['?ns=registry-.example', 'ns is not a registry host[:port]'],
    ['?ns=registry..example', 'ns is not a registry host[:port]'],
    ['?ns=registry_example', 'ns is not a registry host[:port]'],
    ['?ns=::1', 'ns is not a registry host[:port]'],
    ['?ns=[::1', 'ns is not a registry host[:port]'],
    ['?ns=[fe80::1%25eth0]', 'ns is not a registry host[:port]'],
    ['?ns=http://registry.example', 'ns is not a registry host[:port]'],
    ['?ns=%zz', 'ns is not valid percent-encoding'],
  ])('rejects %j with NAME_INVALID (%s)', (query, message) => {
    for (const path of [`/v2/app/manifests/latest`, '/v2/']) {
      const error = rejection(`${path}${query}`);
      expect(error.code).toBe('NAME_INVALID');
      expect(error.status).toBe(400);
      expect(error.message).toBe(message);
    }
  });
});

describe('parseDistributionRequest: rejected targets', () => {
  it.each<[string, string, OciErrorCode, number]>([
    // Traversal and encodings never reach the name grammar as anything but invalid.
    ['dot-dot name', `/v2/../etc/blobs/${DIGEST}`, 'NAME_INVALID', 400],
    ['dot-dot inside name', '/v2/team/../app/manifests/latest', 'NAME_INVALID', 400],
    ['dot-dot as reference', '/v2/team/app/manifests/..', 'TAG_INVALID', 400],
    ['encoded dot-dot', '/v2/team/%2e%2e/app/manifests/latest', 'NAME_INVALID', 400],
    ['encoded slash', '/v2/team%2fapp/manifests/latest', 'NAME_INVALID', 400],
    ['encoded slash (upper)', '/v2/team%2Fapp/manifests/latest', 'NAME_INVALID', 400],
    ['encoded reference', '/v2/team/app/manifests/lat%65st', 'NAME_INVALID', 400],
    ['backslash', '/v2/team\\app/manifests/latest', 'NAME_INVALID', 400],
    ['NUL', '/v2/team/app\0/manifests/latest', 'NAME_INVALID', 400],
    ['empty segment', '/v2/team//app/manifests/latest', 'NAME_INVALID', 400],
    ['leading empty segment', '/v2//app/manifests/latest', 'NAME_INVALID', 400],
    ['double slash after v2', '/v2//', 'NAME_INVALID', 400],
    ['overlong name', `/v2/${'a'.repeat(128)}/${'b'.repeat(127)}/manifests/latest`, 'NAME_INVALID', 400],
    ['uppercase name', '/v2/Team/App/manifests/latest', 'NAME_INVALID', 400],
    ['name ending in separator', '/v2/team-/manifests/latest', 'NAME_INVALID', 400],
    ['name with triple underscore', '/v2/a___b/manifests/latest', 'NAME_INVALID', 400],
    ['name with colon', '/v2/team:app/manifests/latest', 'NAME_INVALID', 400],
    ['tag starting with dash', '/v2/app/manifests/-latest', 'TAG_INVALID', 400],
    ['tag starting with dot', '/v2/app/manifests/.latest', 'TAG_INVALID', 400],
    ['tag with plus', '/v2/app/manifests/1.0+build', 'TAG_INVALID', 400],
    ['tag of 129 characters', `/v2/app/manifests/v${'1'.repeat(128)}`, 'TAG_INVALID', 400],
    ['sha512 blob', `/v2/app/blobs/sha512:${'a'.repeat(128)}`, 'DIGEST_INVALID', 400],
    ['sha512 manifest', `/v2/app/manifests/sha512:${'a'.repeat(128)}`, 'DIGEST_INVALID', 400],
    ['uppercase hex', `/v2/app/blobs/sha256:${'A'.repeat(64)}`, 'DIGEST_INVALID', 400],
    ['short digest', `/v2/app/blobs/sha256:${'a'.repeat(63)}`, 'DIGEST_INVALID', 400],
    ['long digest', `/v2/app/blobs/sha256:${'a'.repeat(65)}`, 'DIGEST_INVALID', 400],
    ['tag where a blob digest belongs', '/v2/app/blobs/latest', 'DIGEST_INVALID', 400],
    ['absolute-form target', 'http://x/v2/', 'UNSUPPORTED', 400],
    ['absolute-form blob target', `http://registry.example/v2/app/blobs/${DIGEST}`, 'UNSUPPORTED', 400],
    ['asterisk-form target', '*', 'UNSUPPORTED', 400],
    ['authority-form target', 'registry.example:443', 'UNSUPPORTED', 400],
    ['root', '/', 'UNSUPPORTED', 404],
    ['v1 API', '/v1/_ping', 'UNSUPPORTED', 404],
    ['catalog', '/v2/_catalog', 'UNSUPPORTED', 404],
    ['tags list', '/v2/app/tags/list', 'UNSUPPORTED', 404],
    ['upload start', '/v2/app/blobs/uploads/', 'UNSUPPORTED', 404],
    ['upload session', '/v2/app/blobs/uploads/0f6c2b1e', 'UNSUPPORTED', 404],
    ['referrers', `/v2/app/referrers/${DIGEST}`, 'UNSUPPORTED', 404],
    ['empty reference', '/v2/app/manifests/', 'UNSUPPORTED', 404],
    ['no name', '/v2/manifests/latest', 'UNSUPPORTED', 404],
    ['trailing slash after reference', '/v2/app/manifests/latest/', 'UNSUPPORTED', 404],
  ])('%s: %j → %s %d', (_label, target, code, status) => {
    const error = rejection(target);
    expect(error).toBeInstanceOf(OciError);
    expect(error.code).toBe(code);
    expect(error.status).toBe(status);
  });

  it('says that only sha256 is supported for another algorithm', () => {
    const error = rejection(`/v2/app/blobs/sha512:${'a'.repeat(128)}`);
    expect(error.message).toBe('unsupported digest algorithm "sha512": only sha256 is supported');
  });

  it('asks for lower-case hex for an upper-case digest', () => {
    expect(rejection(`/v2/app/blobs/sha256:${'A'.repeat(64)}`).message).toBe('digest hex must be lower-case');
  });

  it('names the length limit for an overlong name', () => {
    const error = rejection(`/v2/${'a'.repeat(256)}/manifests/latest`);
    expect(error.message).toBe('repository name must be 1 to 255 characters');
    expect(error.detail).toEqual({ length: 256 });
  });

  it('bounds the path echoed in error details', () => {
    const error = rejection(`/v2/${'x/'.repeat(500)}tags/list`);
    expect(error.code).toBe('UNSUPPORTED');
    expect((error.detail as { path: string }).path).toHaveLength(256);
  });

  it('validates ns even when the path is invalid (ns is parsed first)', () => {
    expect(rejection('/v2/_catalog?ns=a@b').code).toBe('NAME_INVALID');
  });
});

describe('isReadMethod', () => {
  it.each<[string | undefined, boolean]>([
    ['GET', true],
    ['HEAD', true],
    ['get', false],
    ['head', false],
    ['POST', false],
    ['PUT', false],
    ['PATCH', false],
    ['DELETE', false],
    ['OPTIONS', false],
    ['CONNECT', false],
    ['', false],
    [undefined, false],
  ])('%j → %s', (method, expected) => {
    expect(isReadMethod(method)).toBe(expected);
  });
});
