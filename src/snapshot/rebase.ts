/**
 * rebase: give an image another backing file (or none) without changing what it reads, as
 * qemu-img rebase does. Safe mode reads the old and the new backing file wherever the image
 * itself holds nothing and writes into the image only the 512-byte sectors where they differ
 * (the old content); then the header names the new backing file. Unsafe mode (-u) only
 * changes the name, trusting that both backing files read alike.
 *
 * Ranges known to read alike are not read at all: where both read as zeroes by their block
 * status, and — when the new backing file is a layer of the old chain — wherever that layer
 * or one below it is what the image reads.
 */
import { BlockDevice } from '../block/device';
import { ImageError } from '../block/errors';
import { isZero } from '../block/extents';
import { Image } from '../block/image';
import { openImage, resolveBackingName } from '../formats/index';
import { layerDepth, openBackingFile } from './chain';

export interface RebaseRequest {
  file: string;
  /** The image's format; probed when absent. */
  format?: string;
  /** The new backing file, relative to the image's directory unless absolute; '' for none (the image is flattened). */
  backingFile: string;
  /** The new backing file's format: required unless backingFile is ''. */
  backingFormat?: string;
  /** Only change the name (-u): the old and new backing files must read alike. */
  unsafe?: boolean;
  onProgress?: (done: number, total: number) => void;
}

const CHUNK = 2 << 20;
const SECTOR = 512;
const STATUS_WINDOW = 1 << 30;
/** How far ahead block status is asked whether both backing files read as zeroes. */
const ZERO_LOOKAHEAD = 64 << 20;

export async function rebaseImage(req: RebaseRequest): Promise<void> {
  const flatten = req.backingFile === '';
  if (!flatten && !req.backingFormat) {
    throw new ImageError('INVALID_ARGUMENT', `Could not change the backing file to '${req.backingFile}': backing format must be specified`, {
      file: req.file,
      field: 'backing format',
    });
  }
  const top = await openImage(req.file, { format: req.format, readOnly: false, backingChain: !req.unsafe });
  try {
    if (!top.amend) {
      throw new ImageError('UNSUPPORTED', `Could not change the backing file to '${req.backingFile}': the ${top.format} format has no backing file`, { file: top.filename });
    }
    if (!req.unsafe) {
      const next = flatten ? null : await openBackingFile(top.filename, req.backingFile, req.backingFormat);
      try {
        const shared = next ? await layerDepth(top, resolveBackingName(top.filename, req.backingFile), req.backingFormat) : undefined;
        await copyDifferences(top, top.backing, next, shared, req.onProgress);
      } finally {
        await next?.close();
      }
    } else if (!flatten) {
      // Even unsafe, a name that leads back to the image itself is refused when it can be seen.
      await openBackingFile(top.filename, req.backingFile, req.backingFormat).then(
        (b) => b.close(),
        (err) => {
          if (err instanceof ImageError && err.code === 'INVALID_ARGUMENT') throw err;
        },
      );
    }
    await top.amend(flatten ? { backing_file: '' } : { backing_file: req.backingFile, backing_fmt: req.backingFormat! });
    await top.flush();
    req.onProgress?.(top.size, top.size);
  } finally {
    await top.close();
  }
}

/** Fills `into` from `dev` at `offset` (zeroes past its end, or everywhere without a device). */
async function readPadded(dev: BlockDevice | null, offset: number, into: Uint8Array): Promise<void> {
  const inside = dev ? Math.max(0, Math.min(into.byteLength, dev.size - offset)) : 0;
  if (inside > 0) await dev!.read(offset, into.subarray(0, inside));
  into.fill(0, inside);
}

/** How many bytes from `offset` (up to `end`, at most ZERO_LOOKAHEAD) `dev` reads as zeroes by its block status alone. */
async function zeroSpan(dev: BlockDevice | null, offset: number, end: number): Promise<number> {
  const limit = Math.min(end, offset + ZERO_LOOKAHEAD);
  const inside = dev ? Math.max(0, Math.min(limit, dev.size) - offset) : 0;
  if (inside === 0) return limit - offset;
  let span = 0;
  for (const e of await dev!.blockStatus(offset, inside)) {
    if (e.kind === 'data') return span;
    span += e.length;
  }
  return limit - offset; // the rest lies past the device's end
}

/**
 * Writes into `top`, wherever it holds nothing itself, the sectors where `old` and `next`
 * read differently. `shared`: the depth (in top's chain) of the layer `next` is, if it is one.
 */
async function copyDifferences(
  top: Image,
  old: BlockDevice | null,
  next: BlockDevice | null,
  shared: number | undefined,
  onProgress?: (done: number, total: number) => void,
): Promise<void> {
  const a = new Uint8Array(CHUNK);
  const b = new Uint8Array(CHUNK);
  const size = top.size;
  for (let w = 0; w < size; w += STATUS_WINDOW) {
    const end = Math.min(size, w + STATUS_WINDOW);
    for (const e of await top.blockStatus(w, end - w)) {
      const own = e.depth === 0 && e.kind !== 'unallocated';
      const alike = shared !== undefined && e.depth >= shared;
      const stop = e.offset + e.length;
      for (let o = e.offset; !own && !alike && o < stop; ) {
        const zeroes = Math.min(await zeroSpan(old, o, stop), await zeroSpan(next, o, stop));
        if (zeroes >= SECTOR) {
          o += zeroes - (zeroes % SECTOR);
          continue;
        }
        const n = Math.min(CHUNK, stop - o);
        await Promise.all([readPadded(old, o, a.subarray(0, n)), readPadded(next, o, b.subarray(0, n))]);
        await writeDifferingSectors(top, o, a.subarray(0, n), b.subarray(0, n));
        o += n;
        onProgress?.(o, size);
      }
      onProgress?.(stop, size);
    }
  }
}

/** Writes the runs of 512-byte sectors where `old` differs from `next` (zero runs as zeroes). */
async function writeDifferingSectors(top: Image, offset: number, old: Uint8Array, next: Uint8Array): Promise<void> {
  const n = old.byteLength;
  if (Buffer.compare(old, next) === 0) return;
  const differs = (s: number) => Buffer.compare(old.subarray(s, Math.min(n, s + SECTOR)), next.subarray(s, Math.min(n, s + SECTOR))) !== 0;
  for (let s = 0; s < n; ) {
    const diff = differs(s);
    let t = s + SECTOR;
    while (t < n && differs(t) === diff) t += SECTOR;
    t = Math.min(t, n);
    if (diff) {
      const run = old.subarray(s, t);
      if (isZero(run)) await top.writeZeroes(offset + s, t - s);
      else await top.write(offset + s, run);
    }
    s = t;
  }
}
