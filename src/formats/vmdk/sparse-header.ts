/**
 * The SparseExtentHeader of hosted sparse and stream-optimized extents (Virtual Disk Format
 * 1.1, §"Hosted Sparse Extent Header"): one little-endian sector at offset 0, repeated in the
 * footer of a stream-optimized extent whose gdOffset is GD_AT_END.
 */
import { badField, ImageError } from '../../block/errors';
import { be32, cstring, le16, le32, le64, le64n, setBe32, setLe16, setLe32, setLe64, setU8, u8 } from '../../io/bytes';
import * as C from './constants';

export interface SparseHeader {
  version: number;
  flags: number;
  /** Sectors of the extent. */
  capacity: number;
  /** Sectors per grain. */
  grainSize: number;
  descriptorOffset: number;
  descriptorSize: number;
  numGTEsPerGT: number;
  rgdOffset: number;
  /** Sector of the grain directory; null for GD_AT_END (look in the footer). */
  gdOffset: number | null;
  /** Sectors before the first grain ("overHead"). */
  overHead: number;
  uncleanShutdown: boolean;
  compressAlgorithm: number;
}

const OFF = {
  magic: 0,
  version: 4,
  flags: 8,
  capacity: 12,
  grainSize: 20,
  descriptorOffset: 28,
  descriptorSize: 36,
  numGTEsPerGT: 44,
  rgdOffset: 48,
  gdOffset: 56,
  overHead: 64,
  uncleanShutdown: 72,
  newlineChecks: 73,
  compressAlgorithm: 77,
} as const;

/** The newline-detection bytes: '\n', ' ', '\r', '\n' (corrupted by text-mode FTP). */
const NEWLINE_CHECK = '\n \r\n';

export function isSparseMagic(head: Uint8Array): boolean {
  return head.byteLength >= 4 && be32(head, 0) === C.SPARSE_MAGIC;
}

/** Parses and validates a header sector; `where` names it in errors ("header", "footer"). */
export function parseSparseHeader(b: Uint8Array, file: string, where = 'header'): SparseHeader {
  if (b.byteLength < C.SECTOR) throw new ImageError('BAD_HEADER', `${where} is truncated (${b.byteLength} bytes)`, { file });
  if (be32(b, OFF.magic) !== C.SPARSE_MAGIC) throw badField(file, `${where} magic`, `0x${be32(b, 0).toString(16)}`, 'not a VMDK sparse extent (KDMV)');
  const field = (name: string, read: () => number): number => {
    try {
      return read();
    } catch {
      throw badField(file, `${where} ${name}`, 'too large', 'does not fit in 2^53');
    }
  };
  const gdRaw = le64n(b, OFF.gdOffset);
  const h: SparseHeader = {
    version: le32(b, OFF.version),
    flags: le32(b, OFF.flags),
    capacity: field('capacity', () => le64(b, OFF.capacity)),
    grainSize: field('grainSize', () => le64(b, OFF.grainSize)),
    descriptorOffset: field('descriptorOffset', () => le64(b, OFF.descriptorOffset)),
    descriptorSize: field('descriptorSize', () => le64(b, OFF.descriptorSize)),
    numGTEsPerGT: le32(b, OFF.numGTEsPerGT),
    rgdOffset: field('rgdOffset', () => le64(b, OFF.rgdOffset)),
    gdOffset: gdRaw === C.GD_AT_END ? null : field('gdOffset', () => le64(b, OFF.gdOffset)),
    overHead: field('overHead', () => le64(b, OFF.overHead)),
    uncleanShutdown: u8(b, OFF.uncleanShutdown) !== 0,
    compressAlgorithm: le16(b, OFF.compressAlgorithm),
  };
  if (h.version < 1 || h.version > C.MAX_VERSION) {
    throw new ImageError('UNSUPPORTED', `unsupported VMDK ${where} version ${h.version} (img reads 1 to ${C.MAX_VERSION})`, { file, field: 'version', value: h.version });
  }
  if (h.grainSize < 1 || h.grainSize > C.MAX_GRAIN_SECTORS || (h.grainSize & (h.grainSize - 1)) !== 0) {
    throw badField(file, `${where} grainSize`, h.grainSize, `must be a power of two from 1 to ${C.MAX_GRAIN_SECTORS} sectors`);
  }
  if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > C.MAX_GTES_PER_GT) {
    throw badField(file, `${where} numGTEsPerGT`, h.numGTEsPerGT, `must be 1 to ${C.MAX_GTES_PER_GT}`);
  }
  if (h.capacity > C.MAX_EXTENT_SECTORS * 64) throw badField(file, `${where} capacity`, h.capacity, 'is absurdly large');
  if (h.compressAlgorithm !== C.COMPRESSION_NONE && h.compressAlgorithm !== C.COMPRESSION_DEFLATE) {
    throw new ImageError('UNSUPPORTED', `unsupported compressAlgorithm ${h.compressAlgorithm} in the ${where}`, { file, field: 'compressAlgorithm', value: h.compressAlgorithm });
  }
  if ((h.flags & C.FLAG_VALID_NEWLINE_TEST) !== 0 && cstring(b, OFF.newlineChecks, 4) !== NEWLINE_CHECK) {
    throw new ImageError('CORRUPT', `the ${where}'s newline check bytes are damaged (was the file transferred in text mode?)`, { file, field: 'singleEndLineChar' });
  }
  return h;
}

export function serializeSparseHeader(h: SparseHeader): Uint8Array {
  const b = new Uint8Array(C.SECTOR);
  setBe32(b, OFF.magic, C.SPARSE_MAGIC);
  setLe32(b, OFF.version, h.version);
  setLe32(b, OFF.flags, h.flags);
  setLe64(b, OFF.capacity, h.capacity);
  setLe64(b, OFF.grainSize, h.grainSize);
  setLe64(b, OFF.descriptorOffset, h.descriptorOffset);
  setLe64(b, OFF.descriptorSize, h.descriptorSize);
  setLe32(b, OFF.numGTEsPerGT, h.numGTEsPerGT);
  setLe64(b, OFF.rgdOffset, h.rgdOffset);
  setLe64(b, OFF.gdOffset, h.gdOffset ?? C.GD_AT_END);
  setLe64(b, OFF.overHead, h.overHead);
  setU8(b, OFF.uncleanShutdown, h.uncleanShutdown ? 1 : 0);
  b.set(Buffer.from(NEWLINE_CHECK, 'latin1'), OFF.newlineChecks);
  setLe16(b, OFF.compressAlgorithm, h.compressAlgorithm);
  return b;
}

/** Grain directory geometry of a header: entries, and sectors of one grain table. */
export function gdEntries(h: SparseHeader): number {
  return Math.ceil(h.capacity / (h.numGTEsPerGT * h.grainSize));
}
export function gtSectors(h: SparseHeader): number {
  return Math.ceil((h.numGTEsPerGT * 4) / C.SECTOR);
}

/** A stream marker sector: val (u64), size (u32, 0 for metadata markers), type (u32). */
export function markerSector(val: number, type: number): Uint8Array {
  const b = new Uint8Array(C.SECTOR);
  setLe64(b, 0, val);
  setLe32(b, 8, 0);
  setLe32(b, 12, type);
  return b;
}

export function parseMarker(b: Uint8Array, o = 0): { val: number; size: number; type: number } {
  return { val: le64(b, o), size: le32(b, o + 8), type: le32(b, o + 12) };
}
