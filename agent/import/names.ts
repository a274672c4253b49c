import { ImportError } from './errors.ts';

/** Where an imported image goes: the name containerd asks the agent for. */
export interface ImageTarget {
  readonly registry: string;
  readonly repository: string;
  readonly tag: string;
}

/** A parsed reference; the tag is optional (`--name registry/repo` takes tags from the source). */
export interface ImageName {
  readonly registry: string;
  readonly repository: string;
  readonly tag?: string;
}

const COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const REPOSITORY = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
export const TAG = /^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$/;
const HOST = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$/;
const DOCKER_HUB = 'docker.io';

export function targetText(target: ImageTarget): string {
  return `${target.registry}/${target.repository}:${target.tag}`;
}

/**
 * `registry[:port]/repository[:tag]`. The first component is a registry when it holds a `.` or a
 * `:` or is `localhost` (docker's rule). Without one the reference is "familiar" (`alpine:3.20`,
 * `team/app:1`, as `docker save` writes RepoTags): it means docker.io, with `library/` for a single
 * component, when `familiar` allows it, and is not a full reference otherwise (undefined). Digest
 * references (`@sha256:…`) name no tag: refused.
 */
export function parseImageName(text: string, options: { familiar: boolean; what: string }): ImageName | undefined {
  if (text.includes('@')) throw new ImportError(`${options.what} ${JSON.stringify(text)} is a digest reference: an import needs a tag (registry/repository:tag)`);
  const slash = text.indexOf('/');
  const first = slash === -1 ? '' : text.slice(0, slash);
  const explicit = slash !== -1 && (first.includes('.') || first.includes(':') || first === 'localhost');
  if (!explicit && !options.familiar) return undefined;
  let registry = explicit ? first.toLowerCase() : DOCKER_HUB;
  let rest = explicit ? text.slice(slash + 1) : text;
  if (registry === 'index.docker.io' || registry === 'registry-1.docker.io') registry = DOCKER_HUB;
  if (explicit && !HOST.test(first)) throw new ImportError(`${options.what} ${JSON.stringify(text)}: ${JSON.stringify(first)} is not a registry host[:port]`);
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw new ImportError(`${options.what} ${JSON.stringify(text)}: invalid tag ${JSON.stringify(tag)} (expected [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127})`);
  }
  if (registry === DOCKER_HUB && !rest.includes('/')) rest = `library/${rest}`;
  if (rest.length === 0 || rest.length > 255 || !REPOSITORY.test(rest)) {
    throw new ImportError(`${options.what} ${JSON.stringify(text)}: invalid repository ${JSON.stringify(rest)} (lower-case path components separated by "/", e.g. team/app)`);
  }
  return { registry, repository: rest, ...(tag === undefined ? {} : { tag }) };
}

/** What a source says about an image's name. */
export interface SourceNames {
  /** `org.opencontainers.image.ref.name` of an OCI layout entry: a tag, or a full reference. */
  readonly refName?: string;
  /** Full or familiar references: docker-archive RepoTags, `io.containerd.image.name` (docker 25+ save). */
  readonly references: readonly string[];
}

/** The configured registries, to check a target against (mirrors of the file only). */
export interface Registries {
  readonly names: readonly string[];
  /** The config file, for messages. */
  readonly source: string;
}

/**
 * The registry, repository and tag(s) an image is imported as:
 * - `--name registry/repo:tag`: that (the caller made sure SOURCE holds one image);
 * - `--name registry/repo`: the tag from the layout's ref.name, or the tags of the references;
 * - no `--name`: the ref.name when it is a full reference, else every reference (RepoTags).
 * Every registry must be a configured mirror.
 */
export function resolveTargets(label: string, names: SourceNames, name: ImageName | undefined, registries: Registries): ImageTarget[] {
  const refName = names.refName;
  const refIsTag = refName !== undefined && TAG.test(refName);
  const fromRef = refName !== undefined && !refIsTag ? parseImageName(refName, { familiar: false, what: `${label}: ref.name` }) : undefined;
  const references = names.references.flatMap((text) => {
    const parsed = parseImageName(text, { familiar: true, what: `${label}: reference` });
    return parsed ? [parsed] : [];
  });
  let targets: ImageTarget[];
  if (name?.tag !== undefined) {
    targets = [{ registry: name.registry, repository: name.repository, tag: name.tag }];
  } else if (name) {
    const tags = refIsTag ? [refName] : fromRef?.tag !== undefined ? [fromRef.tag] : references.flatMap((r) => (r.tag === undefined ? [] : [r.tag]));
    if (tags.length === 0) throw new ImportError(`${label} names no tag: give one with --name ${name.registry}/${name.repository}:TAG`);
    targets = tags.map((tag) => ({ registry: name.registry, repository: name.repository, tag }));
  } else if (fromRef) {
    targets = [withTag(fromRef, label)];
  } else if (references.length > 0) {
    targets = references.map((r) => withTag(r, label));
  } else if (refIsTag) {
    throw new ImportError(
      `${label}: its ref.name ${JSON.stringify(refName)} is only a tag; give the registry and repository with --name REGISTRY/REPOSITORY (e.g. --name ${registries.names[0] ?? 'registry.corp.example:5000'}/team/app), the tag is taken from ref.name`,
    );
  } else {
    throw new ImportError(`${label} has no name (no org.opencontainers.image.ref.name, no RepoTags): give one with --name REGISTRY/REPOSITORY:TAG`);
  }
  for (const target of targets) checkRegistry(target.registry, targetText(target), registries);
  const unique = new Map(targets.map((t) => [targetText(t), t]));
  return [...unique.values()];
}

function withTag(name: ImageName, label: string): ImageTarget {
  if (name.tag === undefined) throw new ImportError(`${label}: ${name.registry}/${name.repository} names no tag: give one with --name ${name.registry}/${name.repository}:TAG`);
  return { registry: name.registry, repository: name.repository, tag: name.tag };
}

export function checkRegistry(registry: string, reference: string, registries: Registries): void {
  if (registries.names.includes(registry)) return;
  const configured = registries.names.length === 0 ? 'none' : registries.names.join(', ');
  throw new ImportError(
    `${reference}: registry ${registry} is not a configured [[mirror]] of ${registries.source} (configured: ${configured}); imported images are served under a mirror's registry, as containerd asks for them`,
  );
}
