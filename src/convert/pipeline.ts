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
export type CopyTarget = Pick<Image, 'size' | 'clusterSize' | 'write' | 'writeZeroes' | 'writeCompressed' | 'filename'>;

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
  /** The target has a backing file: ranges unallocated in the source stay unallocated in it. */
  targetHasBacking?: boolean;
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

  const writeZeroes = (offset: number, length: number): Promise<unknown> =>
    dst.writeZeroes(offset, length, { mayUnmap: !opts.targetHasBacking });

  /** Writes a chunk's non-zero runs; zero runs are skipped or zeroed. Starts every request synchronously. */
  const issueChunk = (offset: number, data: Uint8Array): Promise<unknown> => {
    const writes: Promise<unknown>[] = [];
    for (const piece of splitZeroes(offset, data, zeroGrain)) {
      const bytes = data.subarray(piece.offset - offset, piece.offset - offset + piece.length);
      if (piece.zero) {
        if (!opts.targetIsZero) writes.push(writeZeroes(piece.offset, piece.length));
      } else if (opts.compress) {
        // One call per cluster, each in a buffer of its own: compression runs on worker
        // threads, and posting a view there copies its whole underlying buffer.
        for (let o = 0; o < piece.length; o += cluster) writes.push(dst.writeCompressed!(piece.offset + o, new Uint8Array(bytes.subarray(o, o + cluster))));
      } else writes.push(dst.write(piece.offset, bytes));
    }
    return Promise.all(writes);
  };

  const copyRun = async (run: Run): Promise<void> => {
    // Without sparse detection every byte is written, holes included (-S 0 fully allocates),
    // except what the target's backing file already provides.
    const copyAsData = sparse === 0 && !(opts.targetHasBacking && run.kind === 'unallocated');
    if (run.kind !== 'data' && !copyAsData) {
      const skip = opts.targetHasBacking ? run.kind === 'unallocated' : opts.targetIsZero;
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
      await pool.add({
        prepare: async () => {
          data = buffers.take(end - offset);
          try {
            await src.read(offset, data);
          } catch (err) {
            buffers.give(data);
            throw err;
          }
        },
        issue: () =>
          issueChunk(offset, data).finally(() => {
            buffers.give(data);
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
      // The target's backing file stands for the source's: only the source's top layer is copied.
      if (opts.targetHasBacking) extents = extents.map((e) => (e.depth > 0 ? { ...e, kind: 'unallocated' } : e));
      for (const run of gridRuns(extents, grid, end)) await copyRun(run);
    }
  } finally {
    await pool.drain();
  }
}

interface Piece {
  offset: number;
  length: number;
  zero: boolean;
}

/** Splits a chunk into runs of all-zero grains and the rest (grain 0: no detection). */
function splitZeroes(offset: number, data: Uint8Array, grain: number): Piece[] {
  if (grain === 0) return [{ offset, length: data.byteLength, zero: false }];
  const pieces: Piece[] = [];
  const end = offset + data.byteLength;
  for (let o = offset; o < end; ) {
    const next = Math.min(Math.floor(o / grain) * grain + grain, end);
    const zero = isZero(data.subarray(o - offset, next - offset));
    const last = pieces[pieces.length - 1];
    if (last && last.zero === zero) last.length += next - o;
    else pieces.push({ offset: o, length: next - o, zero });
    o = next;
  }
  return pieces;
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
