import { describe, expect, it } from 'vitest';
import { FillAbandonedError } from '../cache/errors.ts';
import { MemoryBudgetError } from '../memory/errors.ts';
import { FillQueueFullError } from '../mirror/errors.ts';
import { toOciError } from './errors.ts';

describe('toOciError', () => {
  it.each([
    ['the body budget queue is full', new MemoryBudgetError('queue_full', 64 * 1024 * 1024, 256), 429, 'TOOMANYREQUESTS', { reason: 'queue_full', heldBytes: 64 * 1024 * 1024, waiting: 256 }],
    ['a wait for the body budget timed out', new MemoryBudgetError('wait_timeout', 1_000, 3), 429, 'TOOMANYREQUESTS', { reason: 'wait_timeout', heldBytes: 1_000, waiting: 3 }],
    ['the download queue is full', new FillQueueFullError('r.example', 8, 64), 429, 'TOOMANYREQUESTS', { registry: 'r.example', running: 8, queued: 64 }],
  ])('%s → %i %s with Retry-After, keeping the cause', (_label, error, status, code, detail) => {
    const oci = toOciError(error);
    expect(oci).toMatchObject({ status, code, detail });
    expect(Number(oci.headers['retry-after'])).toBeGreaterThan(0);
    expect(oci.cause).toBe(error);
  });

  it('a stopped relay (every reader left) is no internal error', () => {
    const oci = toOciError(new FillAbandonedError('sha256:abc', 'relaying'));
    expect(oci).toMatchObject({ status: 503, code: 'UNAVAILABLE' });
  });
});
