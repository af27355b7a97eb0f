/**
 * `img measure` for qcow2 targets, with qemu's arithmetic (block/qcow2.c qcow2_measure,
 * qcow2_calc_prealloc_size and qcow2_refcount_metadata_size): the fully-allocated size is
 * header + L2 + L1 + refcount metadata + every data cluster; the required size swaps the
 * data clusters for those the source actually has (all of them with a backing file or
 * preallocation=falloc|full).
 */
import { ImageError } from '../../block/errors';
import { BlockDevice } from '../../block/device';
import { MeasureOptions, MeasureResult } from '../../block/image';
import { HostFile } from '../../io/host-file';
import { alignUp, divCeil } from '../../io/bytes';
import { parseBool, parsePreallocation, parseSize } from '../options';
import { activeBitmapsExtension, BITMAP_TABLE_ENTRY_SIZE, directoryEntrySize, readBitmapDirectory } from './bitmaps';
import * as C from './constants';
import { parseHeader } from './header';

const L1_ENTRY_SIZE = 8;
const REFTABLE_ENTRY_SIZE = 8;
/** Block status is asked for in pieces of this size, so memory stays bounded. */
const STATUS_CHUNK = 1 << 30;
const MIN_EXTL2_CLUSTER_SIZE = 2 ** C.MIN_EXTL2_CLUSTER_BITS;
/** Create options that do not change the measurement but are accepted. */
const NEUTRAL_OPTIONS = ['size', 'backing_fmt', 'lazy_refcounts', 'compression_type', 'data_file', 'data_file_raw', 'nocow'];

export interface Qcow2MeasureResult extends MeasureResult {
  /** Bytes the source's persistent bitmaps would take (present when qemu-img shows it). */
  bitmaps?: number;
}

interface Target {
  clusterSize: number;
  version: 2 | 3;
  refcountOrder: number;
  extendedL2: boolean;
  preallocateData: boolean;
  hasBacking: boolean;
}

function parseTarget(options: Record<string, string>): Target {
  const bad = (message: string, field: string) => new ImageError('INVALID_ARGUMENT', message, { field });
  for (const key of Object.keys(options)) {
    if (key.startsWith('encrypt.') || key === 'encryption') throw new ImageError('UNSUPPORTED', 'encrypted qcow2 images are not supported', { field: key });
    if (!['cluster_size', 'compat', 'refcount_bits', 'preallocation', 'extended_l2', 'backing_file', ...NEUTRAL_OPTIONS].includes(key)) {
      throw bad(`Invalid parameter '${key}'`, key);
    }
  }
  const extendedL2 = options.extended_l2 !== undefined && parseBool(options.extended_l2, 'extended_l2');
  const clusterSize = options.cluster_size !== undefined ? parseSize(options.cluster_size, 'cluster_size') : 2 ** C.DEFAULT_CLUSTER_BITS;
  const bits = Math.log2(clusterSize);
  if (!Number.isInteger(bits) || bits < C.MIN_CLUSTER_BITS || bits > C.MAX_CLUSTER_BITS) {
    throw bad('Cluster size must be a power of two between 512 and 2048k', 'cluster_size');
  }
  if (extendedL2 && clusterSize < MIN_EXTL2_CLUSTER_SIZE) {
    throw bad(`Extended L2 entries are only supported with cluster sizes of at least ${MIN_EXTL2_CLUSTER_SIZE} bytes`, 'extended_l2');
  }
  const compat = options.compat ?? '1.1';
  let version: 2 | 3;
  if (compat === '0.10' || compat === 'v2') version = 2;
  else if (compat === '1.1' || compat === 'v3') version = 3;
  else throw bad(`Invalid compatibility level: '${compat}'`, 'compat');
  const refcountBits = options.refcount_bits !== undefined ? Number(options.refcount_bits) : 16;
  if (!Number.isInteger(refcountBits) || refcountBits <= 0 || refcountBits > 64 || (refcountBits & (refcountBits - 1)) !== 0) {
    throw bad('Refcount width must be a power of two and may not exceed 64 bits', 'refcount_bits');
  }
  if (version === 2 && refcountBits !== 16) {
    throw bad('Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)', 'refcount_bits');
  }
  const prealloc = parsePreallocation(options.preallocation ?? 'off');
  return {
    clusterSize,
    version,
    refcountOrder: Math.log2(refcountBits),
    extendedL2,
    preallocateData: prealloc === 'falloc' || prealloc === 'full',
    hasBacking: options.backing_file !== undefined,
  };
}

/**
 * Refcount blocks and table clusters needed to count `clusters` clusters plus themselves:
 * the fixed point qemu finds by iteration. Returns bytes.
 */
