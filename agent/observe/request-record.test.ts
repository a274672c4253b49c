import { describe, expect, it } from 'vitest';
import { OciError } from '../oci/errors.ts';
import { ResponseRecorder, causeChain } from './request-record.ts';

describe('ResponseRecorder', () => {
  it('starts as a base request of no registry, cache source or bytes', () => {
    const recorder = new ResponseRecorder('GET');
    expect(recorder.id).toMatch(/^[0-9a-f]{16}$/);
    const record = recorder.finish({ status: 200, aborted: false });
    expect(record).toMatchObject({ id: recorder.id, method: 'GET', outcome: { kind: 'base', bytes: 0 }, status: 200, aborted: false });
    expect(record.outcome).not.toHaveProperty('registry');
    expect(record.outcome).not.toHaveProperty('cache');
    expect(record).not.toHaveProperty('error');
    expect(record.durationMs).toBeGreaterThanOrEqual(0);
  });

  it('records what the handlers tell it, and how the server ended the request', () => {
    const recorder = new ResponseRecorder('GET');
    recorder.setKind('blob');
    recorder.setRegistry('registry.example');
    recorder.setCacheSource('joined');
    recorder.setBytes(1234);
    const error = new OciError('UNAVAILABLE', 'upstream gone', { cause: new Error('socket hang up') });
    const record = recorder.finish({ status: 200, error, aborted: true });
    expect(record).toMatchObject({ method: 'GET', outcome: { kind: 'blob', registry: 'registry.example', cache: 'joined', bytes: 1234 }, status: 200, error, aborted: true });
  });

  it('is finished once: a later finish returns the same record', () => {
    const recorder = new ResponseRecorder('HEAD');
    const first = recorder.finish({ status: 404, aborted: false });
    recorder.setBytes(9);
    expect(recorder.finish({ status: 500, aborted: true })).toBe(first);
    expect(first.outcome.bytes).toBe(0);
  });
});

describe('causeChain', () => {
  it('joins an error and its causes, five deep at most, without stacks', () => {
    let error: Error = new Error('e5');
    for (let i = 4; i >= 0; i -= 1) error = new Error(`e${i}`, { cause: error });
    expect(causeChain(error)).toBe('e0: e1: e2: e3: e4');
    expect(causeChain(new Error('only', { cause: 'not an error' }))).toBe('only');
    expect(causeChain('not an error')).toBe('');
  });
});
