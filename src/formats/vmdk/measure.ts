/**
 * `img measure -O vmdk` (qemu-img has no vmdk measure): sparse extents need their metadata
 * (header, descriptor, both grain directories and preallocated tables, as create.ts lays them
 * out) plus one grain per grain the source holds data in; flat extents their whole size; a
 * stream at most a marker and a compression bound per grain (its real size depends on the data).
 */
import { BlockDevice } from '../../block/device';
import { MeasureOptions, MeasureResult } from '../../block/image';
import { alignUp } from '../../io/bytes';
import * as C from './constants';
import { parseVmdkOptions, sparseLayout } from './create';
import { gdEntries, gtSectors } from './sparse-header';
import { streamHeader } from './stream';

/** Block status is asked for in pieces of this size, so memory stays bounded. */
const STATUS_CHUNK = 1 << 30;
/** A descriptor file (flat and split subformats) stays under this size. */
const DESCRIPTOR_FILE_BYTES = 4096;
const GRAIN_BYTES = C.DEFAULT_GRAIN_SECTORS * C.SECTOR;
/** zlib's compressBound for a grain: what one compressed grain can take at worst. */
const COMPRESS_BOUND = GRAIN_BYTES + (GRAIN_BYTES >> 12) + (GRAIN_BYTES >> 14) + (GRAIN_BYTES >> 25) + 13;

/** Grains of `source` holding data, per extent of `extentBytes`. */
async function dataGrains(source: BlockDevice, extentBytes: number): Promise<number[]> {
  const counts = new Array<number>(Math.max(1, Math.ceil(source.size / extentBytes))).fill(0);
  let lastGrain = -1;
  for (let w = 0; w < source.size; w += STATUS_CHUNK) {
    for (const e of await source.blockStatus(w, Math.min(STATUS_CHUNK, source.size - w))) {
      if (e.kind !== 'data') continue;
      const first = Math.max(Math.floor(e.offset / GRAIN_BYTES), lastGrain + 1);
      const last = Math.floor((e.offset + e.length - 1) / GRAIN_BYTES);
      for (let g = first; g <= last; g++) counts[Math.floor((g * GRAIN_BYTES) / extentBytes)]++;
      lastGrain = Math.max(lastGrain, last);
    }
  }
  return counts;
}

export async function measureVmdk(opts: MeasureOptions): Promise<MeasureResult> {
  const spec = parseVmdkOptions({ size: opts.size, options: opts.options }, 'measure');
  const size = spec.size;
  const split = spec.subformat.startsWith('twoGb') ? C.SPLIT_EXTENT_BYTES : Math.max(size, 1);
  const extents: number[] = [];
  for (let done = 0; done < size; done += split) extents.push(Math.min(split, size - done));
  const all = extents.map((b) => Math.ceil(b / GRAIN_BYTES));
  const used = opts.source ? await dataGrains(opts.source, split) : all.map(() => 0);
  if (spec.subformat.endsWith('Flat')) return { required: size + DESCRIPTOR_FILE_BYTES, fullyAllocated: size + DESCRIPTOR_FILE_BYTES };
  if (spec.subformat === 'streamOptimized') {
    const h = streamHeader(size / C.SECTOR);
    const tables = gdEntries(h);
    const fixed = h.overHead * C.SECTOR + tables * (C.SECTOR + gtSectors(h) * C.SECTOR) + C.SECTOR + alignUp(tables * 4, C.SECTOR) + 3 * C.SECTOR;
    const perGrain = alignUp(C.GRAIN_MARKER_SIZE + COMPRESS_BOUND, C.SECTOR);
    return { required: fixed + used[0] * perGrain, fullyAllocated: fixed + all[0] * perGrain };
  }
  const descriptor = extents.length > 1 || spec.subformat !== 'monolithicSparse' ? DESCRIPTOR_FILE_BYTES : 0;
  const meta = extents.reduce((n, b) => n + sparseLayout(b / C.SECTOR, spec.zeroedGrain).header.overHead * C.SECTOR, descriptor);
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
  return { required: meta + sum(used) * GRAIN_BYTES, fullyAllocated: meta + sum(all) * GRAIN_BYTES };
}
