/**
 * The VDI 1.1 header: VirtualBox's VDIPREHEADER followed by VDIHEADER1 (qemu writes that
 * size, 0x180) or VDIHEADER1PLUS (VirtualBox writes it, 0x190, adding the LCHS geometry);
 * see VirtualBox src/VBox/Storage/VDICore.h. Every field is little-endian; UUIDs are
 * IPRT RTUUIDs, whose first three fields are little-endian too.
 */
import { badField, ImageError } from '../../block/errors';
import { cstring, le32, le64, setLe32, setLe64 } from '../../io/bytes';
import { uuidFromDisk, uuidToDisk } from './uuid';

export const VDI_SIGNATURE = 0xbeda107f;
/** Major 1, minor 1 (VDI_IMAGE_VERSION). */
export const VDI_VERSION_1_1 = 0x00010001;
export const SECTOR = 512;
export const DEFAULT_BLOCK_SIZE = 1 << 20;
/** Largest block size img accepts; the format asks only for a power of two. */
export const MAX_BLOCK_SIZE = 1 << 26;
/**
 * Most blocks img handles: the block map is held in memory (4 bytes a block), so it is capped
 * at 64 MiB, 16 TiB of 1 MiB blocks (qemu's VDI_BLOCKS_IN_IMAGE_MAX, 0x3fffffff, is a 4 GiB map).
 */
export const MAX_BLOCKS = 1 << 24;

/** VDIIMAGETYPE. */
export const TYPE_NORMAL = 1;
export const TYPE_FIXED = 2;
export const TYPE_UNDO = 3;
export const TYPE_DIFF = 4;
export const TYPE_NAMES: Record<number, string> = { 1: 'dynamic', 2: 'static', 3: 'undo', 4: 'differencing' };

/** Block map entry of a block never written (VDI_IMAGE_BLOCK_FREE): reads through to the parent, or as zeroes. */
export const BLOCK_FREE = 0xffffffff;
/** Block map entry of a discarded block (VDI_IMAGE_BLOCK_ZERO): reads as zeroes. */
export const BLOCK_ZERO = 0xfffffffe;
export const isAllocated = (entry: number): boolean => entry < BLOCK_ZERO;

/** sizeof(VDIPREHEADER). */
export const PREHEADER_SIZE = 0x48;
/** sizeof(VDIHEADER1): the header size qemu writes. */
export const HEADER1_SIZE = 0x180;
/** sizeof(VDIHEADER1PLUS): the header size VirtualBox writes. */
export const HEADER1PLUS_SIZE = 0x190;
/** Bytes read and written for the header: qemu's VdiHeader is one sector. */
export const HEADER_SECTOR = 512;

/** Byte offsets of the fields, from the start of the file. */
export const F = {
  text: 0x00,
  signature: 0x40,
  version: 0x44,
  cbHeader: 0x48,
  u32Type: 0x4c,
  fFlags: 0x50,
  szComment: 0x54,
  offBlocks: 0x154,
  offData: 0x158,
  legacyCylinders: 0x15c,
  legacyHeads: 0x160,
  legacySectors: 0x164,
  legacySectorSize: 0x168,
  cbDisk: 0x170,
  cbBlock: 0x178,
  cbBlockExtra: 0x17c,
  cBlocks: 0x180,
  cBlocksAllocated: 0x184,
  uuidCreate: 0x188,
  uuidModify: 0x198,
  uuidLinkage: 0x1a8,
  uuidParentModify: 0x1b8,
  lchsCylinders: 0x1c8,
  lchsHeads: 0x1cc,
  lchsSectors: 0x1d0,
  lchsSectorSize: 0x1d4,
} as const;
export const TEXT_SIZE = 64;
export const COMMENT_SIZE = 256;

export interface VdiHeader {
  text: string;
  headerSize: number;
  imageType: number;
  flags: number;
  comment: string;
  offsetBlocks: number;
  offsetData: number;
  legacyGeometry: [number, number, number];
  sectorSize: number;
  /** cbDisk as stored (may be odd; the virtual size rounds it up to a sector). */
  diskSize: number;
  blockSize: number;
  blockExtra: number;
  blocks: number;
  blocksAllocated: number;
  uuidCreate: string;
  uuidModify: string;
  uuidLinkage: string;
  uuidParentModify: string;
  /** Present when the header is a VDIHEADER1PLUS. */
  lchsGeometry?: [number, number, number];
}

