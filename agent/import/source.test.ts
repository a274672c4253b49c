import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { makeTempDir, removeTempDir } from '../../test/fixtures/tmp.ts';
import { ImportError } from './errors.ts';
import { openSource, readSmall } from './source.ts';

describe('an OCI layout directory as a source', () => {
  let dir: string;
  let layout: string;

  beforeEach(async () => {
    dir = await makeTempDir('import-source');
    layout = join(dir, 'layout');
    await mkdir(join(layout, 'blobs', 'sha256'), { recursive: true });
    await writeFile(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    await writeFile(join(dir, 'secret'), 'a file of the node outside the layout');
  });

  afterEach(async () => {
    await removeTempDir(dir);
  });

  it('refuses a symlink that leads out of the layout, without reading or sizing its target', async () => {
    await symlink(join(dir, 'secret'), join(layout, 'blobs', 'sha256', 'aa'));
    await symlink('../../../secret', join(layout, 'blobs', 'sha256', 'bb'));
    const source = await openSource(layout);
    for (const name of ['aa', 'bb']) {
      const refused = source.file(`blobs/sha256/${name}`);
      await expect(refused).rejects.toBeInstanceOf(ImportError);
      await expect(refused).rejects.toThrow(`blobs/sha256/${name} points outside the layout`);
    }
  });

  it('follows a symlink within the layout', async () => {
    await writeFile(join(layout, 'blobs', 'sha256', 'cc'), 'inside');
    await symlink('cc', join(layout, 'blobs', 'sha256', 'dd'));
    const file = await (await openSource(layout)).file('blobs/sha256/dd');
    expect(file?.size).toBe(6);
    expect((await readSmall(file!, 64, 'dd')).toString()).toBe('inside');
  });
});
