/**
 * commit: copy what an image and the layers between it and a base hold into that base, as
 * qemu-img commit does. The base (the image's backing file unless named with -b) grows to
 * the image's size when smaller; then every range that a layer above the base answers is
 * written into the base as the image reads it (zeroes as zeroes). Afterwards the image is
 * emptied, so it reads through to the base, unless it is to be dropped (-d; -b implies -d,
 * because the layers in between no longer agree with the base).
 */
import { ImageError } from '../block/errors';
import { copyDevice } from '../convert/pipeline';
import { openImage } from '../formats/index';
import { chainLayers, findBackingLayer } from './chain';

export interface CommitRequest {
  file: string;
  /** The image's format; probed when absent. */
  format?: string;
  /** The layer to commit into, by name (resolved as qemu-img does); the image's backing file when absent. */
  base?: string;
  /** Leave the image as it is instead of emptying it (-d). Implied by `base`. */
  drop?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export async function commitImage(req: CommitRequest): Promise<void> {
  const drop = !!req.drop || req.base !== undefined;
  // Where the base lies in the chain decides which layer opens read-write.
  let depth = 1;
  const probe = await openImage(req.file, { format: req.format, readOnly: true });
  try {
    if (!probe.backing) throw new ImageError('INVALID_ARGUMENT', 'Image does not have a backing file', { file: probe.filename });
    if (req.base !== undefined) depth = await findBackingLayer(probe, req.base);
  } finally {
    await probe.close();
  }

  const top = await openImage(req.file, { format: req.format, readOnly: drop, writableBacking: depth });
  try {
    const base = chainLayers(top)[depth];
    if (base.size < top.size) {
      if (!base.resize) throw new ImageError('UNSUPPORTED', `the base image is smaller than the image and the ${base.format} format cannot grow`, { file: base.filename });
      await base.resize(top.size);
    }
    // What the base and the layers below it answer is already there: only the layers above are written.
    await copyDevice(top, base, { targetIsZero: false, targetHasBacking: true, backingDepth: depth, onProgress: req.onProgress });
    await base.flush();
    if (!drop) {
      if (top.makeEmpty) await top.makeEmpty();
      await top.flush();
    }
  } finally {
    await top.close();
  }
}
