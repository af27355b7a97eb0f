/**
 * The copy pipeline: source block status → runs on the target's grid → reads of the data
 * runs in large chunks → zero detection → writes (plain or compressed), with many chunks in
 * flight and writes started in guest order. Holes and zero runs cost no I/O: on a target that
 * already reads as zeroes they are skipped, otherwise they become writeZeroes requests.
 * Memory is bounded by `inFlight` × `chunkSize`.
 */
import { BlockDevice } from '../block/device';
import { ImageError } from '../block/errors';
import { isZero } from '../block/extents';
import { Image } from '../block/image';
import { gridRuns, Run } from './extent-grid';
import { OrderedPool } from './ordered-pool';

/** What the pipeline writes to: any image; compression needs `writeCompressed`. */
export type CopyTarget = Pick<Image, 'size' | 'clusterSize' | 'write' | 'writeZeroes' | 'writeCompressed' | 'filename' | 'needsCompressedWrites'>;

export interface CopyOptions {
  /** Store data clusters compressed (convert -c). */
  compress?: boolean;
  /**
   * Shortest run of zero bytes that is not written as data (convert -S); rounded down to a
   * power of two and up to the target's cluster size. 0 writes every byte. Default 4 KiB.
   */
  sparseSize?: number;
  /** The target reads as zeroes everywhere (freshly created): zero runs are skipped, not written. */
  targetIsZero: boolean;
  /**
   * The target has a backing file (convert -B; commit, whose target is a layer of the source's
   * own chain): ranges unallocated in the source stay unallocated in it, and zeroes are
   * written as zeroes (the target does not read as zeroes where it has nothing). What the
   * backing file stands for is told by `backingDepth` or `backing`.
   */
  targetHasBacking?: boolean;
  /**
   * The target's backing file is the source's layer at this depth (1: the source's own
   * backing file), or a copy of it: whatever that layer or those below it answer is left
   * unallocated, without reading it (qemu-img convert -B, whose backing must match the source's).
   */
  backingDepth?: number;
  /**
   * The target's backing file, as the target will read through it, when it is no layer of the
   * source's chain: every range is compared with it and only what differs is written.
   */
  backing?: BlockDevice;
  /** Bytes per read (default 2 MiB). */
  chunkSize?: number;
  /** Chunks in flight (default 8, like qemu-img's coroutines; 2 when compressing). */
  inFlight?: number;
  /** Called as bytes of the source are done (copied or skipped). */
  onProgress?: (done: number, total: number) => void;
}

export const DEFAULT_SPARSE_SIZE = 4096;
const DEFAULT_CHUNK = 2 << 20;
const DEFAULT_IN_FLIGHT = 8;
/**
 * With compression, chunks in flight by default: two chunks already give the compression
 * threads dozens of clusters at a time, and more only adds memory (and, measured, time).
 */
const DEFAULT_COMPRESSED_IN_FLIGHT = 2;
/** Block status is asked for this much of the source at a time, so the extent list stays small. */
const STATUS_WINDOW = 1 << 30;
/** writeZeroes requests are cut to this size so progress moves and no request is huge. */
const ZERO_REQUEST = 1 << 30;

const pow2floor = (n: number): number => 2 ** Math.floor(Math.log2(n));

