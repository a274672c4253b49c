import { describe, expect, it } from 'vitest';
import { DiskReserve, type FreeSpace } from './disk-reserve.ts';

/** A 1,000,000-byte file system (reserve: 50,000) whose statfs answers when the test says so. */
function disk(free: number): { freeSpace: FreeSpace; answer(): void; setFree(bytes: number): void; fail(): void } {
  let current = free;
  let failing = false;
  let waiting: Array<() => void> = [];
  return {
    freeSpace: () =>
      new Promise((resolve, reject) => {
        waiting.push(() => (failing ? reject(new Error('ENOENT')) : resolve({ free: current, total: 1_000_000 })));
      }),
    answer: () => {
      const pending = waiting;
      waiting = [];
      for (const resolve of pending) resolve();
    },
    setFree: (bytes) => {
      current = bytes;
    },
    fail: () => {
      failing = true;
    },
  };
}

describe('DiskReserve', () => {
  it('decides racing requests one after the other: the second counts what the first was granted', async () => {
    const d = disk(300_000);
    const reserve = new DiskReserve('/cache', d.freeSpace);
    const [a, b] = [reserve.open(), reserve.open()];
    const requests = [a.request(150_000), b.request(150_000)];
    d.answer();
    expect(await Promise.all(requests)).toEqual([true, false]);
  });

  it('keeps the reserve: a request is refused when it would leave 5% of the file system or less', async () => {
    const d = disk(250_000);
    const reserve = new DiskReserve('/cache', d.freeSpace);
    const ask = async (need: number): Promise<boolean> => {
      const share = reserve.open();
      const answer = share.request(need);
      d.answer();
      const result = await answer;
      share.close();
      return result;
    };
    expect(await ask(199_999)).toBe(true);
    // Would leave exactly the reserve.
    expect(await ask(200_000)).toBe(false);
  });

  it('counts a writer only for what it has not written yet, and not at all once closed', async () => {
    const d = disk(300_000);
    const reserve = new DiskReserve('/cache', d.freeSpace);
    const writer = reserve.open();
    const granted = writer.request(200_000);
    d.answer();
    expect(await granted).toBe(true);
    const ask = async (need: number): Promise<boolean> => {
      const share = reserve.open();
      const answer = share.request(need);
      d.answer();
      const result = await answer;
      share.close();
      return result;
    };
    // 300,000 free - 200,000 still to come from the writer: 100,000 - 60,000 is under the reserve.
    expect(await ask(60_000)).toBe(false);
    // The writer wrote 150,000 (free shrank with it): 150,000 - 50,000 to come - 40,000 > 50,000.
    writer.progress(150_000);
    d.setFree(150_000);
    expect(await ask(40_000)).toBe(true);
    expect(await ask(60_000)).toBe(false);
    // Done writing: only what is on disk (in `free`) counts.
    writer.close();
    expect(await ask(60_000)).toBe(true);
  });

  it('counts, for a writer that wrote while statfs was asked, the larger of then and now', async () => {
    const d = disk(300_000);
    const reserve = new DiskReserve('/cache', d.freeSpace);
    const writer = reserve.open();
    const granted = writer.request(100_000);
    d.answer();
    expect(await granted).toBe(true);
    const other = reserve.open();
    const asked = other.request(200_000);
    // The writer reports its bytes written while statfs runs: the answer may not show them yet,
    // so they still count as to come: 300,000 - 200,000 - 100,000 is under the reserve.
    writer.progress(100_000);
    d.answer();
    expect(await asked).toBe(false);
    // Once statfs shows them, they count once.
    d.setFree(200_000);
    const again = reserve.open().request(100_000);
    d.answer();
    expect(await again).toBe(true);
  });

  it('refuses when free space cannot be read (the cache dir is gone)', async () => {
    const d = disk(300_000);
    d.fail();
    const reserve = new DiskReserve('/cache', d.freeSpace);
    const answer = reserve.open().request(1);
    d.answer();
    expect(await answer).toBe(false);
  });
});
