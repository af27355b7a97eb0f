/**
 * The format registry: names → formats, probing, and opening whole backing chains safely
 * (cycles and over-deep chains refused, a named backing format used without probing).
 */
import * as fs from 'node:fs/promises';
import { ImageError, fromSystemError } from '../block/errors';
import { CreateOptions, Image, ImageFormat, OpenBackingRequest } from '../block/image';
import { openNbd } from '../nbd/client';
import { isNbdUri } from '../nbd/uri';
import { resolveBackingName } from './backing-name';
import { qcow2 } from './qcow2/format';
import { raw, RawImage } from './raw/raw';
import { vdi } from './vdi/format';
import { vmdk } from './vmdk/format';

export { resolveBackingName };

/** Probing order: every signature format first; raw is what is left. */
export const FORMATS: ImageFormat[] = [qcow2, vdi, vmdk, raw];

/** Longest chain img opens; qemu has no fixed limit, but a deeper chain is a loop or an attack. */
export const MAX_CHAIN_DEPTH = 256;

const PROBE_BYTES = 4096;

export function findFormat(name: string): ImageFormat {
  const f = FORMATS.find((x) => x.name === name);
  if (!f) {
    throw new ImageError('UNKNOWN_FORMAT', `unknown format '${name}' (known: ${FORMATS.map((x) => x.name).join(', ')})`, {
      field: 'format',
      value: name,
    });
  }
  return f;
}

/** Guesses a file's format from its first bytes; 'raw' when no signature matches. */
export async function probeFormat(filename: string): Promise<string> {
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(filename, 'r');
    const head = new Uint8Array(PROBE_BYTES);
    const { bytesRead } = await fh.read(head, 0, PROBE_BYTES, 0);
    const bytes = head.subarray(0, bytesRead);
    return FORMATS.find((f) => f.probe(bytes))?.name ?? 'raw';
  } catch (err) {
    throw fromSystemError(err, filename);
  } finally {
    await fh?.close();
  }
}

export interface OpenImageOptions {
  /** The format; probed when absent. */
  format?: string;
  readOnly?: boolean;
  /** Open the backing chain (default true). Without it, unallocated ranges read as zeroes. */
  backingChain?: boolean;
  /** The top image's backing file, given rather than named by it (a VDI differencing image's parent). */
  backing?: string;
  /**
   * Opens the backing file this many layers down read-write too (1: the top's backing file),
   * for commit, which writes into a layer of the chain; every other layer below the top is
   * read-only.
   */
  writableBacking?: number;
  /** qcow2 cache sizes for the top image (OpenOptions). */
  l2CacheSize?: number;
  refcountCacheSize?: number;
}

/** Opens an image and, unless told not to, its whole backing chain (read-only below the top). */
export async function openImage(filename: string, opts: OpenImageOptions = {}): Promise<Image> {
  // An NBD export is a raw device: nothing to probe, no backing chain of its own.
  if (isNbdUri(filename)) return openNbd(filename, { readOnly: opts.readOnly, format: opts.format });
  return openLayer(filename, opts, []);
}

async function openLayer(filename: string, opts: OpenImageOptions, seen: string[]): Promise<Image> {
  const real = await fs.realpath(filename).catch((err) => {
    throw fromSystemError(err, filename);
  });
  if (seen.includes(real)) {
    throw new ImageError('CORRUPT', `backing chain loops: ${[...seen, real].join(' -> ')}`, { file: seen[0] });
  }
  if (seen.length > MAX_CHAIN_DEPTH) {
    throw new ImageError('CORRUPT', `backing chain is deeper than ${MAX_CHAIN_DEPTH} images`, { file: seen[0] });
  }
  const name = opts.format ?? (await probeFormat(filename));
  const format = findFormat(name);
  const chain = [...seen, real];
  const openBacking =
    opts.backingChain === false
      ? undefined
      : (req: OpenBackingRequest) =>
          openLayer(req.resolved, { format: req.format, readOnly: opts.writableBacking !== 1, writableBacking: below(opts.writableBacking) }, chain).catch((err) => {
            // Only the file itself missing: a layer further down reports its own missing backing file.
            if (err instanceof ImageError && err.code === 'NOT_FOUND' && err.file === req.resolved && err.field !== 'backing file') {
              throw new ImageError('NOT_FOUND', `backing file '${req.name}' (resolved to ${req.resolved}) does not exist`, {
                file: req.from,
                field: 'backing file',
                value: req.name,
              });
            }
            throw err;
          });
  const caches = { l2CacheSize: opts.l2CacheSize, refcountCacheSize: opts.refcountCacheSize };
  const image = await format.open(filename, { readOnly: opts.readOnly, openBacking, backingFile: opts.backing, ...caches });
  if (image instanceof RawImage && !opts.format) image.probed = true;
  return image;
}

/** The writable layer's depth as seen from one layer further down. */
function below(depth: number | undefined): number | undefined {
  return depth !== undefined && depth > 1 ? depth - 1 : undefined;
}

export async function createImage(format: string, filename: string, opts: CreateOptions): Promise<void> {
  await findFormat(format).create(filename, opts);
}
