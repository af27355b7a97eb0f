/**
 * compare, as qemu-img compare does it: walk both devices' block status together; ranges
 * that read as zeroes in both are equal without I/O, ranges allocated in only one must read
 * as zeroes there, the rest is read and compared. Mismatch offsets are those qemu-img reports:
 * the start of the first differing 512-byte sector. Images of different sizes are equal when
 * the longer one's extra part reads as zeroes, unless `strict`.
 */
import { BlockDevice, Extent } from '../block/device';
import { StatusCursor } from './status-cursor';

export type CompareResult =
  | { equal: true; sizeMismatch: boolean }
  | { equal: false; sizeMismatch: boolean; reason: 'content' | 'status'; offset: number }
  | { equal: false; sizeMismatch: true; reason: 'size' };

export interface CompareOptions {
  /** Differences in allocation or size count as differences (qemu-img compare -s). */
  strict?: boolean;
}

const SECTOR = 512;
const IO_CHUNK = 2 << 20;
const ZEROES = new Uint8Array(IO_CHUNK);

const allocated = (e: Extent): boolean => e.kind !== 'unallocated';
const readsZero = (e: Extent): boolean => e.kind !== 'data' || !!e.readsZero;
/** What qemu's status flags distinguish: kind, whether a host mapping is known, and EOF (the extent ends the device). */
const statusOf = (e: Extent, dev: BlockDevice): string => `${e.kind}/${e.hostOffset !== undefined}/${e.offset + e.length === dev.size}`;

/** Index of the first 512-byte sector that differs, or -1. */
function firstDifferentSector(a: Uint8Array, b: Uint8Array): number {
  if (Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(b)) return -1;
  for (let o = 0; o < a.byteLength; o += SECTOR) {
    const n = Math.min(SECTOR, a.byteLength - o);
    if (Buffer.compare(a.subarray(o, o + n), b.subarray(o, o + n)) !== 0) return o;
  }
  return -1;
}

/** Offset (from the buffer's start) of the first sector that is not all zeroes, or -1. */
function firstNonZeroSector(buf: Uint8Array): number {
  return firstDifferentSector(buf, ZEROES.subarray(0, buf.byteLength));
}

export async function compareDevices(a: BlockDevice, b: BlockDevice, opts: CompareOptions = {}): Promise<CompareResult> {
  const sizeMismatch = a.size !== b.size;
  if (sizeMismatch && opts.strict) return { equal: false, sizeMismatch: true, reason: 'size' };
  const bufA = new Uint8Array(IO_CHUNK);
  const bufB = new Uint8Array(IO_CHUNK);
  const common = Math.min(a.size, b.size);
  const ca = new StatusCursor(a);
  const cb = new StatusCursor(b);

  /** Checks that `dev` reads as zeroes over [offset, offset+length); the mismatch offset if not. */
  const zeroes = async (dev: BlockDevice, offset: number, length: number): Promise<number> => {
    const buf = bufA.subarray(0, length);
    await dev.read(offset, buf);
    const at = firstNonZeroSector(buf);
    return at < 0 ? -1 : offset + at;
  };

  for (let offset = 0; offset < common; ) {
    const ea = await ca.at(offset);
    const eb = await cb.at(offset);
    let chunk = Math.min(ea.length, eb.length, common - offset);
    if (opts.strict && statusOf(ea, a) !== statusOf(eb, b)) return { equal: false, sizeMismatch, reason: 'status', offset };
    if (!(readsZero(ea) && readsZero(eb))) {
      chunk = Math.min(chunk, IO_CHUNK);
      if (allocated(ea) === allocated(eb)) {
        if (allocated(ea)) {
          await Promise.all([a.read(offset, bufA.subarray(0, chunk)), b.read(offset, bufB.subarray(0, chunk))]);
          const at = firstDifferentSector(bufA.subarray(0, chunk), bufB.subarray(0, chunk));
          if (at >= 0) return { equal: false, sizeMismatch, reason: 'content', offset: offset + at };
        }
      } else {
        const at = await zeroes(allocated(ea) ? a : b, offset, chunk);
        if (at >= 0) return { equal: false, sizeMismatch, reason: 'content', offset: at };
      }
    }
    offset += chunk;
  }

  const longer = a.size > b.size ? a : b;
  const cl = new StatusCursor(longer);
  for (let offset = common; offset < longer.size; ) {
    const e = await cl.at(offset);
    let chunk = e.length;
    if (allocated(e) && !readsZero(e)) {
      chunk = Math.min(chunk, IO_CHUNK);
      const at = await zeroes(longer, offset, chunk);
      if (at >= 0) return { equal: false, sizeMismatch, reason: 'content', offset: at };
    }
    offset += chunk;
  }
  return { equal: true, sizeMismatch };
}
