import type { CoreV1Event } from '@kubernetes/client-node';
import type { DesiredStatus } from './aggregator.ts';
import { API_VERSION, type Condition, FIELD_MANAGER, KIND, type RegistryMirror, nameOf, truncate } from './resources.ts';

/** Event reasons: the folded Ready condition became True, or became (or stayed) False for another reason. */
export const READY_EVENT = 'Ready';
export const NOT_READY_EVENT = 'NotReady';

/**
 * The Event the leader creates when a RegistryMirror's Ready condition changes its status or reason,
 * or undefined when it does not (counts and node lists change without an Event). One Event per
 * transition for the whole cluster, whatever the number of nodes: a Cloud Connector outage on 5,000
 * nodes is one "Ready True → False" Event, not 5,000.
 *
 * `before` is the condition the object carries; a status still without reports is no news.
 */
export function transitionEvent(rm: RegistryMirror, before: Condition | undefined, desired: DesiredStatus, reporter: string, now: Date): CoreV1Event | undefined {
  const after = desired.ready;
  if (after.reason === 'NoReports') return undefined;
  if (before !== undefined && before.status === after.status && before.reason === after.reason) return undefined;
  const name = nameOf(rm);
  const uid = rm.metadata?.uid;
  const ready = after.status === 'True';
  return {
    // Events about cluster-scoped objects live in "default".
    metadata: { generateName: `${name.slice(0, 200)}.`, namespace: 'default' },
    involvedObject: { apiVersion: API_VERSION, kind: KIND, name, ...(uid === undefined ? {} : { uid }) },
    reason: ready ? READY_EVENT : NOT_READY_EVENT,
    message: truncate(`Ready ${before?.status ?? 'Unknown'} → ${after.status}, ${after.reason}: ${after.message}`, 1024),
    type: ready ? 'Normal' : 'Warning',
    source: { component: FIELD_MANAGER, host: reporter },
    reportingComponent: FIELD_MANAGER,
    reportingInstance: reporter,
    firstTimestamp: now,
    lastTimestamp: now,
    count: 1,
  };
}