export function refcountMetadataSize(clusters: number, clusterSize: number, refcountOrder: number): number {
  const blocksPerTableCluster = clusterSize / REFTABLE_ENTRY_SIZE;
  const refcountsPerBlock = (clusterSize * 8) / 2 ** refcountOrder;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last: number;
  do {
    last = n;
    blocks = divCeil(clusters + table + blocks, refcountsPerBlock);
    table = divCeil(blocks, blocksPerTableCluster);
    n = clusters + blocks + table;
  } while (n !== last);
  return (blocks + table) * clusterSize;
}

/** Size of a fully allocated image of `virtualSize` bytes (qcow2_calc_prealloc_size). */
export function fullyAllocatedSize(virtualSize: number, t: Pick<Target, 'clusterSize' | 'refcountOrder' | 'extendedL2'>): number {
  const cs = t.clusterSize;
  const l2EntrySize = t.extendedL2 ? 16 : 8;
  const aligned = alignUp(virtualSize, cs);
  let meta = cs; // header
  const l2Entries = alignUp(aligned / cs, cs / l2EntrySize);
  meta += l2Entries * l2EntrySize;
  const l1Entries = alignUp((l2Entries * l2EntrySize) / cs, cs / L1_ENTRY_SIZE);
  meta += l1Entries * L1_ENTRY_SIZE;
  meta += refcountMetadataSize((meta + aligned) / cs, cs, t.refcountOrder);
  return meta + aligned;
}

/** Bytes of whole clusters that hold data in the source (zeroes and unallocated ranges skipped). */
async function dataClusterBytes(source: BlockDevice, clusterSize: number): Promise<number> {
  let clusters = 0;
  let countedUpTo = 0; // clusters below this byte offset are counted already
  for (let pos = 0; pos < source.size; pos += STATUS_CHUNK) {
    for (const e of await source.blockStatus(pos, Math.min(STATUS_CHUNK, source.size - pos))) {
      if (e.kind !== 'data') continue;
      const start = Math.max(alignUp(countedUpTo, clusterSize), e.offset - (e.offset % clusterSize));
      const end = alignUp(e.offset + e.length, clusterSize);
      if (end > start) clusters += (end - start) / clusterSize;
      countedUpTo = Math.max(countedUpTo, end);
    }
  }
  return clusters * clusterSize;
}

/** The source's persistent bitmaps, sized as qemu's qcow2_get_persistent_dirty_bitmap_size does. */
async function bitmapsSize(filename: string, virtualSize: number, clusterSize: number): Promise<number> {
  const file = await HostFile.open(filename, { readOnly: true });
  try {
    const fileSize = await file.size();
    const head = new Uint8Array(Math.min(fileSize, 2 ** C.MAX_CLUSTER_BITS));
    await file.read(0, head);
    const ext = activeBitmapsExtension(parseHeader(head, fileSize, filename));
    if (!ext || ext.nbBitmaps === 0) return 0;
    let total = 0;
    let dir = 0;
    for (const bm of await readBitmapDirectory(file, ext, fileSize)) {
      const bytes = divCeil(divCeil(virtualSize, 2 ** bm.granularityBits), 8);
      const clusters = divCeil(bytes, clusterSize);
      total += clusters * clusterSize + alignUp(clusters * BITMAP_TABLE_ENTRY_SIZE, clusterSize);
      dir += directoryEntrySize(bm.name);
    }
    return total + alignUp(dir, clusterSize);
  } finally {
    await file.close();
  }
}

export async function measureQcow2(opts: MeasureOptions): Promise<Qcow2MeasureResult> {
  const t = parseTarget(opts.options);
  const l2EntrySize = t.extendedL2 ? 16 : 8;
  let virtualSize = alignUp(opts.size, t.clusterSize);
  const l2Tables = divCeil(virtualSize / t.clusterSize, t.clusterSize / l2EntrySize);
  // qemu checks the size option only; a source's size is taken as it is.
  if (!opts.source && l2Tables * L1_ENTRY_SIZE > C.MAX_L1_BYTES) {
    throw new ImageError('INVALID_ARGUMENT', 'The image size is too large (try using a larger cluster size)', { field: 'size' });
  }
  let required = 0;
  const source = opts.source;
  if (source) {
    virtualSize = alignUp(source.size, t.clusterSize);
    // With a backing file nothing is known to be shared: assume every cluster is written.
    required = t.hasBacking ? virtualSize : await dataClusterBytes(source, t.clusterSize);
  }
  if (t.preallocateData) required = virtualSize;
  const fullyAllocated = fullyAllocatedSize(virtualSize, t);
  const result: Qcow2MeasureResult = { required: fullyAllocated - virtualSize + required, fullyAllocated };
  const src = source as (BlockDevice & { format?: string; filename?: string }) | undefined;
  if (t.version >= 3 && src?.format === 'qcow2' && src.filename) {
    result.bitmaps = await bitmapsSize(src.filename, source!.size, t.clusterSize);
  }
  return result;
}
