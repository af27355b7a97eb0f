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

function view(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

export const u8 = (b: Uint8Array, o: number): number => (need(b, o, 1), b[o]);
export const be16 = (b: Uint8Array, o: number): number => (need(b, o, 2), view(b).getUint16(o, false));
export const le16 = (b: Uint8Array, o: number): number => (need(b, o, 2), view(b).getUint16(o, true));
export const be32 = (b: Uint8Array, o: number): number => (need(b, o, 4), view(b).getUint32(o, false));
export const le32 = (b: Uint8Array, o: number): number => (need(b, o, 4), view(b).getUint32(o, true));
export const be64n = (b: Uint8Array, o: number): bigint => (need(b, o, 8), view(b).getBigUint64(o, false));
export const le64n = (b: Uint8Array, o: number): bigint => (need(b, o, 8), view(b).getBigUint64(o, true));

function safe(v: bigint, o: number): number {
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`64-bit field at ${o} is too large (0x${v.toString(16)})`);
  return Number(v);
}
export const be64 = (b: Uint8Array, o: number): number => safe(be64n(b, o), o);
export const le64 = (b: Uint8Array, o: number): number => safe(le64n(b, o), o);

export function setU8(b: Uint8Array, o: number, v: number): void {
  need(b, o, 1);
  b[o] = v;
}
export const setBe16 = (b: Uint8Array, o: number, v: number): void => (need(b, o, 2), view(b).setUint16(o, v, false));
export const setLe16 = (b: Uint8Array, o: number, v: number): void => (need(b, o, 2), view(b).setUint16(o, v, true));
export const setBe32 = (b: Uint8Array, o: number, v: number): void => (need(b, o, 4), view(b).setUint32(o, v >>> 0, false));
export const setLe32 = (b: Uint8Array, o: number, v: number): void => (need(b, o, 4), view(b).setUint32(o, v >>> 0, true));
export const setBe64 = (b: Uint8Array, o: number, v: number | bigint): void => (need(b, o, 8), view(b).setBigUint64(o, BigInt(v), false));
export const setLe64 = (b: Uint8Array, o: number, v: number | bigint): void => (need(b, o, 8), view(b).setBigUint64(o, BigInt(v), true));

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
