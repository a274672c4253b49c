import { describe, expect, it } from 'vitest';
import { Lane, PriorityLines } from './priority.ts';

describe('PriorityLines', () => {
  it('serves live waiters first, each line in arrival order', () => {
    const lines = new PriorityLines<string>();
    lines.add('b1', new Lane('background'), () => undefined);
    lines.add('l1', new Lane('live'), () => undefined);
    lines.add('b2', new Lane('background'), () => undefined);
    lines.add('l2', new Lane('live'), () => undefined);
    expect([lines.size, lines.ahead('live'), lines.ahead('background')]).toEqual([4, 2, 4]);
    const order: string[] = [];
    for (let head = lines.head(); head; head = lines.head()) {
      order.push(head);
      lines.remove(head);
    }
    expect(order).toEqual(['l1', 'l2', 'b1', 'b2']);
  });

  it('moves a raised waiter to the end of the live line, once, and tells the queue', () => {
    const lines = new PriorityLines<string>();
    const lane = new Lane('background');
    let moved = 0;
    lines.add('l1', new Lane('live'), () => undefined);
    lines.add('b1', lane, () => (moved += 1));
    expect(lines.priorityOf('b1')).toBe('background');
    lane.raise();
    lane.raise();
    expect([moved, lines.priorityOf('b1'), lines.ahead('live')]).toEqual([1, 'live', 2]);
    lines.remove('l1');
    expect(lines.head()).toBe('b1');
  });

  it('a removed waiter is not moved by a later raise, and is no longer held by its lane', () => {
    const lines = new PriorityLines<string>();
    const lane = new Lane('background');
    let moved = 0;
    lines.add('b1', lane, () => (moved += 1));
    expect(lines.remove('b1')).toBe(true);
    expect(lines.remove('b1')).toBe(false);
    lane.raise();
    expect([moved, lines.size, lines.priorityOf('b1')]).toEqual([0, 0, undefined]);
  });
});
