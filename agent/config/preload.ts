import { kindOf } from './kind.ts';
import { parseDuration } from './duration.ts';
import { parseSize } from './size.ts';
import { isTable } from './section.ts';
import type { Platform, PreloadImage, TunnelBudget } from './types.ts';
import { expectString, parseCount } from './values.ts';

/** OCI distribution grammar: path components, tags, sha256 digests. */
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;
const PLATFORM_PART = /^[a-z0-9_]+$/;
/** Images one mirror may preload: each is re-resolved and reported per node (the status lists them). */
export const MAX_PRELOAD_IMAGES = 100;
const PRELOAD_KEYS = ['image', 'platforms'];
/** Tags are resolved again at most this often: every node asks upstream once per interval and image. */
const MIN_PRELOAD_INTERVAL_MS = 10_000;
/** Below this a budget would stall pulls behind TCP windows and timeouts, not shape them. */
const MIN_BYTES_PER_SECOND = 64 * 1024;

/**
 * `preload`: an array of image references within the mirror's registry (`team/app:1.2`,
 * `team/app@sha256:…`, or with the registry itself in front), each a string or a table
 * `{ image = "…", platforms = ["linux/amd64"] }`.
 */
export function parsePreload(value: unknown, registry: string): PreloadImage[] {
  if (!Array.isArray(value)) throw new Error(`expected an array of image references, got ${kindOf(value)}`);
  if (value.length > MAX_PRELOAD_IMAGES) throw new Error(`at most ${MAX_PRELOAD_IMAGES} images per mirror (got ${value.length})`);
  const seen = new Set<string>();
  return value.map((entry: unknown, i) => {
    const image = preloadEntry(entry, registry, i);
    const key = `${image.repository}:${image.tag ?? ''}@${image.digest ?? ''}`;
    if (seen.has(key)) throw new Error(`[${i}]: ${image.image} is listed twice`);
    seen.add(key);
    return image;
  });
}

function preloadEntry(entry: unknown, registry: string, i: number): PreloadImage {
  const at = `[${i}]`;
  if (typeof entry === 'string') return { ...parseImageReference(entry, registry, at) };
  if (!isTable(entry)) throw new Error(`${at}: expected an image reference or a table { image, platforms }, got ${kindOf(entry)}`);
  const unknown = Object.keys(entry).filter((key) => !PRELOAD_KEYS.includes(key));
  if (unknown.length > 0) throw new Error(`${at}: unknown key ${unknown[0]} (known: ${PRELOAD_KEYS.join(', ')})`);
  if (!Object.hasOwn(entry, 'image')) throw new Error(`${at}: image is required`);
  const reference = parseImageReference(entry['image'], registry, at);
  if (!Object.hasOwn(entry, 'platforms')) return reference;
  const platforms = entry['platforms'];
  if (!Array.isArray(platforms) || platforms.length === 0) throw new Error(`${at}.platforms: expected a non-empty array such as ["linux/amd64"]`);
  return { ...reference, platforms: platforms.map((p: unknown, j) => parsePlatform(p, `${at}.platforms[${j}]`)) };
}

/**
 * `repository[:tag][@sha256:…]`, optionally prefixed with this mirror's registry; a reference to
 * another registry is refused (each mirror preloads from its own upstream).
 */
export function parseImageReference(value: unknown, registry: string, at = ''): PreloadImage {
  const where = at === '' ? '' : `${at}: `;
  const image = expectString(value).trim();
  let rest = image;
  const slash = rest.indexOf('/');
  const first = slash < 0 ? '' : rest.slice(0, slash);
  if (first.includes('.') || first.includes(':') || first === 'localhost') {
    if (first.toLowerCase() !== registry) throw new Error(`${where}${image} names registry ${first}, not this mirror's ${registry}`);
    rest = rest.slice(slash + 1);
  }
  let digest: string | undefined;
  const atSign = rest.indexOf('@');
  if (atSign >= 0) {
    digest = rest.slice(atSign + 1);
    rest = rest.slice(0, atSign);
    if (!DIGEST.test(digest)) throw new Error(`${where}${image}: the digest must be sha256:<64 lower-case hex digits>`);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw new Error(`${where}${image}: invalid tag ${JSON.stringify(tag)}`);
  }
  if (rest === '' || !rest.split('/').every((c) => PATH_COMPONENT.test(c))) {
    throw new Error(`${where}${image}: the repository must be lower-case path components separated by "/" (e.g. team/app:1.2)`);
  }
  if (tag === undefined && digest === undefined) throw new Error(`${where}${image}: name a tag or a digest (e.g. ${rest}:1.2)`);
  return { image, repository: rest, ...(tag === undefined ? {} : { tag }), ...(digest === undefined ? {} : { digest }) };
}

/** `os/architecture[/variant]`, as in an image index (`linux/amd64`, `linux/arm/v7`). */
export function parsePlatform(value: unknown, at = ''): Platform {
  const text = expectString(value);
  const parts = text.split('/');
  if (parts.length < 2 || parts.length > 3 || !parts.every((part) => PLATFORM_PART.test(part))) {
    throw new Error(`${at === '' ? '' : `${at}: `}invalid platform ${JSON.stringify(text)}: expected os/architecture[/variant], e.g. linux/amd64`);
  }
  const [os, architecture, variant] = parts as [string, string, string | undefined];
  return { os, architecture, ...(variant === undefined ? {} : { variant }) };
}

export function parsePreloadInterval(value: unknown): number {
  const ms = parseDuration(value);
  if (ms < MIN_PRELOAD_INTERVAL_MS) throw new Error(`must be at least ${MIN_PRELOAD_INTERVAL_MS / 1000}s (every node asks upstream once per interval and image)`);
  return ms;
}

/** `max_bytes_per_second`: a size per second, at least 64 KiB. */
export function parseByteRate(value: unknown): number {
  const bytes = parseSize(value);
  if (bytes < MIN_BYTES_PER_SECOND) throw new Error(`must be at least 64KiB (per second); got ${bytes} bytes`);
  return bytes;
}

/** `max_bytes_per_second` and `max_fetches` of a table (absent: unlimited / the default slots). */
export function readBudget(read: <T>(name: string, parse: (value: unknown) => T) => T | undefined): TunnelBudget {
  const bytesPerSecond = read('max_bytes_per_second', parseByteRate);
  const maxFetches = read('max_fetches', (v) => parseCount(v, 1_000));
  return { ...(bytesPerSecond === undefined ? {} : { bytesPerSecond }), ...(maxFetches === undefined ? {} : { maxFetches }) };
}
