import { createHash } from 'node:crypto';

/**
 * Token realms learned from one mirror's own upstream challenges. Only these may be contacted by
 * the agent's token endpoint: it can never be steered to an arbitrary host. A realm is kept (and its
 * id derived) as upstream named it; the mirror's realm_map only changes where the forward goes
 * (UpstreamClient.forwardTokenRequest), so a map can redirect a learned realm but never add one.
 */
export class RealmRegistry {
  /** Each realm, and the `service` upstream's challenges named with it (the audience of its tokens). */
  readonly #byId = new Map<string, { readonly url: URL; service: string | undefined }>();
  readonly #max: number;

  constructor(max = 16) {
    this.#max = max;
  }

  /** Records a realm and returns its stable id (used in the rewritten realm URL). */
  learn(realm: URL, service?: string): string {
    const id = createHash('sha256').update(realm.href).digest('hex').slice(0, 16);
    let known = this.#byId.get(id);
    if (!known) {
      if (this.#byId.size >= this.#max) {
        const oldest = this.#byId.keys().next();
        if (!oldest.done) this.#byId.delete(oldest.value);
      }
      known = { url: realm, service: undefined };
      this.#byId.set(id, known);
    }
    if (service !== undefined) known.service = service;
    return id;
  }

  /** The service upstream's last challenge named with this realm, if it named one. */
  serviceOf(id: string): string | undefined {
    return this.#byId.get(id)?.service;
  }

  get(id: string): URL | undefined {
    return this.#byId.get(id)?.url;
  }
}
