/**
 * The registry an image reference is pulled from, as containerd resolves it: the first path
 * component when it looks like a host (has a dot or a port, or is `localhost`), else docker.io.
 */
export function imageRegistry(reference: string): string {
  const slash = reference.indexOf('/');
  if (slash === -1) return 'docker.io';
  const first = reference.slice(0, slash).toLowerCase();
  if (first === 'localhost' || first.includes('.') || first.includes(':')) return first === 'index.docker.io' ? 'docker.io' : first;
  return 'docker.io';
}

/**
 * Why mirroring `registry` would risk a bootstrap deadlock, or undefined when it does not: the
 * agent's own image comes from it, so a node that reboots with the agent down would ask the (dead)
 * agent for the agent's image. containerd falls back to the next host, but only if the registry is
 * reachable without the agent, which is exactly what this product is for when it is not.
 */
export function ownImageProblem(registry: string, ownImage: string | undefined): string | undefined {
  if (ownImage === undefined || imageRegistry(ownImage) !== registry) return undefined;
  return (
    `the agent's own image (${ownImage}) comes from ${registry}: with the agent down (node reboot, rollout) its ` +
    'own image could not be pulled through it. Keep the agent image on a registry the node reaches without the agent ' +
    '(imagePullPolicy IfNotPresent), or confirm with allow_own_registry_mirror = true'
  );
}
