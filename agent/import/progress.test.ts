import { describe, expect, it } from 'vitest';
import { Progress, formatBytes } from './progress.ts';

function sink(isTTY: boolean): { text: () => string; write: (s: string) => boolean; isTTY: boolean } {
  let written = '';
  return { text: () => written, write: (s) => ((written += s), true), isTTY };
}

describe('import progress', () => {
  it('redraws one line per image on a TTY and clears it before results and errors', () => {
    const out = sink(false);
    const err = sink(true);
    const progress = new Progress(out, err);
    progress.startImage('reg/app:1', 3 * 1024 * 1024, 3);
    progress.advance(1024 * 1024);
    progress.verified('layer 1/2', `sha256:${'a'.repeat(64)}`, 1024 * 1024, 'copied');
    progress.advance(2 * 1024 * 1024);
    progress.result('imported reg/app:1');
    progress.error('reg/app:2: refused: corrupt');
    expect(err.text()).toBe(
      '\r\x1b[2Kimporting reg/app:1: 0 B / 3.0 MiB (0%)' +
        // 1 MiB arrives within the redraw interval: not drawn; the last byte always is.
        '\r\x1b[2Kimporting reg/app:1: 3.0 MiB / 3.0 MiB (100%)' +
        '\r\x1b[2K' +
        'registry-proxy-agent import: reg/app:2: refused: corrupt\n',
    );
    expect(out.text()).toBe('imported reg/app:1\n');
  });

  it('writes plain lines elsewhere: one per image and one per verified piece', () => {
    const out = sink(false);
    const err = sink(false);
    const progress = new Progress(out, err);
    progress.startImage('reg/app:1', 2048, 2);
    progress.advance(2048);
    progress.verified('config', `sha256:${'b'.repeat(64)}`, 2048, 'already cached');
    expect(err.text()).toBe(`importing reg/app:1: 2 pieces, 2.0 KiB to verify\n  config sha256:bbbbbbbbbbbb 2.0 KiB verified (already cached)\n`);
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(5 * 1024 ** 3)).toBe('5.0 GiB');
  });
});
