/**
 * Creating a VDI: the options of `qemu-img create -f vdi` (size, static, preallocation) plus
 * `layout`: qemu's compact layout (block map right after a 0x180-byte header in sector 0,
 * data right after the map; block/vdi.c vdi_co_do_create) or VirtualBox's, where the map and
 * the data each start on a 1 MiB boundary (VDI_DATA_ALIGN) after a 0x190-byte header
 * (VDI.cpp vdiInitHeader).
 */
import { ImageError } from '../../block/errors';
import { CreateOptions, CreateOptionSpec } from '../../block/image';
import { alignUp, divCeil } from '../../io/bytes';
import { HostFile } from '../../io/host-file';
import { parseBool, parsePreallocation, parseSize, Preallocation } from '../options';
import {
  BLOCK_FREE,
  DEFAULT_BLOCK_SIZE,
  HEADER1_SIZE,
  HEADER1PLUS_SIZE,
  MAX_BLOCKS,
  NULL_UUID,
  PREHEADER_SIZE,
  SECTOR,
  serializeHeader,
  TYPE_FIXED,
  TYPE_NORMAL,
  VdiHeader,
} from './header';
import { newUuid } from './uuid';

export const VDI_CREATE_OPTIONS: CreateOptionSpec[] = [
  { name: 'layout', type: 'string', help: 'Block map and data placement: qemu (compact) or vbox (1 MiB-aligned, as VirtualBox writes)', default: 'qemu' },
  { name: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, metadata, falloc, full); anything but off makes a static image', default: 'off' },
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'static', type: 'bool', help: 'VDI static (pre-allocated) image', default: 'off' },
];

/** Host hints qemu accepts that mean nothing here. */
const IGNORED_OPTIONS = ['extent_size_hint', 'nocow'];

/** qemu's and VirtualBox's header text ("for eyes only"). */
const QEMU_TEXT = '<<< QEMU VM Virtual Disk Image >>>\n';
const VBOX_TEXT = '<<< Oracle VirtualBox Disk Image >>>\n';
/** VDI_DATA_ALIGN: where VirtualBox puts the block map and the data area. */
const VBOX_ALIGN = 1 << 20;
/** qemu places the block map in the sector after the header. */
const QEMU_MAP_OFFSET = 0x200;

export type Layout = 'qemu' | 'vbox';

export interface VdiCreateParams {
  size: number;
  layout: Layout;
  static: boolean;
  preallocation: Preallocation;
}

export function vdiCreateParams(file: string | undefined, options: Record<string, string>, defaultSize: number): VdiCreateParams {
  for (const k of Object.keys(options)) {
    if (!VDI_CREATE_OPTIONS.some((s) => s.name === k) && !IGNORED_OPTIONS.includes(k) && k !== 'backing_file' && k !== 'backing_fmt') {
      throw new ImageError('INVALID_ARGUMENT', `vdi does not support option '${k}'`, { file, field: k, value: options[k] });
    }
  }
  const layout = options.layout ?? 'qemu';
  if (layout !== 'qemu' && layout !== 'vbox') {
    throw new ImageError('INVALID_ARGUMENT', `invalid layout '${layout}' (expected qemu or vbox)`, { file, field: 'layout', value: layout });
  }
  const preallocation = parsePreallocation(options.preallocation ?? 'off');
  // qemu rounds the size up to whole sectors.
  const size = alignUp(options.size !== undefined ? parseSize(options.size) : defaultSize, SECTOR);
  const maxSize = MAX_BLOCKS * DEFAULT_BLOCK_SIZE;
  if (size > maxSize) {
    throw new ImageError('INVALID_ARGUMENT', `unsupported VDI image size ${size} (the largest is ${maxSize})`, { file, field: 'size', value: size });
  }
  const isStatic = (options.static !== undefined && parseBool(options.static, 'static')) || preallocation !== 'off';
  return { size, layout, static: isStatic, preallocation };
}

/** The header of a new image: offsets from the layout, fresh UUIDs, no parent. */
export function newHeader(p: VdiCreateParams): VdiHeader {
  const blocks = divCeil(p.size, DEFAULT_BLOCK_SIZE);
  const vbox = p.layout === 'vbox';
  const offsetBlocks = vbox ? alignUp(PREHEADER_SIZE + HEADER1PLUS_SIZE, VBOX_ALIGN) : QEMU_MAP_OFFSET;
  const offsetData = alignUp(offsetBlocks + blocks * 4, vbox ? VBOX_ALIGN : SECTOR);
  return {
    text: vbox ? VBOX_TEXT : QEMU_TEXT,
    headerSize: vbox ? HEADER1PLUS_SIZE : HEADER1_SIZE,
    imageType: p.static ? TYPE_FIXED : TYPE_NORMAL,
    flags: 0,
    comment: '',
    offsetBlocks,
    offsetData,
    legacyGeometry: [0, 0, 0],
    sectorSize: SECTOR,
    diskSize: p.size,
    blockSize: DEFAULT_BLOCK_SIZE,
    blockExtra: 0,
    blocks,
    blocksAllocated: p.static ? blocks : 0,
    uuidCreate: newUuid(),
    uuidModify: newUuid(),
    uuidLinkage: NULL_UUID,
    uuidParentModify: NULL_UUID,
    lchsGeometry: vbox ? [0, 0, 0] : undefined,
  };
}

export async function createVdi(filename: string, opts: CreateOptions): Promise<void> {
  if (opts.backingFile !== undefined || opts.options.backing_file !== undefined) {
    throw new ImageError('INVALID_ARGUMENT', 'vdi images cannot be created with a backing file (differencing VDIs name their parent by UUID)', {
      file: filename,
      field: 'backing_file',
    });
  }
  const p = vdiCreateParams(filename, opts.options, opts.size);
  const h = newHeader(p);
  const map = Buffer.alloc(h.offsetData - h.offsetBlocks);
  for (let b = 0; b < h.blocks; b++) map.writeUInt32LE(p.static ? b : BLOCK_FREE, b * 4);
  const dataBytes = h.blocks * h.blockSize;
  const file = await HostFile.open(filename, { create: true });
  try {
    await file.truncate(h.offsetData + (p.static ? dataBytes : 0));
    await file.write(0, serializeHeader(h));
    await file.write(h.offsetBlocks, map);
    if (p.preallocation === 'falloc') await file.allocate(h.offsetData, dataBytes);
    else if (p.preallocation === 'full') await file.writeZeroBytes(h.offsetData, dataBytes);
    await file.flush();
  } finally {
    await file.close();
  }
}
