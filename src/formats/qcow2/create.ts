/**
 * Creating a qcow2 image: the options of `qemu-img create -f qcow2`, validated as qemu
 * does, and a fresh file laid out as header, refcount table, refcount blocks, L1 table.
 * Preallocation then goes through the engine.
 */
import { ImageError } from '../../block/errors';
import { CreateOptions, CreateOptionSpec } from '../../block/image';
import { alignUp, divCeil, setBe64 } from '../../io/bytes';
import { HostFile } from '../../io/host-file';
import { resolveBackingName } from '../backing-name';
import { parseBool, parsePreallocation, parseSize, Preallocation } from '../options';
import * as C from './constants';
import { geometry, l1EntriesFor, Qcow2Header, serializeHeader } from './header';
import { Qcow2Image } from './image';
import { SECTOR } from './l2';
import { setRefcountEntry } from './refcount';
import { preallocate } from './write';

export const QCOW2_CREATE_OPTIONS: CreateOptionSpec[] = [
  { name: 'backing_file', type: 'string', help: 'File name of a base image' },
  { name: 'backing_fmt', type: 'string', help: 'Image format of the base image' },
  { name: 'cluster_size', type: 'size', help: 'qcow2 cluster size', default: '65536' },
  { name: 'compat', type: 'string', help: 'Compatibility level (v2 [0.10] or v3 [1.1])', default: '1.1' },
  { name: 'compression_type', type: 'string', help: 'Compression method used for image cluster compression', default: 'zlib' },
  { name: 'data_file', type: 'string', help: 'File name of an external data file' },
  { name: 'data_file_raw', type: 'bool', help: 'The external data file must stay valid as a raw image', default: 'off' },
  { name: 'extended_l2', type: 'bool', help: 'Extended L2 tables', default: 'off' },
  { name: 'lazy_refcounts', type: 'bool', help: 'Postpone refcount updates', default: 'off' },
  { name: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, metadata, falloc, full)', default: 'off' },
  { name: 'refcount_bits', type: 'number', help: 'Width of a reference count entry in bits', default: '16' },
  { name: 'size', type: 'size', help: 'Virtual disk size' },
];

/** Host hints qemu accepts that mean nothing here. */
const IGNORED_OPTIONS = ['extent_size_hint', 'nocow'];

export interface Qcow2CreateParams {
  size: number;
  version: 2 | 3;
  clusterBits: number;
  refcountOrder: number;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  compressionType: number;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  dataFileRaw: boolean;
  preallocation: Preallocation;
}

function invalid(file: string, msg: string, field: string, value: unknown): ImageError {
  return new ImageError('INVALID_ARGUMENT', msg, { file, field, value });
}

/** Reads and cross-checks the -o options as qemu's qcow2_co_create_opts does. */
export function qcow2CreateParams(file: string, opts: CreateOptions): Qcow2CreateParams {
  const o = opts.options;
  for (const k of Object.keys(o)) {
    if (k.startsWith('encrypt')) throw new ImageError('UNSUPPORTED', 'encrypted qcow2 images are not supported', { file, field: k });
    if (!QCOW2_CREATE_OPTIONS.some((s) => s.name === k) && !IGNORED_OPTIONS.includes(k)) {
      throw invalid(file, `qcow2 does not support option '${k}'`, k, o[k]);
    }
  }
  const compat = o.compat ?? '1.1';
  const version = compat === '0.10' || compat === 'v2' ? 2 : compat === '1.1' || compat === 'v3' ? 3 : 0;
  if (version === 0) throw invalid(file, `invalid compat level '${compat}' (expected 0.10 or 1.1)`, 'compat', compat);
  const clusterSize = o.cluster_size !== undefined ? parseSize(o.cluster_size, 'cluster_size') : 2 ** C.DEFAULT_CLUSTER_BITS;
  const clusterBits = Math.log2(clusterSize);
  if (!Number.isInteger(clusterBits) || clusterBits < C.MIN_CLUSTER_BITS || clusterBits > C.MAX_CLUSTER_BITS) {
    throw invalid(file, `cluster size ${clusterSize} must be a power of two between 512 and 2M`, 'cluster_size', clusterSize);
  }
  const refcountBits = o.refcount_bits !== undefined ? Number(o.refcount_bits) : 16;
  const refcountOrder = Math.log2(refcountBits);
  if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > C.MAX_REFCOUNT_ORDER) {
    throw invalid(file, `refcount_bits ${o.refcount_bits} must be a power of two up to 64`, 'refcount_bits', o.refcount_bits);
  }
  const ctype = o.compression_type ?? 'zlib';
  if (ctype !== 'zlib' && ctype !== 'zstd') throw invalid(file, `unknown compression_type '${ctype}' (expected zlib or zstd)`, 'compression_type', ctype);
  const p: Qcow2CreateParams = {
    // qemu rounds the virtual size up to whole 512-byte sectors.
    size: alignUp(o.size !== undefined ? parseSize(o.size) : opts.size, SECTOR),
    version,
    clusterBits,
    refcountOrder,
    lazyRefcounts: o.lazy_refcounts !== undefined && parseBool(o.lazy_refcounts, 'lazy_refcounts'),
    extendedL2: o.extended_l2 !== undefined && parseBool(o.extended_l2, 'extended_l2'),
    compressionType: ctype === 'zstd' ? C.COMPRESSION_ZSTD : C.COMPRESSION_DEFLATE,
    backingFile: o.backing_file ?? opts.backingFile,
    backingFormat: o.backing_fmt ?? opts.backingFormat,
    dataFile: o.data_file,
    dataFileRaw: o.data_file_raw !== undefined && parseBool(o.data_file_raw, 'data_file_raw'),
    preallocation: parsePreallocation(o.preallocation ?? 'off'),
  };
  if (version === 2) {
    const v3only: [boolean, string][] = [
      [p.lazyRefcounts, 'lazy_refcounts'],
      [refcountBits !== 16, 'refcount_bits other than 16'],
      [ctype !== 'zlib', 'compression_type zstd'],
      [p.extendedL2, 'extended_l2'],
      [p.dataFile !== undefined, 'data_file'],
    ];
    for (const [on, what] of v3only) if (on) throw invalid(file, `${what} needs compat=1.1`, 'compat', compat);
  }
  if (p.extendedL2 && clusterBits < C.MIN_EXTL2_CLUSTER_BITS) throw invalid(file, 'extended_l2 needs a cluster size of at least 16k', 'cluster_size', clusterSize);
  if (p.dataFileRaw && p.dataFile === undefined) throw invalid(file, 'data_file_raw needs data_file', 'data_file_raw', o.data_file_raw);
  if (p.backingFile !== undefined && p.preallocation !== 'off' && !p.extendedL2) {
    throw invalid(file, 'a backing file and preallocation can only be used together with extended_l2=on', 'preallocation', p.preallocation);
  }
  if (p.backingFile !== undefined && p.dataFileRaw) throw invalid(file, 'a backing file cannot be used with data_file_raw=on', 'backing_file', p.backingFile);
  if (p.backingFormat !== undefined && p.backingFile === undefined) throw invalid(file, 'backing_fmt needs backing_file', 'backing_fmt', p.backingFormat);
  if (!Number.isSafeInteger(p.size) || p.size < 0) throw invalid(file, `invalid size ${p.size}`, 'size', p.size);
  return p;
}

