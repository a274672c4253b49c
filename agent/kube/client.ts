import {
  ApiException,
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  DiscoveryV1Api,
  KubeConfig,
  PatchStrategy,
  setHeaderOptions,
} from '@kubernetes/client-node';
import type { KubernetesConfig } from '../config/types.ts';

/** The API clients the agent uses, all from one KubeConfig. */
export interface KubeClients {
  readonly kc: KubeConfig;
  readonly custom: CustomObjectsApi;
  readonly core: CoreV1Api;
  readonly coordination: CoordinationV1Api;
  /**
   * EndpointSlices (peer membership). Always set by `kubeClients`; optional only so that callers
   * building the other clients by hand (tests) need not.
   */
  readonly discovery?: DiscoveryV1Api;
}

/** From `kubeconfig` when set (tests, out-of-cluster), else the pod's service account. */
export function kubeClients(config: KubernetesConfig): KubeClients {
  const kc = new KubeConfig();
  if (config.kubeconfig !== undefined) kc.loadFromFile(config.kubeconfig);
  else kc.loadFromCluster();
  return {
    kc,
    custom: kc.makeApiClient(CustomObjectsApi),
    core: kc.makeApiClient(CoreV1Api),
    coordination: kc.makeApiClient(CoordinationV1Api),
    discovery: kc.makeApiClient(DiscoveryV1Api),
  };
}

/** Server-side apply for the generated clients (their default patch type is JSON Patch). */
export const SERVER_SIDE_APPLY = setHeaderOptions('Content-Type', PatchStrategy.ServerSideApply);

/** The HTTP status of a failed API call, or undefined when it never got an answer. */
export function statusOf(error: unknown): number | undefined {
  if (error instanceof ApiException) return error.code;
  if (typeof error === 'object' && error !== null && 'statusCode' in error && typeof error.statusCode === 'number') return error.statusCode;
  return undefined;
}

/** A short description for the log: the status code and the API server's `Status` message, not the whole exception. */
export function messageOf(error: unknown): string {
  if (!(error instanceof ApiException)) return error instanceof Error ? error.message : String(error);
  let detail = '';
  try {
    const status = JSON.parse(String(error.body)) as { message?: unknown };
    if (typeof status.message === 'string') detail = `: ${status.message}`;
  } catch {
    // not a Status body
  }
  return `HTTP ${error.code}${detail}`;
}

/** Rejects when `promise` takes longer than `ms` (the generated clients have no request timeout of their own). */
export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
