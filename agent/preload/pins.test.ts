import { describe, expect, it } from 'vitest';
import { sha256Of } from '../oci/digest.ts';
import { choosePins } from './pins.ts';
import { nodePlatform, platformMatches, platformText } from './platform.ts';

const [A, B, C, D] = ['a', 'b', 'c', 'd'].map((x) => sha256Of(x)) as [ReturnType<typeof sha256Of>, ReturnType<typeof sha256Of>, ReturnType<typeof sha256Of>, ReturnType<typeof sha256Of>];

describe('choosePins', () => {
  it('pins whole images in order while they fit; shared blobs count once; a later smaller one may still fit', () => {
    const choice = choosePins(
      [
        { key: 'import x', content: new Map([[A, 40], [B, 10]]) },
        { key: 'r big', content: new Map([[C, 60]]) },
        { key: 'r shares', content: new Map([[B, 10], [D, 45]]) },
      ],
      100,
    );
    expect([...choice.pins].sort()).toEqual([A, B, D].sort());
    expect(choice.bytes).toBe(95);
    expect([...choice.over]).toEqual(['r big']);
  });

  it('nothing fits a zero budget', () => {
    expect(choosePins([{ key: 'k', content: new Map([[A, 1]]) }], 0).over.has('k')).toBe(true);
  });
});

describe('platforms', () => {
  it('maps Node architectures to OCI names', () => {
    expect(nodePlatform('x64')).toEqual({ os: 'linux', architecture: 'amd64' });
    expect(platformText(nodePlatform('arm'))).toBe('linux/arm/v7');
    expect(nodePlatform('mips')).toEqual({ os: 'linux', architecture: 'mips' });
  });

  it('matches index entries: variant when asked for, arm64 without a variant is v8', () => {
    expect(platformMatches({ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'amd64' })).toBe(true);
    expect(platformMatches({ os: 'linux', architecture: 'amd64' }, { os: 'windows', architecture: 'amd64' })).toBe(false);
    expect(platformMatches({ os: 'linux', architecture: 'arm64', variant: 'v8' }, { os: 'linux', architecture: 'arm64' })).toBe(true);
    expect(platformMatches({ os: 'linux', architecture: 'arm', variant: 'v7' }, { os: 'linux', architecture: 'arm', variant: 'v6' })).toBe(false);
    expect(platformMatches({ os: 'linux', architecture: 'arm' }, { os: 'linux', architecture: 'arm', variant: 'v6' })).toBe(true);
    expect(platformMatches({ os: 'linux', architecture: 'amd64' }, null)).toBe(false);
  });
});
