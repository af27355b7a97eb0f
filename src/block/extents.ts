import { Extent } from './device';
import { ImageError } from './errors';

/** Appends an extent, merging it into the previous one when they continue each other. */
export function pushExtent(list: Extent[], e: Extent): void {
  if (e.length <= 0) return;
  const last = list[list.length - 1];
  if (
    last &&
    last.offset + last.length === e.offset &&
    last.kind === e.kind &&
    last.depth === e.depth &&
    !!last.compressed === !!e.compressed &&
    !!last.pastBackingEnd === !!e.pastBackingEnd &&
    !!last.readsZero === !!e.readsZero &&
    (last.hostOffset === undefined) === (e.hostOffset === undefined) &&
    (last.hostOffset === undefined || last.hostOffset + last.length === e.hostOffset)
  ) {
    last.length += e.length;
    return;
  }
  list.push({ ...e });
}

/** Throws unless [offset, offset+length) lies inside a device of `size` bytes. */
export function checkRange(size: number, offset: number, length: number, what = 'request'): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new ImageError('OUT_OF_RANGE', `${what} at offset ${offset} length ${length} is outside the device (size ${size})`);
  }
}

const ZEROES = new Uint8Array(64 * 1024);

/** True when every byte of the buffer is zero (memcmp against zeroes: several GB/s). */
export function isZero(buf: Uint8Array): boolean {
  for (let o = 0; o < buf.byteLength; o += ZEROES.byteLength) {
    const n = Math.min(ZEROES.byteLength, buf.byteLength - o);
    if (Buffer.compare(buf.subarray(o, o + n), ZEROES.subarray(0, n)) !== 0) return false;
  }
  return true;
}