export const NULL_UUID = '00000000-0000-0000-0000-000000000000';

/** qemu's probe: the signature at 0x40 of at least one header sector. */
export function isVdi(head: Uint8Array): boolean {
  return head.byteLength >= HEADER_SECTOR && le32(head, F.signature) === VDI_SIGNATURE;
}

const isPow2 = (v: number): boolean => v > 0 && (v & (v - 1)) === 0;

/**
 * Parses and validates the header sector. Checks follow qemu's vdi_open and VirtualBox's
 * vdiValidateHeader; the block map must also lie inside the file, which bounds what opening
 * allocates by what the file really holds.
 */
export function parseHeader(buf: Uint8Array, fileSize: number, file: string): VdiHeader {
  if (fileSize < PREHEADER_SIZE + HEADER1_SIZE || buf.byteLength < HEADER_SECTOR) {
    throw new ImageError('BAD_HEADER', `file is too short (${fileSize} bytes) for a VDI header`, { file, field: 'header', value: fileSize });
  }
  const signature = le32(buf, F.signature);
  if (signature !== VDI_SIGNATURE) throw badField(file, 'signature', `0x${signature.toString(16)}`, 'not a VDI image (expected 0xbeda107f)');
  const version = le32(buf, F.version);
  if (version !== VDI_VERSION_1_1) {
    throw new ImageError('UNSUPPORTED', `unsupported VDI version ${version >>> 16}.${version & 0xffff} (only 1.1 is supported)`, {
      file,
      field: 'version',
      value: version,
    });
  }
  let diskSize: number;
  try {
    diskSize = le64(buf, F.cbDisk);
  } catch {
    throw badField(file, 'cbDisk', '(above 2^53)', 'disk size is absurd');
  }
  const h: VdiHeader = {
    text: cstring(buf, F.text, TEXT_SIZE),
    headerSize: le32(buf, F.cbHeader),
    imageType: le32(buf, F.u32Type),
    flags: le32(buf, F.fFlags),
    comment: cstring(buf, F.szComment, COMMENT_SIZE),
    offsetBlocks: le32(buf, F.offBlocks),
    offsetData: le32(buf, F.offData),
    legacyGeometry: [le32(buf, F.legacyCylinders), le32(buf, F.legacyHeads), le32(buf, F.legacySectors)],
    sectorSize: le32(buf, F.legacySectorSize),
    diskSize,
    blockSize: le32(buf, F.cbBlock),
    blockExtra: le32(buf, F.cbBlockExtra),
    blocks: le32(buf, F.cBlocks),
    blocksAllocated: le32(buf, F.cBlocksAllocated),
    uuidCreate: uuidFromDisk(buf, F.uuidCreate),
    uuidModify: uuidFromDisk(buf, F.uuidModify),
    uuidLinkage: uuidFromDisk(buf, F.uuidLinkage),
    uuidParentModify: uuidFromDisk(buf, F.uuidParentModify),
  };
  if (h.headerSize >= HEADER1PLUS_SIZE) h.lchsGeometry = [le32(buf, F.lchsCylinders), le32(buf, F.lchsHeads), le32(buf, F.lchsSectors)];
  validate(h, fileSize, file);
  return h;
}

