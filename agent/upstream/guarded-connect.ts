import { type Dispatcher, Pool, buildConnector } from 'undici';
import type { DestinationPolicy } from './destination-policy.ts';
import { endpointOf } from './destination.ts';
import type { TrustOptions } from './tls.ts';

/**
 * A pool factory for undici's Agent (route direct) whose connections go only where `policy`
 * allows. Each origin's pool gets its own connector, because the decision depends on the host and
 * port as the URL names them (the upstream itself, a listed `host:port`), and net.connect's
 * `lookup` only sees the name. The connector checks an IP literal before connecting (net.connect
 * does not call `lookup` for one) and resolves names through the policy's lookup, which checks
 * every address before net.connect sees any: a refused destination gets no TCP SYN.
 */
export function guardedPoolFactory(
  policy: DestinationPolicy,
  options: { readonly connectTimeoutMs: number; readonly trust: TrustOptions | undefined },
): (origin: string | URL, poolOptions: object) => Dispatcher {
  return (origin, poolOptions) => {
    const target = endpointOf(new URL(String(origin)));
    // A custom connector replaces undici's own, connect timeout included: it goes in here.
    const connect = buildConnector({ ...options.trust, timeout: options.connectTimeoutMs, lookup: policy.lookupFor(target) });
    return new Pool(origin, {
      ...poolOptions,
      connect: (connectOptions, callback) => {
        const refused = policy.refusedLiteral(target);
        // Asynchronously, as a failed connection would: undici does not expect its callback re-entered.
        if (refused) queueMicrotask(() => callback(refused, null));
        else connect(connectOptions, callback);
      },
    });
  };
}
