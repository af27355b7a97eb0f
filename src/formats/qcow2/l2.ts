/**
 * L2 entries (qcow2.rst "Cluster mapping"): standard and compressed cluster descriptors,
 * and the extended L2 subcluster bitmap ("Extended L2 Entries").
 *
 * An entry is held as 32-bit words, never as a BigInt: the I/O paths decode one per cluster
 * and check, map and amend one per cluster of the image. The words are signed int32 bit
 * patterns, as JS bitwise operators produce them (V8 stores those unboxed; an unsigned word
 * of 2^31 or more would be a heap number). The 64-bit descriptor is `hi` (bits 63-32) and
 * `lo` (bits 31-0). Standard descriptor: bit 63 COPIED, bits 55-9 the host offset,
 * bit 0 the zero flag, bits 61-56 and 8-1 reserved. Bit 62 marks a compressed descriptor.
 */
import { setBe32 } from '../../io/bytes';
import { Geometry } from './header';

export const SECTOR = 512;

const HI_COPIED = 0x80000000;
const HI_COMPRESSED = 0x40000000;
const HI_OFFSET = 0x00ffffff;
const HI_RESERVED = 0x3f000000;
const LO_OFFSET = 0xfffffe00;
const LO_RESERVED = 0x000001fe;
const LO_ZERO = 0x1;
const TWO_32 = 2 ** 32;

export interface L2Entry {
  /** Bits 63-32 and 31-0 of the cluster descriptor. */
  hi: number;
  lo: number;
  /** Extended L2 only: the subcluster bitmap's "allocated" half (its bits 0-31, bit x for subcluster x). */
  alloc: number;
  /** Extended L2 only: the "reads as zero" half (bits 32-63). */
  zero: number;
}

/** Every subcluster's bit, in either half of the bitmap. */
export const ALL_SUBCLUSTERS = ~0;

export const UNALLOCATED: Readonly<L2Entry> = Object.freeze({ hi: 0, lo: 0, alloc: 0, zero: 0 });

/** Big-endian 32-bit word at `o`, which the caller has bounds-checked. */
const word = (t: Uint8Array, o: number): number => (t[o] << 24) | (t[o + 1] << 16) | (t[o + 2] << 8) | t[o + 3];

const pastEnd = (table: Uint8Array, index: number) => new RangeError(`L2 entry ${index} is past the end of a ${table.byteLength}-byte table`);

export function getL2(table: Uint8Array, index: number, g: Geometry): L2Entry {
  const o = index * g.l2EntrySize;
  if (!(index >= 0 && o + g.l2EntrySize <= table.byteLength)) throw pastEnd(table, index);
  if (!g.extendedL2) return { hi: word(table, o), lo: word(table, o + 4), alloc: 0, zero: 0 };
  return { hi: word(table, o), lo: word(table, o + 4), zero: word(table, o + 8), alloc: word(table, o + 12) };
}

export function setL2(table: Uint8Array, index: number, g: Geometry, e: L2Entry): void {
  const o = index * g.l2EntrySize;
  setBe32(table, o, e.hi);
  setBe32(table, o + 4, e.lo);
  if (g.extendedL2) {
    setBe32(table, o + 8, e.zero);
    setBe32(table, o + 12, e.alloc);
  }
}

export const isCompressed = (e: L2Entry): boolean => (e.hi & HI_COMPRESSED) !== 0;
export const isCopied = (e: L2Entry): boolean => (e.hi & HI_COPIED) !== 0;
/** The zero flag of a standard descriptor (version 3 images without extended L2). */
export const hasZeroFlag = (e: L2Entry): boolean => (e.lo & LO_ZERO) !== 0;
/** Bits 1-8 or 56-61 set in a standard descriptor. */
const hasReservedBits = (e: L2Entry): boolean => (e.hi & HI_RESERVED) !== 0 || (e.lo & LO_RESERVED) !== 0;
/** Host offset of a standard (uncompressed) entry; 0 when unallocated. */
export const hostOffset = (e: L2Entry): number => (e.hi & HI_OFFSET) * TWO_32 + ((e.lo & LO_OFFSET) >>> 0);

/** A standard descriptor for host offset `host` (cluster-aligned), with the bitmap halves given. */
export function standardEntry(host: number, flags: { copied?: boolean; zero?: boolean }, alloc = 0, zero = 0): L2Entry {
  return {
    hi: Math.floor(host / TWO_32) | (flags.copied ? HI_COPIED : 0),
    lo: host % TWO_32 | (flags.zero ? LO_ZERO : 0),
    alloc,
    zero,
  };
}

