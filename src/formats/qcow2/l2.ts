/**
 * L2 entries (qcow2.rst "Cluster mapping"): standard and compressed cluster descriptors,
 * and the extended L2 subcluster bitmap ("Extended L2 Entries").
 */
import { be64n, setBe64 } from '../../io/bytes';
import * as C from './constants';
import { Geometry } from './header';

export const SECTOR = 512;

export interface L2Entry {
  entry: bigint;
  /** Extended L2 only: bits 0-31 allocated, 32-63 reads-as-zero, one per subcluster. */
  bitmap: bigint;
}

export const ALL_ALLOC = 0xffffffffn;
export const ALL_ZERO = 0xffffffffn << 32n;

export function getL2(table: Uint8Array, index: number, g: Geometry): L2Entry {
  const o = index * g.l2EntrySize;
  return { entry: be64n(table, o), bitmap: g.extendedL2 ? be64n(table, o + 8) : 0n };
}

export function setL2(table: Uint8Array, index: number, g: Geometry, e: L2Entry): void {
  const o = index * g.l2EntrySize;
  setBe64(table, o, e.entry);
  if (g.extendedL2) setBe64(table, o + 8, e.bitmap);
}

export const isCompressed = (e: bigint): boolean => (e & C.OFLAG_COMPRESSED) !== 0n;
export const isCopied = (e: bigint): boolean => (e & C.OFLAG_COPIED) !== 0n;
/** Host offset of a standard (uncompressed) entry; 0 when unallocated. */
export const hostOffset = (e: bigint): number => Number(e & C.L2E_OFFSET_MASK);

/** Width of the host offset field of a compressed descriptor: x = 62 - (cluster_bits - 8). */
const compressedOffsetBits = (clusterBits: number): bigint => BigInt(62 - (clusterBits - 8));

export interface CompressedDescriptor {
  offset: number;
  /** Bytes to read: whole sectors from the one holding `offset`, minus the part before it. */
  length: number;
  /** Host clusters the data touches (each holds one reference for this descriptor). */
  firstCluster: number;
  lastCluster: number;
}

export function decodeCompressed(e: bigint, clusterBits: number): CompressedDescriptor {
  const x = compressedOffsetBits(clusterBits);
  const offset = Number(e & ((1n << x) - 1n));
  const extraSectors = Number((e >> x) & ((1n << BigInt(clusterBits - 8)) - 1n));
  const length = (extraSectors + 1) * SECTOR - (offset % SECTOR);
  return {
    offset,
    length,
    firstCluster: Math.floor(offset / 2 ** clusterBits),
    lastCluster: Math.floor((offset + length - 1) / 2 ** clusterBits),
  };
}

export function encodeCompressed(offset: number, length: number, clusterBits: number): bigint {
  const x = compressedOffsetBits(clusterBits);
  // "Number of additional 512-byte sectors used for the compressed data, beyond the sector containing the offset"
  const extraSectors = Math.floor((offset + length - 1) / SECTOR) - Math.floor(offset / SECTOR);
  return C.OFLAG_COMPRESSED | (BigInt(extraSectors) << x) | BigInt(offset);
}

/** Bitmap bits for subclusters [first, last] (alloc half; shift by 32 for the zero half). */
export function subclusterMask(first: number, last: number): bigint {
  return ((1n << BigInt(last - first + 1)) - 1n) << BigInt(first);
}
