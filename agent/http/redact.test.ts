import { describe, expect, it } from 'vitest';
import { redactedTarget } from './redact.ts';

describe('redactedTarget', () => {
  it('keeps paths without a query as they are', () => {
    expect(redactedTarget('/v2/team/app/blobs/sha256:abc')).toBe('/v2/team/app/blobs/sha256:abc');
    expect(redactedTarget('/v2/?')).toBe('/v2/?');
  });

  it('keeps ns, scope and service, blanks everything else', () => {
    expect(redactedTarget('/_token/r/0123456789abcdef?account=alice&scope=repository%3Ateam%2Fapp%3Apull&service=registry&ns=r.corp:5000')).toBe(
      '/_token/r/0123456789abcdef?account=[redacted]&scope=repository%3Ateam%2Fapp%3Apull&service=registry&ns=r.corp:5000',
    );
  });

  it('blanks credentials and tokens however they are spelled', () => {
    const line = redactedTarget('/x?access_token=s3cr3t&Password=hunter2&refresh%5Ftoken=r1&client_secret=c&X-Amz-Signature=sig&token=t');
    for (const secret of ['s3cr3t', 'hunter2', 'r1', '=c&', 'sig', '=t']) expect(line).not.toContain(secret);
    expect(line).toBe('/x?access_token=[redacted]&Password=[redacted]&refresh%5Ftoken=[redacted]&client_secret=[redacted]&X-Amz-Signature=[redacted]&token=[redacted]');
  });

  it('keeps valueless parameters and survives broken encodings', () => {
    expect(redactedTarget('/x?flag&%zz=1&ns=%zz')).toBe('/x?flag&%zz=[redacted]&ns=%zz');
  });
});