function validate(h: VdiHeader, fileSize: number, file: string): void {
  if (h.headerSize < HEADER1_SIZE) throw badField(file, 'cbHeader', h.headerSize, `a 1.1 header has at least ${HEADER1_SIZE} bytes`);
  if (!(h.imageType in TYPE_NAMES)) throw badField(file, 'u32Type', h.imageType, 'expected 1 (normal), 2 (fixed), 3 (undo) or 4 (diff)');
  if (h.imageType === TYPE_UNDO) {
    throw new ImageError('UNSUPPORTED', 'VDI undo images (type 3) are not supported', { file, field: 'u32Type', value: h.imageType });
  }
  if (h.sectorSize !== SECTOR) {
    throw new ImageError('UNSUPPORTED', `unsupported VDI sector size ${h.sectorSize} (only 512)`, { file, field: 'cbSector', value: h.sectorSize });
  }
  if (!isPow2(h.blockSize) || h.blockSize < SECTOR || h.blockSize > MAX_BLOCK_SIZE) {
    throw badField(file, 'cbBlock', h.blockSize, `block size must be a power of two from ${SECTOR} to ${MAX_BLOCK_SIZE}`);
  }
  if (h.blockExtra !== 0) {
    throw new ImageError('UNSUPPORTED', `VDI images with per-block extra data (cbBlockExtra ${h.blockExtra}) are not supported`, {
      file,
      field: 'cbBlockExtra',
      value: h.blockExtra,
    });
  }
  if (h.blocks > MAX_BLOCKS) throw badField(file, 'cBlocks', h.blocks, `more than the ${MAX_BLOCKS} blocks img supports`);
  if (h.diskSize > h.blocks * h.blockSize) {
    throw badField(file, 'cbDisk', h.diskSize, `larger than the ${h.blocks} blocks of ${h.blockSize} bytes the block map covers`);
  }
  if (h.offsetBlocks % SECTOR !== 0 || h.offsetBlocks < PREHEADER_SIZE + HEADER1_SIZE) {
    throw badField(file, 'offBlocks', h.offsetBlocks, 'must be sector-aligned and after the header');
  }
  const mapEnd = h.offsetBlocks + h.blocks * 4;
  if (mapEnd > fileSize) throw badField(file, 'cBlocks', h.blocks, `the block map at ${h.offsetBlocks} would end past the end of the file (${fileSize} bytes)`);
  if (h.offsetData % SECTOR !== 0 || h.offsetData < mapEnd) {
    throw badField(file, 'offData', h.offsetData, `must be sector-aligned and after the block map (which ends at ${mapEnd})`);
  }
  if (h.imageType === TYPE_DIFF && h.uuidLinkage === NULL_UUID) {
    throw badField(file, 'uuidLinkage', h.uuidLinkage, 'a differencing image must name its parent');
  }
}

/** The header sector for `h` (bytes past cbHeader stay zero, as both writers leave them). */
export function serializeHeader(h: VdiHeader): Uint8Array {
  const b = new Uint8Array(HEADER_SECTOR);
  const text = Buffer.from(h.text, 'utf8').subarray(0, TEXT_SIZE - 1);
  b.set(text, F.text);
  const comment = Buffer.from(h.comment, 'utf8').subarray(0, COMMENT_SIZE - 1);
  b.set(comment, F.szComment);
  setLe32(b, F.signature, VDI_SIGNATURE);
  setLe32(b, F.version, VDI_VERSION_1_1);
  setLe32(b, F.cbHeader, h.headerSize);
  setLe32(b, F.u32Type, h.imageType);
  setLe32(b, F.fFlags, h.flags);
  setLe32(b, F.offBlocks, h.offsetBlocks);
  setLe32(b, F.offData, h.offsetData);
  setLe32(b, F.legacyCylinders, h.legacyGeometry[0]);
  setLe32(b, F.legacyHeads, h.legacyGeometry[1]);
  setLe32(b, F.legacySectors, h.legacyGeometry[2]);
  setLe32(b, F.legacySectorSize, h.sectorSize);
  setLe64(b, F.cbDisk, h.diskSize);
  setLe32(b, F.cbBlock, h.blockSize);
  setLe32(b, F.cbBlockExtra, h.blockExtra);
  setLe32(b, F.cBlocks, h.blocks);
  setLe32(b, F.cBlocksAllocated, h.blocksAllocated);
  uuidToDisk(b, F.uuidCreate, h.uuidCreate);
  uuidToDisk(b, F.uuidModify, h.uuidModify);
  uuidToDisk(b, F.uuidLinkage, h.uuidLinkage);
  uuidToDisk(b, F.uuidParentModify, h.uuidParentModify);
  if (h.lchsGeometry) {
    setLe32(b, F.lchsCylinders, h.lchsGeometry[0]);
    setLe32(b, F.lchsHeads, h.lchsGeometry[1]);
    setLe32(b, F.lchsSectors, h.lchsGeometry[2]);
    setLe32(b, F.lchsSectorSize, SECTOR);
  }
  return b;
}

/** Just cBlocksAllocated, for the header rewrite after allocations. */
export function allocatedField(count: number): Uint8Array {
  const b = new Uint8Array(4);
  setLe32(b, 0, count);
  return b;
}
