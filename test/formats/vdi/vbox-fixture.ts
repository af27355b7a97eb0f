/**
 * Generator of VirtualBox-layout VDI files for tests, written from VDICore.h's structures
 * (VDIPREHEADER + VDIHEADER1PLUS, little-endian, IPRT UUIDs) independently of src/: the
 * block map at 1 MiB (VDI_DATA_ALIGN), data at the next 1 MiB boundary after it, blocks of
 * 1 MiB appended in allocation order, as VirtualBox's VDI.cpp lays them out. VBoxManage is
 * not available where the tests run, so these bytes stand in for its differencing images.
 */
import * as fs from 'node:fs';

export const MiB = 1 << 20;
const ALIGN = MiB;
export const FREE = 0xffffffff;
export const ZERO = 0xfffffffe;

export interface VboxImageSpec {
  /** VDI_IMAGE_TYPE_NORMAL 1, FIXED 2, UNDO 3, DIFF 4. */
  type: number;
  diskSize: number;
  uuidCreate: string;
  uuidModify: string;
  uuidLinkage?: string;
  uuidParentModify?: string;
  /** Per virtual block: data (a whole block), or FREE / ZERO. Missing blocks are FREE. */
  blocks: (Buffer | number | undefined)[];
  comment?: string;
}

/** RTUUID bytes: the first three fields little-endian. */
function uuidBytes(uuid: string): Buffer {
  const b = Buffer.from(uuid.replace(/-/g, ''), 'hex');
  return Buffer.concat([Buffer.from(b.subarray(0, 4)).reverse(), Buffer.from(b.subarray(4, 6)).reverse(), Buffer.from(b.subarray(6, 8)).reverse(), b.subarray(8)]);
}

export interface VboxLayout {
  header: Buffer;
  offBlocks: number;
  offData: number;
  cBlocks: number;
}

export function vboxHeader(spec: VboxImageSpec, cBlocksAllocated: number): VboxLayout {
  const cBlocks = Math.ceil(spec.diskSize / MiB);
  const offBlocks = Math.ceil((0x48 + 0x190) / ALIGN) * ALIGN;
  const offData = Math.ceil((offBlocks + cBlocks * 4) / ALIGN) * ALIGN;
  const h = Buffer.alloc(512);
  h.write('<<< Oracle VirtualBox Disk Image >>>\n', 0, 'latin1'); // szFileInfo[64]
  h.writeUInt32LE(0xbeda107f, 0x40); // u32Signature
  h.writeUInt32LE(0x00010001, 0x44); // u32Version 1.1
  h.writeUInt32LE(0x190, 0x48); // cbHeader = sizeof(VDIHEADER1PLUS)
  h.writeUInt32LE(spec.type, 0x4c); // u32Type
  h.writeUInt32LE(0, 0x50); // fFlags
  h.write(spec.comment ?? '', 0x54, 'utf8'); // szComment[256]
  h.writeUInt32LE(offBlocks, 0x154); // offBlocks
  h.writeUInt32LE(offData, 0x158); // offData
  h.writeUInt32LE(512, 0x168); // LegacyGeometry.cbSector (cylinders, heads, sectors stay 0)
  h.writeBigUInt64LE(BigInt(spec.diskSize), 0x170); // cbDisk
  h.writeUInt32LE(MiB, 0x178); // cbBlock
  h.writeUInt32LE(0, 0x17c); // cbBlockExtra
  h.writeUInt32LE(cBlocks, 0x180); // cBlocks
  h.writeUInt32LE(cBlocksAllocated, 0x184); // cBlocksAllocated
  uuidBytes(spec.uuidCreate).copy(h, 0x188);
  uuidBytes(spec.uuidModify).copy(h, 0x198);
  uuidBytes(spec.uuidLinkage ?? '00000000-0000-0000-0000-000000000000').copy(h, 0x1a8);
  uuidBytes(spec.uuidParentModify ?? '00000000-0000-0000-0000-000000000000').copy(h, 0x1b8);
  h.writeUInt32LE(512, 0x1d4); // LCHSGeometry.cbSector
  return { header: h, offBlocks, offData, cBlocks };
}

/** Writes the image; returns the block map as written. */
export function writeVboxImage(file: string, spec: VboxImageSpec): number[] {
  const data = spec.blocks.filter((b): b is Buffer => Buffer.isBuffer(b));
  const layout = vboxHeader(spec, data.length);
  const map: number[] = [];
  let next = 0;
  for (let i = 0; i < layout.cBlocks; i++) {
    const b = spec.blocks[i];
    map.push(Buffer.isBuffer(b) ? next++ : (b ?? FREE));
  }
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, layout.offData + next * MiB);
    fs.writeSync(fd, layout.header, 0, 512, 0);
    const m = Buffer.alloc(layout.cBlocks * 4);
    map.forEach((e, i) => m.writeUInt32LE(e, i * 4));
    fs.writeSync(fd, m, 0, m.length, layout.offBlocks);
    data.forEach((d, i) => {
      if (d.length !== MiB) throw new Error('fixture blocks are 1 MiB');
      fs.writeSync(fd, d, 0, MiB, layout.offData + i * MiB);
    });
  } finally {
    fs.closeSync(fd);
  }
  return map;
}

/** A block filled with a pattern that names it, so misplaced blocks are caught. */
export function patternBlock(tag: number): Buffer {
  const b = Buffer.alloc(MiB);
  for (let i = 0; i < MiB; i += 4) b.writeUInt32LE((tag * 0x9e3779b1 + i) >>> 0, i);
  return b;
}