/** Copies every byte of `src` into `dst` (which must be at least as large). */
export async function copyDevice(src: BlockDevice, dst: CopyTarget, opts: CopyOptions): Promise<void> {
  if (dst.size < src.size) {
    throw new ImageError('INVALID_ARGUMENT', `target is smaller (${dst.size} bytes) than the source (${src.size} bytes)`, { file: dst.filename });
  }
  // A target that only takes compressed data (vmdk streamOptimized) is compressed, as qemu-img does.
  if (dst.needsCompressedWrites) opts = { ...opts, compress: true };
  if (opts.compress && !dst.writeCompressed) {
    throw new ImageError('UNSUPPORTED', 'the target format does not support compression', { file: dst.filename });
  }
  const sparse = opts.sparseSize ?? DEFAULT_SPARSE_SIZE;
  const cluster = dst.clusterSize;
  // Zero detection granularity: never finer than what the target can leave unallocated.
  const zeroGrain = sparse > 0 ? Math.max(pow2floor(sparse), cluster) : 0;
  const grid = Math.max(cluster, zeroGrain);
  const chunk = Math.max(opts.chunkSize ?? DEFAULT_CHUNK, grid);
  const inFlight = opts.inFlight ?? (opts.compress ? DEFAULT_COMPRESSED_IN_FLIGHT : DEFAULT_IN_FLIGHT);
  const total = src.size;
  let done = 0;
  const progress = (n: number) => {
    done += n;
    opts.onProgress?.(done, total);
  };
  const buffers = new BufferPool(chunk);
  const pool = new OrderedPool(inFlight, !opts.compress);
  // A target with a backing file reads the backing file where it has nothing, not zeroes.
  const targetIsZero = opts.targetIsZero && !opts.targetHasBacking;
  const backing = opts.targetHasBacking && opts.backingDepth === undefined ? opts.backing : undefined;
  const backingBuffers = backing ? new BufferPool(chunk) : undefined;

  const writeZeroes = (offset: number, length: number): Promise<unknown> =>
    dst.writeZeroes(offset, length, { mayUnmap: !opts.targetHasBacking });

  /**
   * Writes a chunk's non-zero runs; zero runs are skipped or zeroed; with `base` (what the
   * target's backing file holds there), runs equal to it are left alone. Starts every request synchronously.
   */
  const issueChunk = (offset: number, data: Uint8Array, base?: Uint8Array): Promise<unknown> => {
    const writes: Promise<unknown>[] = [];
    for (const piece of splitChunk(offset, data, zeroGrain, base, grid)) {
      const bytes = data.subarray(piece.offset - offset, piece.offset - offset + piece.length);
      if (piece.kind === 'same') continue;
      if (piece.kind === 'zero') {
        if (!targetIsZero) writes.push(writeZeroes(piece.offset, piece.length));
      } else if (opts.compress) {
        // One call per cluster, each in a buffer of its own: compression runs on worker
        // threads, and posting a view there copies its whole underlying buffer.
        for (let o = 0; o < piece.length; o += cluster) writes.push(dst.writeCompressed!(piece.offset + o, new Uint8Array(bytes.subarray(o, o + cluster))));
      } else writes.push(dst.write(piece.offset, bytes));
    }
    return Promise.all(writes);
  };

  /** Where the target's backing file holds data in a range the source reads as zeroes, zeroes are written. */
  const zeroOverBacking = async (run: Run, backing: BlockDevice): Promise<void> => {
    const inside = Math.min(run.length, backing.size - run.offset);
    const ranges: [number, number][] = [];
    if (inside > 0) {
      for (const e of await backing.blockStatus(run.offset, inside)) {
        if (e.kind !== 'data') continue;
        const a = Math.floor(e.offset / grid) * grid;
        const b = Math.min(Math.ceil((e.offset + e.length) / grid) * grid, run.offset + run.length);
        const last = ranges[ranges.length - 1];
        if (last && last[1] >= a) last[1] = Math.max(last[1], b);
        else ranges.push([a, b]);
      }
    }
    for (const [a, b] of ranges) {
      for (let o = a; o < b; o += ZERO_REQUEST) {
        const n = Math.min(ZERO_REQUEST, b - o);
        await pool.add({ prepare: async () => undefined, issue: () => writeZeroes(o, n) });
      }
    }
    progress(run.length);
  };

  const copyRun = async (run: Run): Promise<void> => {
    if (backing && run.kind !== 'data') return zeroOverBacking(run, backing);
    // Without sparse detection every byte is written, holes included (-S 0 fully allocates),
    // except what the target's backing file already provides.
    const copyAsData = sparse === 0 && !(opts.targetHasBacking && run.kind === 'unallocated');
    if (run.kind !== 'data' && !copyAsData) {
      const skip = opts.targetHasBacking ? run.kind === 'unallocated' : targetIsZero;
      for (let o = 0; o < run.length; o += ZERO_REQUEST) {
        const n = Math.min(ZERO_REQUEST, run.length - o);
        if (skip) {
          progress(n);
          continue;
        }
        await pool.add({ prepare: async () => undefined, issue: () => writeZeroes(run.offset + o, n).then(() => progress(n)) });
      }
      return;
    }
    // Data: chunks on a fixed grid so compressed writes get whole clusters.
    for (let o = run.offset; o < run.offset + run.length; ) {
      const end = Math.min(Math.floor(o / chunk) * chunk + chunk, run.offset + run.length);
      const offset = o;
      let data: Uint8Array;
      let base: Uint8Array | undefined;
      await pool.add({
        prepare: async () => {
          data = buffers.take(end - offset);
          base = backing && backingBuffers!.take(end - offset);
          try {
            await Promise.all([src.read(offset, data), base && readPadded(backing!, offset, base)]);
          } catch (err) {
            buffers.give(data);
            if (base) backingBuffers!.give(base);
            throw err;
          }
        },
        issue: () =>
          issueChunk(offset, data, base).finally(() => {
            buffers.give(data);
            if (base) backingBuffers!.give(base);
            progress(end - offset);
          }),
      });
      o = end;
    }
  };

  try {
    for (let w = 0; w < total && !pool.failed; w += STATUS_WINDOW) {
      const end = Math.min(w + STATUS_WINDOW, total);
      let extents = await src.blockStatus(w, end - w);
      // The target's backing file stands for the source's layers from backingDepth down: only the layers above are copied.
      const from = opts.targetHasBacking ? opts.backingDepth : undefined;
      if (from !== undefined) extents = extents.map((e) => (e.depth >= from ? { ...e, kind: 'unallocated' } : e));
      for (const run of gridRuns(extents, grid, end)) await copyRun(run);
    }
  } finally {
    await pool.drain();
  }
}

