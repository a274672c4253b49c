import type { Platform } from '../config/types.ts';
import { type Digest, isDigest } from '../oci/digest.ts';
import { MANIFEST_MAX_BYTES } from '../oci/media-types.ts';
import { ImportError } from './errors.ts';
import type { ImageName, ImageTarget, Registries } from './names.ts';
import type { SourceFile } from './source.ts';

/** One piece of an image to copy into the cache: checked against `digest` and `size` while copied. */
export interface PlannedContent {
  readonly digest: Digest;
  readonly size: number;
  /** For messages: `config`, `layer 2/3`, `manifest linux/amd64`, `index`. */
  readonly what: string;
  /** Manifests (and a docker-archive's config): the bytes, already read and bounded. */
  readonly bytes?: Buffer;
  /** Blobs: the source file, streamed when copied. */
  readonly file?: SourceFile;
  /** Manifests only: recorded beside the blob (`media-types/`), served as Content-Type. */
  readonly mediaType?: string;
}

/** An image of the source, ready to copy: what it is called and everything it consists of. */
export interface ImagePlan {
  /** Where in the source, for messages: `index.json entry 1 (ref.name "1")`. */
  readonly label: string;
  readonly targets: readonly ImageTarget[];
  /** The manifest (or index) the tags point at. */
  readonly root: { readonly digest: Digest; readonly mediaType: string; readonly size: number };
  /** Child manifests first, the root last (the order they are committed in). */
  readonly manifests: readonly PlannedContent[];
  /** Configs and layers, each digest once. */
  readonly blobs: readonly PlannedContent[];
  /** What was left out on purpose (platforms not asked for, absent attestations), for the report. */
  readonly notes: readonly string[];
}

/** An entry of the source: its plan, or why it cannot be imported. */
export type PlannedEntry = { readonly label: string; readonly plan: ImagePlan } | { readonly label: string; readonly error: string; readonly image?: string };

/** The entry's refusal: named by its image when the name was resolved, by its place in the source otherwise. */
export function refusedEntry(label: string, error: ImportError): PlannedEntry {
  if (error.image === undefined) return { label, error: error.message };
  return { label, error: error.message, image: error.message.startsWith(label) ? error.image : `${error.image} (${label})` };
}

/** Runs `plan` for an image whose name is known: its refusals carry that name. */
export async function naming<T>(image: string, plan: () => Promise<T>): Promise<T> {
  try {
    return await plan();
  } catch (error) {
    if (error instanceof ImportError && error.image === undefined) throw new ImportError(error.message, image);
    throw error;
  }
}

export interface PlanOptions {
  /** `--name`. */
  readonly name?: ImageName;
  /** `--platform` (an index: only these platforms' manifests are needed and imported). */
  readonly platforms: readonly Platform[];
  readonly registries: Registries;
  /** SIGINT/SIGTERM: planning stops too (ImportAborted), between two pieces it reads. */
  readonly signal?: AbortSignal | undefined;
}

export const MANIFEST_LIMIT = MANIFEST_MAX_BYTES;

/** A descriptor's digest and size, validated; `at` names it in messages. */
export function descriptorOf(value: unknown, at: string): { digest: Digest; size: number; mediaType: string | undefined; fields: Record<string, unknown> } {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ImportError(`${at}: not a descriptor (expected an object with mediaType, digest and size)`);
  const fields = value as Record<string, unknown>;
  const digest = fields['digest'];
  const size = fields['size'];
  if (typeof digest !== 'string') throw new ImportError(`${at}: no digest`);
  if (!isDigest(digest)) {
    throw new ImportError(
      digest.startsWith('sha256:') ? `${at}: invalid digest ${JSON.stringify(digest.slice(0, 80))}` : `${at}: digest ${JSON.stringify(digest.slice(0, 80))}: only sha256 digests are supported`,
    );
  }
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw new ImportError(`${at}: invalid size ${JSON.stringify(size)}`);
  const mediaType = typeof fields['mediaType'] === 'string' ? fields['mediaType'] : undefined;
  return { digest, size, mediaType, fields };
}

/** Adds `content` unless its digest is there already (an image may name a layer twice). */
export function addOnce(list: PlannedContent[], content: PlannedContent): void {
  if (!list.some((c) => c.digest === content.digest)) list.push(content);
}

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
