import type { KubernetesObject } from '@kubernetes/client-node';

/** The RegistryMirror custom resource (manifests/base/crd-registrymirrors.yaml), cluster-scoped. */
export const GROUP = 'registry-proxy.dev';
export const VERSION = 'v1alpha1';
export const PLURAL = 'registrymirrors';
export const KIND = 'RegistryMirror';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const REGISTRY_MIRRORS_PATH = `/apis/${GROUP}/${VERSION}/${PLURAL}`;

/** Every write of the agent carries this field manager (status apply, report and leader Leases, Events). */
export const FIELD_MANAGER = 'registry-proxy-agent';

/** What the agent says about one RegistryMirror (status reason pattern: `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`). */
export interface Problem {
  readonly reason: string;
  readonly message: string;
}

export interface FailingNode {
  readonly node: string;
  readonly reason: string;
  readonly message: string;
}

export interface Condition {
  readonly type: string;
  readonly status: 'True' | 'False' | 'Unknown';
  readonly observedGeneration?: number;
  readonly lastTransitionTime: string;
  readonly reason: string;
  readonly message: string;
}

/** One `spec.preload` image across the nodes reporting on its RegistryMirror. */
export interface PreloadStatus {
  readonly image: string;
  /** Nodes whose cache holds the image, verified and pinned. */
  readonly nodesReady: number;
  readonly nodesFailed: number;
  /** Nodes reporting on this RegistryMirror. */
  readonly nodesTotal: number;
  /** `sha256:` and 12 hex digits when every node that resolved the image agrees; `mixed` when they do not. */
  readonly digest?: string;
  /** `<node>: <error>` of the most common failure, at most 256 characters. */
  readonly lastError?: string;
}

export interface RegistryMirrorStatus {
  readonly observedGeneration?: number;
  readonly conditions?: readonly Condition[];
  readonly nodes?: { readonly ready: number; readonly failing: number; readonly failingNodes?: readonly FailingNode[] };
  /** One entry per `spec.preload` image, in spec order. */
  readonly preload?: readonly PreloadStatus[];
  /** For the printer column: `3/5 images on all 4 nodes, 1 failing`. */
  readonly preloadSummary?: string;
}

export interface RegistryMirror extends KubernetesObject {
  /** As stored: the API server has checked it against the CRD schema, the agent checks it again. */
  spec?: Record<string, unknown>;
  status?: RegistryMirrorStatus;
}

/** CRD limits: failingNodes[].message and report messages. */
export const MAX_MESSAGE = 256;

export function truncate(text: string, max = MAX_MESSAGE): string {
  return text.length <= max ? text : `${text.slice(0, max - 1)}…`;
}

/** `config_path_unset` → `ConfigPathUnset`: a condition reason from a snake_case state. */
export function pascalCase(state: string): string {
  return state
    .split(/[_\-\s]+/)
    .filter((part) => part !== '')
    .map((part) => part[0]?.toUpperCase() + part.slice(1))
    .join('');
}

export function nameOf(obj: KubernetesObject): string {
  return obj.metadata?.name ?? '';
}

/** RFC 3339 with seconds, as metav1.Time is written. */
export function nowTime(): string {
  return new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
}
