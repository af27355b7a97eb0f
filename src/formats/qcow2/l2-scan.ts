/**
 * A BigInt-free view of L2 entries for whole-table scans (check, amend), which visit every
 * entry of every table: the 64-bit descriptor is read as two 32-bit halves and decoded with
 * the bit layout of qcow2.rst "Cluster mapping" (standard descriptor: bits 9-55 host offset,
 * bit 0 zero flag, bits 1-8 and 56-61 reserved; bit 62 compressed, bit 63 COPIED).
 */
import { Geometry } from './header';

export type ClusterType = 'compressed' | 'zero-plain' | 'zero-alloc' | 'normal' | 'unallocated';

const HI_COPIED = 0x80000000;
const HI_COMPRESSED = 0x40000000;
const HI_OFFSET = 0x00ffffff;
const HI_RESERVED = 0x3f000000;
const LO_OFFSET = 0xfffffe00;
const LO_RESERVED = 0x000001fe;
const LO_ZERO = 0x1;
const TWO_32 = 2 ** 32;

export interface ScannedEntry {
  /** The whole descriptor (for messages and rewrites). */
  entry: () => bigint;
  type: ClusterType;
  /** Host offset of a standard descriptor (0 when unallocated). */
  offset: number;
  copied: boolean;
  /** Bits 1-8 or 56-61 set in a standard descriptor. */
  reserved: boolean;
  /** Extended L2: the subcluster "allocated" (bits 0-31) and "reads as zero" (32-63) halves. */
  allocBits: number;
  zeroBits: number;
}

/** The kind of a descriptor, as qemu's qcow2_get_cluster_type decides it. */
function kind(hi: number, lo: number, offset: number, extendedL2: boolean, hasDataFile: boolean): ClusterType {
  if (hi & HI_COMPRESSED) return 'compressed';
  if (lo & LO_ZERO && !extendedL2) return offset ? 'zero-alloc' : 'zero-plain';
  // Offset 0 is a valid data offset in an external data file; COPIED tells them apart.
  if (offset === 0) return hasDataFile && hi & HI_COPIED ? 'normal' : 'unallocated';
  return 'normal';
}

/** Decodes entry `i` of an L2 table. */
export function scanEntry(view: DataView, i: number, g: Geometry, hasDataFile: boolean): ScannedEntry {
  const o = i * g.l2EntrySize;
  const hi = view.getUint32(o);
  const lo = view.getUint32(o + 4);
  const offset = (hi & HI_OFFSET) * TWO_32 + ((lo & LO_OFFSET) >>> 0);
  return {
    entry: () => (BigInt(hi) << 32n) | BigInt(lo),
    type: kind(hi, lo, offset, g.extendedL2, hasDataFile),
    offset,
    copied: (hi & HI_COPIED) !== 0,
    reserved: (hi & HI_RESERVED) !== 0 || (lo & LO_RESERVED) !== 0,
    zeroBits: g.extendedL2 ? view.getUint32(o + 8) : 0,
    allocBits: g.extendedL2 ? view.getUint32(o + 12) : 0,
  };
}

export function tableView(table: Uint8Array): DataView {
  return new DataView(table.buffer, table.byteOffset, table.byteLength);
}

/** Sets or clears COPIED (bit 63) of entry `i`. */
export function setCopied(view: DataView, i: number, g: Geometry, copied: boolean): void {
  const o = i * g.l2EntrySize;
  const hi = view.getUint32(o);
  view.setUint32(o, copied ? (hi | HI_COPIED) >>> 0 : hi & ~HI_COPIED);
}
