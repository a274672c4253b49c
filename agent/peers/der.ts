/*
 * Just enough DER (X.690 distinguished encoding) to write X.509 certificates and to read back the few
 * fields of a CA certificate that Node's X509Certificate does not expose (its raw subject and its
 * subject key identifier). Only single-byte tags (numbers below 31) and definite lengths: that is all
 * X.509 uses, and a reader that accepts less has less to get wrong.
 */

const UNIVERSAL = {
  boolean: 0x01,
  integer: 0x02,
  bitString: 0x03,
  octetString: 0x04,
  null: 0x05,
  oid: 0x06,
  utf8String: 0x0c,
  printableString: 0x13,
  ia5String: 0x16,
  utcTime: 0x17,
  generalizedTime: 0x18,
  sequence: 0x30,
  set: 0x31,
} as const;

const CONSTRUCTED = 0x20;
const CONTEXT = 0x80;

function encodeLength(length: number): Buffer {
  if (length < 0x80) return Buffer.from([length]);
  const bytes: number[] = [];
  for (let n = length; n > 0; n = Math.floor(n / 256)) bytes.unshift(n % 256);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

/** One element: identifier octet, definite length (shortest form, as DER requires), content. */
export function tlv(tag: number, content: Uint8Array): Buffer {
  if (!Number.isInteger(tag) || tag < 0 || tag > 0xff || (tag & 0x1f) === 0x1f) throw new Error(`DER: unsupported tag 0x${tag.toString(16)}`);
  return Buffer.concat([Buffer.from([tag]), encodeLength(content.length), content]);
}

export function sequence(...items: readonly Uint8Array[]): Buffer {
  return tlv(UNIVERSAL.sequence, Buffer.concat(items));
}

/** SET OF: DER orders the elements by their encodings, so equal sets encode to equal bytes. */
export function setOf(...items: readonly Uint8Array[]): Buffer {
  return tlv(UNIVERSAL.set, Buffer.concat([...items].map((i) => Buffer.from(i)).sort(Buffer.compare)));
}

/**
 * A non-negative INTEGER from a number, a bigint or big-endian unsigned bytes. DER wants the shortest
 * two's complement: redundant leading zero octets go, and one is added when the top bit is set, or the
 * value would read as negative (a serial number with its high bit set is the classic bug).
 */
export function integer(value: number | bigint | Uint8Array): Buffer {
  let bytes: Buffer;
  if (value instanceof Uint8Array) bytes = Buffer.from(value);
  else {
    if (typeof value === 'number' && !Number.isSafeInteger(value)) throw new Error(`DER: INTEGER needs a safe integer, not ${value}`);
    const big = BigInt(value);
    if (big < 0n) throw new Error('DER: negative INTEGERs are not supported');
    const hex = big.toString(16);
    bytes = Buffer.from(hex.length % 2 === 0 ? hex : `0${hex}`, 'hex');
  }
  let start = 0;
  while (start < bytes.length - 1 && bytes[start] === 0) start++;
  const magnitude = bytes.length === 0 ? Buffer.from([0]) : bytes.subarray(start);
  const content = (magnitude[0] ?? 0) & 0x80 ? Buffer.concat([Buffer.from([0]), magnitude]) : magnitude;
  return tlv(UNIVERSAL.integer, content);
}

/** An OBJECT IDENTIFIER from dotted decimal (`1.2.840.10045.4.3.2`), each arc base 128. */
export function oid(dotted: string): Buffer {
  if (!/^\d+(\.\d+)+$/.test(dotted)) throw new Error(`DER: malformed OID "${dotted}"`);
  const arcs = dotted.split('.').map((a) => BigInt(a));
  const [first = 0n, second = 0n, ...rest] = arcs;
  if (first > 2n || (first < 2n && second >= 40n)) throw new Error(`DER: malformed OID "${dotted}"`);
  const bytes: number[] = [];
  for (const arc of [first * 40n + second, ...rest]) {
    const group: number[] = [Number(arc & 0x7fn)];
    for (let n = arc >> 7n; n > 0n; n >>= 7n) group.unshift(Number(n & 0x7fn) | 0x80);
    bytes.push(...group);
  }
  return tlv(UNIVERSAL.oid, Buffer.from(bytes));
}

export function utf8String(text: string): Buffer {
  return tlv(UNIVERSAL.utf8String, Buffer.from(text, 'utf8'));
}

/** PrintableString: letters, digits, space and `'()+,-./:=?` only. */
export function printableString(text: string): Buffer {
  if (!/^[A-Za-z0-9 '()+,\-./:=?]*$/.test(text)) throw new Error(`DER: "${text}" is not a PrintableString`);
  return tlv(UNIVERSAL.printableString, Buffer.from(text, 'ascii'));
}

/** IA5String (7-bit ASCII), as dNSName uses it. */
export function ia5String(text: string): Buffer {
  if (!/^[\x00-\x7f]*$/.test(text)) throw new Error(`DER: "${text}" is not an IA5String`);
  return tlv(UNIVERSAL.ia5String, Buffer.from(text, 'ascii'));
}

function digits(date: Date): string {
  const two = (n: number): string => String(n).padStart(2, '0');
  return `${two(date.getUTCMonth() + 1)}${two(date.getUTCDate())}${two(date.getUTCHours())}${two(date.getUTCMinutes())}${two(date.getUTCSeconds())}Z`;
}

function checkDate(date: Date, low: number, high: number, what: string): void {
  const year = date.getUTCFullYear();
  if (Number.isNaN(date.getTime()) || year < low || year > high) throw new Error(`DER: ${what} cannot hold ${String(date)}`);
}

/** UTCTime `YYMMDDHHMMSSZ` (1950–2049); whole seconds, as RFC 5280 requires. */
export function utcTime(date: Date): Buffer {
  checkDate(date, 1950, 2049, 'UTCTime');
  return tlv(UNIVERSAL.utcTime, Buffer.from(`${String(date.getUTCFullYear() % 100).padStart(2, '0')}${digits(date)}`, 'ascii'));
}

/** GeneralizedTime `YYYYMMDDHHMMSSZ`; whole seconds, no fraction (RFC 5280). */
export function generalizedTime(date: Date): Buffer {
  checkDate(date, 0, 9999, 'GeneralizedTime');
  return tlv(UNIVERSAL.generalizedTime, Buffer.from(`${String(date.getUTCFullYear()).padStart(4, '0')}${digits(date)}`, 'ascii'));
}

/** X.509 Time: RFC 5280 §4.1.2.5 demands UTCTime through 2049 and GeneralizedTime from 2050 on. */
export function time(date: Date): Buffer {
  const year = date.getUTCFullYear();
  return year >= 1950 && year <= 2049 ? utcTime(date) : generalizedTime(date);
}

/** A BIT STRING of whole bytes (keys, signatures), or with `unusedBits` (0–7) of the last byte unused. */
export function bitString(bytes: Uint8Array, unusedBits = 0): Buffer {
  if (!Number.isInteger(unusedBits) || unusedBits < 0 || unusedBits > 7 || (bytes.length === 0 && unusedBits !== 0)) {
    throw new Error(`DER: ${unusedBits} unused bits in a BIT STRING of ${bytes.length} bytes`);
  }
  return tlv(UNIVERSAL.bitString, Buffer.concat([Buffer.from([unusedBits]), bytes]));
}

/**
 * A named-bit BIT STRING (keyUsage): bit 0 is the most significant bit of the first byte, and DER
 * drops trailing zero bits, so the length and the unused-bit count depend on the highest bit set.
 */
export function namedBits(bits: readonly number[]): Buffer {
  if (bits.some((b) => !Number.isInteger(b) || b < 0 || b > 255)) throw new Error('DER: named bits must be integers 0–255');
  if (bits.length === 0) return bitString(Buffer.alloc(0));
  const highest = Math.max(...bits);
  const bytes = Buffer.alloc(Math.floor(highest / 8) + 1);
  for (const b of bits) bytes[b >> 3] = (bytes[b >> 3] ?? 0) | (0x80 >> (b & 7));
  return bitString(bytes, 7 - (highest & 7));
}

export function octetString(bytes: Uint8Array): Buffer {
  return tlv(UNIVERSAL.octetString, bytes);
}

/** DER's TRUE is 0xFF, nothing else. */
export function boolean(value: boolean): Buffer {
  return tlv(UNIVERSAL.boolean, Buffer.from([value ? 0xff : 0x00]));
}

export function nullValue(): Buffer {
  return tlv(UNIVERSAL.null, Buffer.alloc(0));
}

function checkTagNumber(n: number): void {
  if (!Number.isInteger(n) || n < 0 || n > 30) throw new Error(`DER: context tag [${n}] is not supported`);
}

/** `[n] EXPLICIT`: a constructed context-specific element wrapping the whole inner encoding. */
export function explicit(n: number, inner: Uint8Array): Buffer {
  checkTagNumber(n);
  return tlv(CONTEXT | CONSTRUCTED | n, inner);
}

/** `[n] IMPLICIT`: the inner encoding with its tag replaced (its constructed bit kept). */
export function implicit(n: number, inner: Uint8Array): Buffer {
  checkTagNumber(n);
  const encoded = Buffer.from(inner);
  if (encoded.length < 2) throw new Error('DER: implicit tagging needs an encoded element');
  encoded[0] = CONTEXT | ((encoded[0] ?? 0) & CONSTRUCTED) | n;
  return encoded;
}

// ─── Reading ──────────────────────────────────────────────────────────────────────────────────────

/** One element read from DER. `encoded` is the whole element, `content` its value octets. */
export interface Element {
  readonly tag: number;
  readonly encoded: Buffer;
  readonly content: Buffer;
}

/** Reads the element at `offset`; throws on anything truncated, indefinite or not shortest-form. */
export function readElement(input: Uint8Array, offset = 0): Element {
  const buf = Buffer.from(input.buffer, input.byteOffset, input.byteLength);
  const tag = buf[offset];
  const first = buf[offset + 1];
  if (tag === undefined || first === undefined) throw new Error('DER: truncated element');
  if ((tag & 0x1f) === 0x1f) throw new Error('DER: multi-byte tags are not supported');
  let length = first;
  let header = 2;
  if (first & 0x80) {
    const count = first & 0x7f;
    if (count === 0 || count > 4) throw new Error('DER: indefinite or oversized length');
    length = 0;
    for (let i = 0; i < count; i++) {
      const b = buf[offset + 2 + i];
      if (b === undefined) throw new Error('DER: truncated length');
      length = length * 256 + b;
    }
    if (length < 0x80 || buf[offset + 2] === 0) throw new Error('DER: length not in shortest form');
    header += count;
  }
  const end = offset + header + length;
  if (end > buf.length) throw new Error('DER: element longer than its input');
  return { tag, encoded: buf.subarray(offset, end), content: buf.subarray(offset + header, end) };
}

/** The elements inside a constructed element (a SEQUENCE, a SET, an explicit tag), in order. */
export function childrenOf(parent: Element): Element[] {
  if (!(parent.tag & CONSTRUCTED)) throw new Error(`DER: tag 0x${parent.tag.toString(16)} is not constructed`);
  const out: Element[] = [];
  for (let offset = 0; offset < parent.content.length; ) {
    const child = readElement(parent.content, offset);
    out.push(child);
    offset += child.encoded.length;
  }
  return out;
}

export const TAG = { ...UNIVERSAL, contextExplicit: (n: number): number => CONTEXT | CONSTRUCTED | n } as const;