interface Piece {
  offset: number;
  length: number;
  /** same: equal to what the target's backing file holds there. */
  kind: 'data' | 'zero' | 'same';
}

/**
 * Splits a chunk into runs of all-zero grains and the rest (grain 0: no zero detection);
 * with `base`, grains of `cmpGrain` bytes equal to it are 'same'.
 */
function splitChunk(offset: number, data: Uint8Array, grain: number, base: Uint8Array | undefined, cmpGrain: number): Piece[] {
  if (grain === 0 && !base) return [{ offset, length: data.byteLength, kind: 'data' }];
  const step = base ? cmpGrain : grain;
  const pieces: Piece[] = [];
  const end = offset + data.byteLength;
  for (let o = offset; o < end; ) {
    const next = Math.min(Math.floor(o / step) * step + step, end);
    const bytes = data.subarray(o - offset, next - offset);
    const kind = base && Buffer.compare(bytes, base.subarray(o - offset, next - offset)) === 0 ? 'same' : grain > 0 && isZero(bytes) ? 'zero' : 'data';
    const last = pieces[pieces.length - 1];
    if (last && last.kind === kind) last.length += next - o;
    else pieces.push({ offset: o, length: next - o, kind });
    o = next;
  }
  return pieces;
}

/** Reads `into` from `dev` at `offset`; what lies past its end reads as zeroes. */
async function readPadded(dev: BlockDevice, offset: number, into: Uint8Array): Promise<void> {
  const inside = Math.max(0, Math.min(into.byteLength, dev.size - offset));
  if (inside > 0) await dev.read(offset, into.subarray(0, inside));
  into.fill(0, inside);
}

/** Reuses chunk buffers so a long copy does not churn the allocator. */
class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(private readonly size: number) {}

  take(length: number): Uint8Array {
    return (this.free.pop() ?? Buffer.allocUnsafeSlow(this.size)).subarray(0, length);
  }

  give(buf: Uint8Array): void {
    this.free.push(Buffer.from(buf.buffer, buf.byteOffset, this.size));
  }
}
