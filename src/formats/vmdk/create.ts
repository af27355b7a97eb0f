/**
 * Creating vmdk images with qemu-img's options and layouts (block/vmdk.c): monolithicSparse
 * and twoGbMaxExtentSparse extents with a redundant grain directory and preallocated grain
 * tables, flat extents as plain files, and streamOptimized as VMware writes it (directory and
 * footer at the end, see stream.ts), so that it can also be written to a pipe.
 */
import { createHash, randomInt } from 'node:crypto';
import * as path from 'node:path';
import { ImageError } from '../../block/errors';
import { CreateOptions, CreateOptionSpec } from '../../block/image';
import { alignUp, setLe32 } from '../../io/bytes';
import { HostFile } from '../../io/host-file';
import { ByteSink, FileSink } from '../../io/sink';
import { resolveBackingName } from '../backing-name';
import { parseBool, parseSize } from '../options';
import * as C from './constants';
import { buildDescriptor, ExtentLine, NO_PARENT } from './descriptor';
import { VmdkImage } from './image';
import { gdEntries, gtSectors, serializeSparseHeader, SparseHeader } from './sparse-header';
import { StreamWriter, streamHeader, streamPreamble } from './stream';

export const SUBFORMATS = ['monolithicSparse', 'monolithicFlat', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat', 'streamOptimized'] as const;
export type Subformat = (typeof SUBFORMATS)[number];
export const ADAPTER_TYPES = ['ide', 'lsilogic', 'buslogic', 'legacyESX'] as const;

const DEFAULT_HW_VERSION = '4';
const COMPAT6_HW_VERSION = '6';
const DEFAULT_TOOLS_VERSION = '2147483647';

export const VMDK_CREATE_OPTIONS: CreateOptionSpec[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size' },
  { name: 'adapter_type', type: 'string', help: 'Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX' },
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: "Must be 'vmdk' if present" },
  { name: 'compat6', type: 'bool', help: 'VMDK version 6 image', default: 'off' },
  { name: 'hwversion', type: 'string', help: 'VMDK hardware version', default: 'undefined' },
  { name: 'subformat', type: 'string', help: `VMDK flat extent format, can be one of {${SUBFORMATS.map((s, i) => (i === 0 ? `${s} (default)` : s)).join(' | ')}} ` },
  { name: 'toolsversion', type: 'string', help: 'VMware guest tools version' },
  { name: 'zeroed_grain', type: 'bool', help: 'Enable efficient zero writes using the zeroed-grain GTE feature' },
];

export interface VmdkSpec {
  size: number;
  subformat: Subformat;
  adapterType: string;
  hwVersion: string;
  toolsVersion: string;
  zeroedGrain: boolean;
}

