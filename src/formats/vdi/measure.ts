/**
 * `img measure` for VDI targets (qemu-img has none for vdi): the header, block map and data
 * area of the chosen layout; the data area holds every block of a static image, and of a
 * dynamic one the 1 MiB blocks where the source has data.
 */
import { BlockDevice } from '../../block/device';
import { MeasureOptions, MeasureResult } from '../../block/image';
import { newHeader, vdiCreateParams } from './create';

/** Block status is asked for in pieces of this size, so memory stays bounded. */
const STATUS_CHUNK = 1 << 30;

/** Blocks of `blockSize` holding any data in the source (zeroes and unallocated ranges skipped). */
async function dataBlocks(source: BlockDevice, blockSize: number): Promise<number> {
  let blocks = 0;
  let next = 0; // first block not yet counted
  for (let pos = 0; pos < source.size; pos += STATUS_CHUNK) {
    for (const e of await source.blockStatus(pos, Math.min(STATUS_CHUNK, source.size - pos))) {
      if (e.kind !== 'data') continue;
      const first = Math.max(next, Math.floor(e.offset / blockSize));
      const end = Math.ceil((e.offset + e.length) / blockSize);
      if (end > first) blocks += end - first;
      next = Math.max(next, end);
    }
  }
  return blocks;
}

export async function measureVdi(opts: MeasureOptions): Promise<MeasureResult> {
  const p = vdiCreateParams(undefined, opts.options, opts.source ? opts.source.size : opts.size);
  if (opts.source) p.size = opts.source.size;
  const h = newHeader(p);
  const fullyAllocated = h.offsetData + h.blocks * h.blockSize;
  if (p.static) return { required: fullyAllocated, fullyAllocated };
  const used = opts.source ? await dataBlocks(opts.source, h.blockSize) : 0;
  return { required: h.offsetData + used * h.blockSize, fullyAllocated };
}