export async function createQcow2(filename: string, opts: CreateOptions): Promise<void> {
  const p = qcow2CreateParams(filename, opts);
  const h: Qcow2Header = {
    version: p.version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits: p.clusterBits,
    size: p.size,
    cryptMethod: 0,
    l1Size: 0,
    l1TableOffset: 0,
    refcountTableOffset: 0,
    refcountTableClusters: 0,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatibleFeatures:
      (p.extendedL2 ? C.INCOMPAT_EXTL2 : 0n) |
      (p.compressionType !== C.COMPRESSION_DEFLATE ? C.INCOMPAT_COMPRESSION : 0n) |
      (p.dataFile !== undefined ? C.INCOMPAT_DATA_FILE : 0n),
    compatibleFeatures: p.lazyRefcounts ? C.COMPAT_LAZY_REFCOUNTS : 0n,
    autoclearFeatures: p.dataFileRaw ? C.AUTOCLEAR_DATA_FILE_RAW : 0n,
    refcountOrder: p.refcountOrder,
    headerLength: p.version === 3 ? C.V3_HEADER_LENGTH : C.V2_HEADER_LENGTH,
    compressionType: p.compressionType,
    backingFile: p.backingFile,
    backingFormat: p.backingFormat,
    dataFile: p.dataFile,
    featureNames: [],
    unknownExtensions: [],
  };
  const g = geometry(h);
  const cs = g.clusterSize;
  h.l1Size = l1EntriesFor(p.size, g);
  if (h.l1Size * 8 > C.MAX_L1_BYTES) throw invalid(filename, `virtual size ${p.size} needs an L1 table larger than ${C.MAX_L1_BYTES} bytes`, 'size', p.size);
  const l1Clusters = divCeil(h.l1Size * 8, cs);

  // Refcount table and blocks must cover themselves too: grow both until they do.
  let rt = 1;
  let rb = 1;
  for (;;) {
    const total = 1 + rt + rb + l1Clusters;
    const nrb = divCeil(total, g.refcountBlockEntries);
    const nrt = divCeil(nrb * 8, cs);
    if (nrb <= rb && nrt <= rt) break;
    rb = Math.max(rb, nrb);
    rt = Math.max(rt, nrt);
  }
  const total = 1 + rt + rb + l1Clusters;
  h.refcountTableOffset = cs;
  h.refcountTableClusters = rt;
  h.l1TableOffset = h.l1Size > 0 ? (1 + rt + rb) * cs : 0;
  const headerCluster = serializeHeader(h, filename);
  const table = new Uint8Array(rt * cs);
  const blocks = new Uint8Array(rb * cs);
  for (let b = 0; b < rb; b++) setBe64(table, b * 8, (1 + rt + b) * cs);
  for (let c = 0; c < total; c++) {
    const b = Math.floor(c / g.refcountBlockEntries);
    setRefcountEntry(p.refcountOrder, blocks.subarray(b * cs, (b + 1) * cs), c % g.refcountBlockEntries, 1);
  }

  if (p.dataFile !== undefined) {
    const data = await HostFile.open(resolveBackingName(filename, p.dataFile), { create: true });
    try {
      await data.truncate(p.size);
    } finally {
      await data.close();
    }
  }
  const file = await HostFile.open(filename, { create: true });
  try {
    await file.truncate(total * cs);
    await file.write(0, headerCluster);
    await file.write(cs, table);
    await file.write((1 + rt) * cs, blocks);
    await file.flush();
  } finally {
    await file.close();
  }

  // data_file_raw needs every cluster mapped to its own offset in the data file.
  const mode = p.preallocation === 'off' && p.dataFileRaw ? 'metadata' : p.preallocation;
  if (mode !== 'off' && p.size > 0) {
    const image = await Qcow2Image.open(filename, {});
    try {
      await preallocate(image.core, 0, p.size, mode);
    } finally {
      await image.close();
    }
  }
}
