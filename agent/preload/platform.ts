import type { Platform } from '../config/types.ts';

/** Node's names for CPU architectures → the OCI names an image index uses. */
const ARCHITECTURES: Readonly<Record<string, Platform>> = {
  x64: { os: 'linux', architecture: 'amd64' },
  arm64: { os: 'linux', architecture: 'arm64' },
  arm: { os: 'linux', architecture: 'arm', variant: 'v7' },
  ppc64: { os: 'linux', architecture: 'ppc64le' },
  s390x: { os: 'linux', architecture: 's390x' },
  riscv64: { os: 'linux', architecture: 'riscv64' },
};

/** The platform this node runs containers for: the one an index is preloaded for by default. */
export function nodePlatform(arch: string = process.arch): Platform {
  return ARCHITECTURES[arch] ?? { os: 'linux', architecture: arch };
}

export function platformText(platform: Platform): string {
  return `${platform.os}/${platform.architecture}${platform.variant ? `/${platform.variant}` : ''}`;
}

/**
 * Whether an index entry's platform is the one asked for. A variant asked for must match; arm64
 * entries without a variant are v8 (as containerd treats them); an entry's variant is ignored when
 * none is asked for.
 */
export function platformMatches(wanted: Platform, entry: unknown): boolean {
  if (typeof entry !== 'object' || entry === null) return false;
  const { os, architecture, variant } = entry as Record<string, unknown>;
  if (os !== wanted.os || architecture !== wanted.architecture) return false;
  if (wanted.variant === undefined) return true;
  const actual = typeof variant === 'string' ? variant : wanted.architecture === 'arm64' ? 'v8' : undefined;
  return actual === wanted.variant;
}