/** Validates -o options as qemu-img does (same refusals, same defaults). */
export function parseVmdkOptions(opts: CreateOptions, file: string): VmdkSpec {
  const o = opts.options;
  for (const k of Object.keys(o)) {
    if (!VMDK_CREATE_OPTIONS.some((s) => s.name === k)) throw new ImageError('INVALID_ARGUMENT', `vmdk does not support option '${k}'`, { file });
  }
  const subformat = (o.subformat ?? 'monolithicSparse') as Subformat;
  if (!SUBFORMATS.includes(subformat)) throw new ImageError('INVALID_ARGUMENT', `invalid subformat '${o.subformat}': expected one of ${SUBFORMATS.join(', ')}`, { file, field: 'subformat' });
  const adapterType = o.adapter_type ?? 'ide';
  if (!(ADAPTER_TYPES as readonly string[]).includes(adapterType)) {
    throw new ImageError('INVALID_ARGUMENT', `invalid adapter_type '${adapterType}': expected one of ${ADAPTER_TYPES.join(', ')}`, { file, field: 'adapter_type' });
  }
  const compat6 = o.compat6 !== undefined && parseBool(o.compat6, 'compat6');
  let hwVersion = o.hwversion === 'undefined' ? undefined : o.hwversion;
  if (compat6 && hwVersion !== undefined) throw new ImageError('INVALID_ARGUMENT', 'compat6 cannot be enabled with hwversion set', { file, field: 'compat6' });
  if (compat6) hwVersion = COMPAT6_HW_VERSION;
  for (const [k, v] of [['hwversion', hwVersion], ['toolsversion', o.toolsversion]]) {
    if (v !== undefined && /["\r\n]/.test(v)) throw new ImageError('INVALID_ARGUMENT', `invalid ${k} '${v}': quotes and line breaks are not allowed`, { file, field: k });
  }
  const zeroedGrain = o.zeroed_grain !== undefined && parseBool(o.zeroed_grain, 'zeroed_grain');
  const flat = subformat === 'monolithicFlat' || subformat === 'twoGbMaxExtentFlat';
  if (flat && opts.backingFile) throw new ImageError('UNSUPPORTED', "Flat image can't have backing file", { file, field: 'backing_file' });
  if (flat && zeroedGrain) throw new ImageError('UNSUPPORTED', "Flat image can't enable zeroed grain", { file, field: 'zeroed_grain' });
  if (opts.backingFormat && opts.backingFormat !== 'vmdk') throw new ImageError('INVALID_ARGUMENT', 'backing_file must be a vmdk image', { file, field: 'backing_fmt' });
  const size = alignUp(o.size !== undefined ? parseSize(o.size) : opts.size, C.SECTOR);
  if (size / C.SECTOR > C.MAX_EXTENT_SECTORS && !subformat.startsWith('twoGb')) {
    throw new ImageError('INVALID_ARGUMENT', `size ${size} is too large for a ${subformat} extent (at most 2 TiB)`, { file, field: 'size' });
  }
  return { size, subformat, adapterType, hwVersion: hwVersion ?? DEFAULT_HW_VERSION, toolsVersion: o.toolsversion ?? DEFAULT_TOOLS_VERSION, zeroedGrain };
}

/** A sparse extent header laid out as qemu-img does: rgd, grain tables, gd, grain tables, then grains. */
export function sparseLayout(capacity: number, zeroedGrain: boolean): { header: SparseHeader; gtCount: number } {
  const header: SparseHeader = {
    version: zeroedGrain ? 2 : 1,
    flags: C.FLAG_REDUNDANT_GT | C.FLAG_VALID_NEWLINE_TEST | (zeroedGrain ? C.FLAG_ZERO_GRAIN : 0),
    capacity,
    grainSize: C.DEFAULT_GRAIN_SECTORS,
    descriptorOffset: C.EMBEDDED_DESC_OFFSET,
    descriptorSize: C.EMBEDDED_DESC_SECTORS,
    numGTEsPerGT: C.DEFAULT_GTES_PER_GT,
    rgdOffset: 0,
    gdOffset: 0,
    overHead: 0,
    uncleanShutdown: false,
    compressAlgorithm: C.COMPRESSION_NONE,
  };
  const gtCount = gdEntries(header);
  const gdSectors = Math.ceil((gtCount * 4) / C.SECTOR);
  const tables = gtSectors(header) * gtCount;
  header.rgdOffset = C.EMBEDDED_DESC_OFFSET + C.EMBEDDED_DESC_SECTORS;
  header.gdOffset = header.rgdOffset + gdSectors + tables;
  header.overHead = alignUp(header.gdOffset + gdSectors + tables, header.grainSize);
  return { header, gtCount };
}

async function writeSparseFile(file: HostFile, capacity: number, zeroedGrain: boolean, descriptor?: string): Promise<void> {
  const { header, gtCount } = sparseLayout(capacity, zeroedGrain);
  const gdSectors = Math.ceil((gtCount * 4) / C.SECTOR);
  const gtSize = gtSectors(header);
  await file.write(0, serializeSparseHeader(header));
  if (descriptor !== undefined) await file.write(header.descriptorOffset * C.SECTOR, Buffer.from(descriptor, 'utf8'));
  await file.truncate(header.overHead * C.SECTOR);
  // Both directories point at their own run of (zero, preallocated) grain tables just after them.
  for (const dirSector of [header.rgdOffset, header.gdOffset!]) {
    const dir = new Uint8Array(gdSectors * C.SECTOR);
    for (let i = 0; i < gtCount; i++) setLe32(dir, i * 4, dirSector + gdSectors + i * gtSize);
    await file.write(dirSector * C.SECTOR, dir);
  }
}

/** qemu's extent file names: "<prefix>-flat<postfix>", "<prefix>-s001<postfix>", "<prefix>-f001<postfix>". */
function extentName(finalName: string, subformat: Subformat, index: number): string {
  const base = path.basename(finalName);
  const dot = base.lastIndexOf('.');
  const [prefix, postfix] = dot < 0 ? [base, ''] : [base.slice(0, dot), base.slice(dot)];
  if (subformat === 'monolithicFlat') return `${prefix}-flat${postfix}`;
  return `${prefix}-${subformat === 'twoGbMaxExtentFlat' ? 'f' : 's'}${String(index).padStart(3, '0')}${postfix}`;
}

async function parentCid(filename: string, opts: CreateOptions): Promise<number> {
  if (!opts.backingFile) return NO_PARENT;
  const parent = await VmdkImage.open(resolveBackingName(opts.finalName ?? filename, opts.backingFile), { readOnly: true });
  try {
    return parent.cid;
  } finally {
    await parent.close();
  }
}

async function withFile(name: string, fn: (f: HostFile) => Promise<void>): Promise<void> {
  const f = await HostFile.open(name, { create: true });
  try {
    await fn(f);
    await f.flush();
  } finally {
    await f.close();
  }
}

/**
 * The descriptor of a stream: its CID is a hash of its own text, so the same source written
 * twice (to a file, or to a pipe) gives the same bytes.
 */
function streamDescriptor(spec: VmdkSpec, name: string, parent: number, hint: string | undefined): string {
  const extents: ExtentLine[] = [{ access: 'RW', sectors: spec.size / C.SECTOR, type: 'SPARSE', filename: name, offset: 0 }];
  const base = { parentCid: parent, createType: 'streamOptimized', parentFileNameHint: hint, extents, hwVersion: spec.hwVersion, adapterType: spec.adapterType, toolsVersion: spec.toolsVersion, size: spec.size };
  const cid = createHash('sha256').update(buildDescriptor({ ...base, cid: 0 })).digest().readUInt32LE(0);
  return buildDescriptor({ ...base, cid });
}

/** The extent name a stream records: the source's name when converting, so pipe and file agree. */
function streamExtentName(filename: string, opts: CreateOptions): string {
  if (opts.sourceName === undefined) return path.basename(opts.finalName ?? filename);
  const base = path.basename(opts.sourceName);
  const dot = base.lastIndexOf('.');
  return `${dot > 0 ? base.slice(0, dot) : base}.vmdk`;
}

/** Starts a stream-optimized image on `sink`: preamble now, grains as they come, tail on finish(). */
export async function startStream(sink: ByteSink, filename: string, opts: CreateOptions): Promise<StreamWriter> {
  const spec = parseVmdkOptions({ ...opts, options: { ...opts.options, subformat: 'streamOptimized' } }, filename);
  const header = streamHeader(spec.size / C.SECTOR);
  const descriptor = streamDescriptor(spec, streamExtentName(filename, opts), await parentCid(filename, opts), opts.backingFile);
  await sink.append(streamPreamble(header, descriptor));
  return new StreamWriter(sink, header, filename);
}

export async function createVmdk(filename: string, opts: CreateOptions): Promise<void> {
  const spec = parseVmdkOptions(opts, filename);
  const finalName = opts.finalName ?? filename;
  if (spec.subformat === 'streamOptimized') {
    await withFile(filename, async (f) => {
      const stream = await startStream(new FileSink(f, 0), filename, opts);
      await stream.finish();
      await f.truncate(stream.end);
    });
    return;
  }
  const parent = await parentCid(filename, opts);
  const sectors = spec.size / C.SECTOR;
  const descriptor = (extents: ExtentLine[]) =>
    buildDescriptor({
      cid: randomInt(0, NO_PARENT),
      parentCid: parent,
      createType: spec.subformat,
      parentFileNameHint: opts.backingFile,
      extents,
      hwVersion: spec.hwVersion,
      adapterType: spec.adapterType,
      toolsVersion: spec.toolsVersion,
      size: spec.size,
    });
  if (spec.subformat === 'monolithicSparse') {
    const extents: ExtentLine[] = [{ access: 'RW', sectors, type: 'SPARSE', filename: path.basename(finalName), offset: 0 }];
    await withFile(filename, (f) => writeSparseFile(f, sectors, spec.zeroedGrain, descriptor(extents)));
    return;
  }
  const flat = spec.subformat.endsWith('Flat');
  const split = spec.subformat.startsWith('twoGb') ? C.SPLIT_EXTENT_BYTES : Math.max(spec.size, 1);
  const extents: ExtentLine[] = [];
  for (let done = 0, i = 1; done < spec.size; done += split, i++) {
    const bytes = Math.min(split, spec.size - done);
    const name = extentName(finalName, spec.subformat, i);
    await withFile(path.join(path.dirname(filename), name), (f) => (flat ? f.truncate(bytes) : writeSparseFile(f, bytes / C.SECTOR, spec.zeroedGrain)));
    extents.push({ access: 'RW', sectors: bytes / C.SECTOR, type: flat ? 'FLAT' : 'SPARSE', filename: name, offset: 0 });
  }
  await withFile(filename, (f) => f.write(0, Buffer.from(descriptor(extents), 'utf8')));
}