/** Sets or clears COPIED (bit 63) of entry `i`. */
export function setCopied(table: Uint8Array, i: number, g: Geometry, copied: boolean): void {
  const e = getL2(table, i, g);
  setL2(table, i, g, { hi: copied ? e.hi | HI_COPIED : e.hi & ~HI_COPIED, lo: e.lo, alloc: e.alloc, zero: e.zero });
}

/** The descriptor in hex, as messages (and qemu-img check) print it. */
export function entryHex(e: L2Entry): string {
  const lo = (e.lo >>> 0).toString(16);
  return e.hi === 0 ? lo : (e.hi >>> 0).toString(16) + lo.padStart(8, '0');
}

export type ClusterType = 'compressed' | 'zero-plain' | 'zero-alloc' | 'normal' | 'unallocated';

/** The kind of a descriptor, as qemu's qcow2_get_cluster_type decides it. */
export function clusterType(e: L2Entry, extendedL2: boolean, hasDataFile: boolean): ClusterType {
  if (isCompressed(e)) return 'compressed';
  const offset = hostOffset(e);
  if (hasZeroFlag(e) && !extendedL2) return offset ? 'zero-alloc' : 'zero-plain';
  // Offset 0 is a valid data offset in an external data file; COPIED tells them apart.
  if (offset === 0) return hasDataFile && isCopied(e) ? 'normal' : 'unallocated';
  return 'normal';
}

/** An entry as whole-table scans (check, amend, snapshot refcounts) look at it, decoded once. */
export interface ScannedEntry extends L2Entry {
  type: ClusterType;
  /** Host offset of a standard descriptor (0 when unallocated). */
  offset: number;
  copied: boolean;
  /** Reserved bits set in a standard descriptor. */
  reserved: boolean;
}

export function scanEntry(table: Uint8Array, i: number, g: Geometry, hasDataFile: boolean): ScannedEntry {
  const e = getL2(table, i, g);
  const { hi, lo, alloc, zero } = e;
  return { hi, lo, alloc, zero, type: clusterType(e, g.extendedL2, hasDataFile), offset: hostOffset(e), copied: isCopied(e), reserved: hasReservedBits(e) };
}

/**
 * Width of the host offset field of a compressed descriptor: x = 62 - (cluster_bits - 8).
 * With cluster_bits 9 to 21 it is 61 to 49, so the sector count lies wholly in `hi`.
 */
const compressedOffsetBits = (clusterBits: number): number => 62 - (clusterBits - 8);

export interface CompressedDescriptor {
  offset: number;
  /** Bytes to read: whole sectors from the one holding `offset`, minus the part before it. */
  length: number;
  /** Host clusters the data touches (each holds one reference for this descriptor). */
  firstCluster: number;
  lastCluster: number;
}

export function decodeCompressed(e: L2Entry, clusterBits: number): CompressedDescriptor {
  const shift = compressedOffsetBits(clusterBits) - 32;
  const offset = (e.hi & ((1 << shift) - 1)) * TWO_32 + (e.lo >>> 0);
  const extraSectors = (e.hi >>> shift) & ((1 << (clusterBits - 8)) - 1);
  const length = (extraSectors + 1) * SECTOR - (offset % SECTOR);
  return {
    offset,
    length,
    firstCluster: Math.floor(offset / 2 ** clusterBits),
    lastCluster: Math.floor((offset + length - 1) / 2 ** clusterBits),
  };
}

export function encodeCompressed(offset: number, length: number, clusterBits: number): L2Entry {
  const shift = compressedOffsetBits(clusterBits) - 32;
  // "Number of additional 512-byte sectors used for the compressed data, beyond the sector containing the offset"
  const extraSectors = Math.floor((offset + length - 1) / SECTOR) - Math.floor(offset / SECTOR);
  return { hi: HI_COMPRESSED | (extraSectors << shift) | Math.floor(offset / TWO_32), lo: offset % TWO_32 | 0, alloc: 0, zero: 0 };
}

/** Bitmap bits for subclusters [first, last] (for either half). */
export function subclusterMask(first: number, last: number): number {
  const n = last - first + 1;
  return (n === 32 ? ALL_SUBCLUSTERS : (1 << n) - 1) << first;
}
