/**
 * Bounds-checked binary field access. Parsers read headers through these so a short or
 * lying buffer raises a RangeError instead of producing garbage.
 * 64-bit fields come back as numbers and must be ≤ 2^53; larger values throw (no image
 * field legitimately needs more, and a lie that large is an attack).
 */
function need(buf: Uint8Array, off: number, n: number): void {
  if (!Number.isInteger(off) || off < 0 || off + n > buf.byteLength) {
    throw new RangeError(`field at ${off}+${n} is past the end of a ${buf.byteLength}-byte buffer`);
  }
}

// Fields are assembled from bytes: a DataView per call was an allocation and a C++ call,
// and these run for every L2 entry a read, write or check goes through.
const TWO_32 = 2 ** 32;

export const u8 = (b: Uint8Array, o: number): number => (need(b, o, 1), b[o]);
export const be16 = (b: Uint8Array, o: number): number => (need(b, o, 2), (b[o] << 8) | b[o + 1]);
export const le16 = (b: Uint8Array, o: number): number => (need(b, o, 2), b[o] | (b[o + 1] << 8));
export const be32 = (b: Uint8Array, o: number): number => (need(b, o, 4), b[o] * 0x1000000 + ((b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]));
export const le32 = (b: Uint8Array, o: number): number => (need(b, o, 4), b[o + 3] * 0x1000000 + ((b[o + 2] << 16) | (b[o + 1] << 8) | b[o]));
export const be64n = (b: Uint8Array, o: number): bigint => (need(b, o, 8), (BigInt(be32(b, o)) << 32n) | BigInt(be32(b, o + 4)));
export const le64n = (b: Uint8Array, o: number): bigint => (need(b, o, 8), (BigInt(le32(b, o + 4)) << 32n) | BigInt(le32(b, o)));

function safe(hi: number, lo: number, o: number): number {
  if (hi >= 0x200000) throw new RangeError(`64-bit field at ${o} is too large (0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')})`);
  return hi * TWO_32 + lo;
}
export const be64 = (b: Uint8Array, o: number): number => (need(b, o, 8), safe(be32(b, o), be32(b, o + 4), o));
export const le64 = (b: Uint8Array, o: number): number => (need(b, o, 8), safe(le32(b, o + 4), le32(b, o), o));

export function setU8(b: Uint8Array, o: number, v: number): void {
  need(b, o, 1);
  b[o] = v;
}
export function setBe16(b: Uint8Array, o: number, v: number): void {
  need(b, o, 2);
  b[o] = v >>> 8;
  b[o + 1] = v;
}
export function setLe16(b: Uint8Array, o: number, v: number): void {
  need(b, o, 2);
  b[o] = v;
  b[o + 1] = v >>> 8;
}
export function setBe32(b: Uint8Array, o: number, v: number): void {
  need(b, o, 4);
  b[o] = v >>> 24;
  b[o + 1] = v >>> 16;
  b[o + 2] = v >>> 8;
  b[o + 3] = v;
}
export function setLe32(b: Uint8Array, o: number, v: number): void {
  need(b, o, 4);
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}

/** The high and low 32-bit halves of a 64-bit field value (wrapped to 64 bits, as a DataView would). */
function halves(v: number | bigint): [number, number] {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return [Math.floor(v / TWO_32), v % TWO_32];
  const n = BigInt.asUintN(64, BigInt(v));
  return [Number(n >> 32n), Number(n & 0xffffffffn)];
}
export function setBe64(b: Uint8Array, o: number, v: number | bigint): void {
  need(b, o, 8);
  const [hi, lo] = halves(v);
  setBe32(b, o, hi);
  setBe32(b, o + 4, lo);
}
export function setLe64(b: Uint8Array, o: number, v: number | bigint): void {
  need(b, o, 8);
  const [hi, lo] = halves(v);
  setLe32(b, o, lo);
  setLe32(b, o + 4, hi);
}

/** A NUL-padded ASCII/UTF-8 string field. */
export function cstring(b: Uint8Array, o: number, n: number): string {
  need(b, o, n);
  const bytes = b.subarray(o, o + n);
  const end = bytes.indexOf(0);
  return Buffer.from(bytes.subarray(0, end < 0 ? n : end)).toString('utf8');
}

export const alignUp = (v: number, a: number): number => Math.ceil(v / a) * a;
export const alignDown = (v: number, a: number): number => Math.floor(v / a) * a;
export const divCeil = (v: number, d: number): number => Math.ceil(v / d);
