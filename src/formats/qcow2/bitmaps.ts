/**
 * The persistent dirty bitmaps an image carries (docs/interop/qcow2.rst, "Bitmaps extension"
 * and "Bitmap directory"): enough to refcount their clusters in check and to size them in
 * measure. img preserves bitmaps but does not maintain them.
 */
import { ImageError } from '../../block/errors';
import { alignUp, be16, be32, be64, cstring, u8 } from '../../io/bytes';
import { HostFile } from '../../io/host-file';
import * as C from './constants';
import { Qcow2Header } from './header';
import { readClamped } from './stored-refcounts';

/** qemu's QCOW2_MAX_BITMAPS and QCOW2_MAX_BITMAP_DIRECTORY_SIZE. */
export const MAX_BITMAPS = 65535;
export const MAX_BITMAP_DIRECTORY_SIZE = 1024 * MAX_BITMAPS;
const EXTENSION_SIZE = 24;
const DIR_ENTRY_FIXED = 24;
const ENTRY_ALIGN = 8;
export const BITMAP_TABLE_ENTRY_SIZE = 8;
/** Bitmap table entries: bits 9-55 the data cluster, bit 0 "all ones" when unallocated. */
export const BME_OFFSET_MASK = 0x00fffffffffffe00n;
export const BME_RESERVED_MASK = 0xff000000000001fen;
export const BME_FLAG_ALL_ONES = 1n;

export interface BitmapsExtension {
  nbBitmaps: number;
  directorySize: number;
  directoryOffset: number;
}

export interface BitmapEntry {
  name: string;
  tableOffset: number;
  /** Entries in the bitmap table. */
  tableSize: number;
  granularityBits: number;
  flags: number;
}

/** The bitmaps extension qemu honours: present, and the bitmaps autoclear bit still set. */
export function activeBitmapsExtension(h: Qcow2Header): BitmapsExtension | undefined {
  const ext = h.bitmapsExtension;
  if (!ext || (h.autoclearFeatures & C.AUTOCLEAR_BITMAPS) === 0n) return undefined;
  if (ext.byteLength < EXTENSION_SIZE) return undefined;
  return { nbBitmaps: be32(ext, 0), directorySize: be64(ext, 8), directoryOffset: be64(ext, 16) };
}

/** Reads the bitmap directory; throws CORRUPT naming the field when it is malformed. */
export async function readBitmapDirectory(file: HostFile, ext: BitmapsExtension, fileSize: number): Promise<BitmapEntry[]> {
  const bad = (why: string) => new ImageError('CORRUPT', `bitmap directory: ${why}`, { file: file.path, field: 'bitmap directory' });
  if (ext.nbBitmaps > MAX_BITMAPS) throw bad(`${ext.nbBitmaps} bitmaps (at most ${MAX_BITMAPS})`);
  if (ext.directorySize > MAX_BITMAP_DIRECTORY_SIZE) throw bad(`size ${ext.directorySize} is too large`);
  if (ext.directoryOffset + ext.directorySize > fileSize) throw bad(`ends past the end of the file`);
  const dir = new Uint8Array(ext.directorySize);
  await readClamped(file, fileSize, ext.directoryOffset, dir);
  const out: BitmapEntry[] = [];
  let off = 0;
  for (let i = 0; i < ext.nbBitmaps; i++) {
    if (off + DIR_ENTRY_FIXED > dir.byteLength) throw bad(`entry ${i} runs past the directory`);
    const nameSize = be16(dir, off + 18);
    const extra = be32(dir, off + 20);
    const len = DIR_ENTRY_FIXED + extra + nameSize;
    if (off + len > dir.byteLength) throw bad(`entry ${i} runs past the directory`);
    out.push({
      tableOffset: be64(dir, off),
      tableSize: be32(dir, off + 8),
      flags: be32(dir, off + 12),
      granularityBits: u8(dir, off + 17),
      name: cstring(dir, off + DIR_ENTRY_FIXED + extra, nameSize),
    });
    off = alignUp(off + len, ENTRY_ALIGN);
  }
  return out;
}

/** Size of a directory entry for a bitmap named `name` without extra data (qemu's calc_dir_entry_size). */
export function directoryEntrySize(name: string): number {
  return alignUp(DIR_ENTRY_FIXED + Buffer.byteLength(name, 'utf8'), ENTRY_ALIGN);
}
