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

/** True when every byte of the buffer is zero. */
export function isZero(buf: Uint8Array): boolean {
  const n = buf.byteLength;
  let i = 0;
  // Word-at-a-time when aligned: a DataView over 8-byte words is much faster than bytes.
  if ((buf.byteOffset & 7) === 0 && n >= 64) {
    const words = new BigUint64Array(buf.buffer, buf.byteOffset, n >>> 3);
    for (let w = 0; w < words.length; w++) if (words[w] !== 0n) return false;
    i = words.length << 3;
  }
  for (; i < n; i++) if (buf[i] !== 0) return false;
  return true;
}
