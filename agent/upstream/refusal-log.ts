import type { Logger } from 'pino';
import type { DestinationRefusal, RefusalReason } from './destination.ts';

/** How many distinct refused destinations one mirror remembers having logged. */
const REMEMBERED = 256;

/**
 * What one mirror does with each refusal of its DestinationPolicy: counts every one, and logs a
 * destination once per state (reason and address), with what to change. A misconfigured token
 * server or a hostile upstream would otherwise log a line for every layer of every pull; a name
 * that starts resolving elsewhere is a new state and logged again. Bounded: an upstream naming
 * endless destinations makes the memory start over, not grow.
 */
export function refusalReporter(log: Pick<Logger, 'warn'>, count: (reason: RefusalReason) => void): (refusal: DestinationRefusal) => void {
  const logged = new Set<string>();
  return (refusal) => {
    count(refusal.reason);
    const key = `${refusal.destination} ${refusal.address ?? ''} ${refusal.reason}`;
    if (logged.has(key)) return;
    if (logged.size >= REMEMBERED) logged.clear();
    logged.add(key);
    log.warn(
      { registry: refusal.registry, destination: refusal.destination, address: refusal.address, reason: refusal.reason, fix: refusal.fix },
      'redirect or token realm refused by the destination policy',
    );
  };
}
