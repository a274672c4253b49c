import { resolve } from 'node:path';
import { kindOf } from './kind.ts';
import type { AuthMode, LogLevel, RouteKind } from './types.ts';

// Validators for single values. Each throws a plain Error whose message is the problem;
// the loader adds file and key.

const LOG_LEVELS: readonly LogLevel[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
const ROUTES: readonly RouteKind[] = ['direct', 'connectivity-proxy', 'http-proxy'];
const AUTH_MODES: readonly AuthMode[] = ['passthrough', 'agent'];
const PROXY_HINT = 'expected an absolute http: URL, e.g. http://proxy.corp:3128';
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;

export function expectString(value: unknown): string {
  if (typeof value !== 'string') throw new Error(`expected a string, got ${kindOf(value)}`);
  return value;
}

export function expectBoolean(value: unknown): boolean {
  if (typeof value !== 'boolean') throw new Error(`expected a boolean, got ${kindOf(value)}`);
  return value;
}

export function parseLogLevel(value: unknown): LogLevel {
  const text = expectString(value);
  const level = LOG_LEVELS.find((l) => l === text);
  if (level === undefined) throw new Error(`must be one of ${LOG_LEVELS.join(', ')}`);
  return level;
}

export function parseRoute(value: unknown): RouteKind {
  const text = expectString(value);
  const route = ROUTES.find((r) => r === text);
  if (route === undefined) throw new Error(`must be one of ${ROUTES.map((r) => `"${r}"`).join(', ')}`);
  return route;
}

export function parseAuthMode(value: unknown): AuthMode {
  const text = expectString(value);
  const mode = AUTH_MODES.find((m) => m === text);
  if (mode === undefined) throw new Error(`must be one of ${AUTH_MODES.map((m) => `"${m}"`).join(', ')}`);
  return mode;
}

/** A file system path; relative paths are taken relative to `baseDir`. Returns an absolute, normalised path. */
export function parsePath(value: unknown, baseDir: string): string {
  const text = expectString(value);
  if (text === '') throw new Error('must not be empty');
  if (text.includes('\0')) throw new Error('must not contain a NUL character');
  return resolve(baseDir, text);
}

/** An absolute http(s) URL without credentials, query or fragment; trailing slashes of the path are dropped. */
export function parseUpstream(value: unknown): URL {
  const text = expectString(value);
  if (!URL.canParse(text)) throw new Error('expected an absolute http: or https: URL, e.g. https://registry-1.docker.io');
  const url = new URL(text);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('scheme must be http or https');
  if (url.username !== '' || url.password !== '') {
    throw new Error('must not contain userinfo; use username and password_file');
  }
  if (/[?#]/.test(text)) throw new Error('must not contain a query or fragment');
  url.pathname = url.pathname.replace(/\/+$/, '') || '/';
  return url;
}

/**
 * A forward proxy spoken to in plain HTTP (the Connectivity Proxy's HTTP port, a corporate proxy):
 * http://host[:port] without userinfo, path, query or fragment.
 */
export function parseProxyUrl(value: unknown): URL {
  const text = expectString(value);
  if (!URL.canParse(text)) throw new Error(PROXY_HINT);
  const url = new URL(text);
  if (url.protocol !== 'http:') throw new Error(`scheme must be http (the proxy is spoken to in plain HTTP); ${PROXY_HINT}`);
  if (url.username !== '' || url.password !== '') throw new Error('must not contain userinfo');
  if (/[?#]/.test(text)) throw new Error('must not contain a query or fragment');
  if (url.pathname !== '/') throw new Error(`must not contain a path; ${PROXY_HINT}`);
  return url;
}

/** An OAuth2 token endpoint: an absolute http(s) URL without userinfo or fragment (a query is kept). */
export function parseTokenUrl(value: unknown): URL {
  const text = expectString(value);
  if (!URL.canParse(text)) throw new Error('expected an absolute http: or https: URL, e.g. https://auth.example/oauth/token');
  const url = new URL(text);
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error('scheme must be http or https');
  if (url.username !== '' || url.password !== '') {
    throw new Error('must not contain userinfo; use client_id and client_secret_file');
  }
  if (text.includes('#')) throw new Error('must not contain a fragment');
  return url;
}

/**
 * A Cloud Connector location ID, sent as an HTTP header: non-empty printable ASCII without whitespace
 * (SAP uses letters, digits, '-', '_' and '.'; anything else printable is let through).
 */
export function parseLocationId(value: unknown): string {
  const text = expectString(value);
  if (text === '') throw new Error('must not be empty');
  if (!/^[\x21-\x7e]+$/.test(text)) {
    throw new Error('must be printable ASCII without whitespace or control characters, e.g. "onprem-1"');
  }
  return text;
}

/** An OAuth2 client ID: non-empty, no control characters. */
export function parseClientId(value: unknown): string {
  const text = expectString(value);
  if (text === '') throw new Error('must not be empty');
  if (/\p{Cc}/u.test(text)) throw new Error('must not contain control characters');
  return text;
}

/** '' or OCI repository path components joined by '/'; one leading and one trailing '/' are dropped. */
export function parseRepositoryPrefix(value: unknown): string {
  const text = expectString(value).replace(/^\//, '').replace(/\/$/, '');
  if (text !== '' && !text.split('/').every((c) => PATH_COMPONENT.test(c))) {
    throw new Error('must be lower-case repository path components separated by "/", e.g. "library" or "team/images"');
  }
  return text;
}

/** A Basic-auth user name: non-empty, no ':' and no control characters. */
export function parseUsername(value: unknown): string {
  const text = expectString(value);
  if (text === '') throw new Error('must not be empty');
  if (text.includes(':')) throw new Error("must not contain ':'");
  if (/\p{Cc}/u.test(text)) throw new Error('must not contain control characters');
  return text;
}

/** A size in bytes (see parseSize) that must be greater than zero. */
export function requirePositive(bytes: number): number {
  if (bytes <= 0) throw new Error('must be greater than 0');
  return bytes;
}

/** A whole number from 1 to `max` (connection caps, slots). */
export function parseCount(value: unknown, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) throw new Error(`expected an integer, got ${typeof value === 'number' ? String(value) : kindOf(value)}`);
  if (value < 1 || value > max) throw new Error(`must be from 1 to ${max}`);
  return value;
}
