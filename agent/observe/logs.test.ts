import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../log.ts';
import { OciError } from '../oci/errors.ts';
import type { UpstreamObservation } from '../upstream/client.ts';
import { UpstreamStateLog, logRequest } from './logs.ts';
import { ResponseRecorder } from './request-record.ts';

function capture(): { lines: Array<Record<string, unknown>>; log: ReturnType<typeof createLogger> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      callback();
    },
  });
  return { lines, log: createLogger('debug', sink) };
}

const observation = (o: Partial<UpstreamObservation>): UpstreamObservation => ({
  registry: 'r.example',
  route: 'direct',
  purpose: 'registry',
  phase: 'response',
  status: 200,
  cause: undefined,
  seconds: 0.01,
  ...o,
});

describe('logRequest', () => {
  it('writes one access line from the record, a failed one as a warning with its cause chain', () => {
    const { lines, log } = capture();
    const ok = new ResponseRecorder('GET');
    ok.setKind('blob');
    ok.setRegistry('r.example');
    ok.setCacheSource('hit');
    ok.setBytes(10);
    logRequest(log, ok.finish({ status: 200, aborted: false }), '/v2/app/blobs/sha256:x');
    const failed = new ResponseRecorder('GET');
    failed.setKind('manifest');
    const error = new OciError('UNAVAILABLE', 'upstream for r.example is unreachable', { cause: new Error('connect ECONNREFUSED') });
    logRequest(log, failed.finish({ status: 503, error, aborted: false }), '/v2/app/manifests/latest');
    expect(lines[0]).toMatchObject({ level: 'info', msg: 'request', reqId: ok.id, method: 'GET', path: '/v2/app/blobs/sha256:x', registry: 'r.example', kind: 'blob', cache: 'hit', status: 200, bytes: 10 });
    expect(lines[0]).not.toHaveProperty('aborted');
    expect(lines[1]).toMatchObject({ level: 'warn', msg: 'request failed', kind: 'manifest', status: 503, code: 'UNAVAILABLE', err: 'upstream for r.example is unreachable: connect ECONNREFUSED' });
  });
});

describe('UpstreamStateLog', () => {
  it('logs a failing upstream once per change of cause, and its recovery once', () => {
    const { lines, log } = capture();
    const states = new UpstreamStateLog(log);
    states.observe(observation({}));
    for (let i = 0; i < 3; i += 1) states.observe(observation({ status: undefined, cause: 'refused', detail: 'connection refused' }));
    states.observe(observation({ status: undefined, cause: 'timeout' }));
    // A redirect is a hop, not an outcome: it neither recovers nor fails.
    states.observe(observation({ status: 307 }));
    states.observe(observation({}));
    states.observe(observation({}));
    expect(lines.map((l) => [l['msg'], l['cause'] ?? l['previous']])).toEqual([
      ['upstream failing', 'refused'],
      ['upstream failing', 'timeout'],
      ['upstream answering again', 'timeout'],
    ]);
    expect(lines[0]).toMatchObject({ level: 'warn', registry: 'r.example', route: 'direct', detail: 'connection refused' });
  });

  it('tracks bodies apart from answers', () => {
    const { lines, log } = capture();
    const states = new UpstreamStateLog(log);
    for (let i = 0; i < 3; i += 1) {
      states.observe(observation({ status: 206 }));
      states.observe(observation({ phase: 'body', status: 206, cause: 'body_cut' }));
    }
    states.observe(observation({ phase: 'body', status: 206 }));
    expect(lines.map((l) => [l['msg'], l['cause'] ?? l['previous']])).toEqual([
      ['upstream failing', 'body_cut'],
      ['upstream answering again', 'body_cut'],
    ]);
  });

  it('logs the probe verdict when it changes', () => {
    const { lines, log } = capture();
    const states = new UpstreamStateLog(log);
    states.probed('a', true);
    states.probed('a', true);
    states.probed('a', false, 'refused');
    states.probed('a', false, 'refused');
    states.probed('b', false, 'timeout');
    states.probed('a', true);
    expect(lines.map((l) => [l['level'], l['msg'], l['registry'], l['cause']])).toEqual([
      ['info', 'upstream reachable', 'a', undefined],
      ['warn', 'upstream unreachable (probe)', 'a', 'refused'],
      ['warn', 'upstream unreachable (probe)', 'b', 'timeout'],
      ['info', 'upstream reachable', 'a', undefined],
    ]);
  });
});
