/**
 * Backing chains as a whole: the layers of an open image, finding a layer by a name as
 * qemu-img's -b finds it, opening a file as some image's backing file (errors name it as
 * written and as resolved; a file whose chain leads back to the image is refused), and
 * creating overlays.
 */
import * as fs from 'node:fs/promises';
import { ImageError } from '../block/errors';
import { Image } from '../block/image';
import { createImage, openImage, resolveBackingName } from '../formats/index';

/** The image and every layer below it, top first (index = depth). */
export function chainLayers(top: Image): Image[] {
  const layers: Image[] = [];
  for (let l: Image | null = top; l; l = l.backing) layers.push(l);
  return layers;
}

/** The canonical path of a file, or undefined when it does not exist. */
async function realpathOf(file: string): Promise<string | undefined> {
  return fs.realpath(file).catch(() => undefined);
}

/**
 * The depth of the layer of `top`'s chain that is the file `resolved` opened as `format`
 * (any format when absent), or undefined when no layer below the top is.
 */
export async function layerDepth(top: Image, resolved: string, format?: string): Promise<number | undefined> {
  const want = await realpathOf(resolved);
  if (want === undefined) return undefined;
  const layers = chainLayers(top);
  for (let d = 1; d < layers.length; d++) {
    if ((format === undefined || layers[d].format === format) && (await realpathOf(layers[d].filename)) === want) return d;
  }
  return undefined;
}

/**
 * The depth of the backing file `name` in `top`'s chain, found as qemu's
 * bdrv_find_backing_image does: the name is resolved against the directory of each image
 * in turn and compared with that image's backing file (commit -b, rebase's shortcut).
 */
export async function findBackingLayer(top: Image, name: string): Promise<number> {
  const layers = chainLayers(top);
  for (let d = 0; d + 1 < layers.length; d++) {
    const want = await realpathOf(resolveBackingName(layers[d].filename, name));
    if (want !== undefined && want === (await realpathOf(layers[d + 1].filename))) return d + 1;
  }
  throw new ImageError('NOT_FOUND', `Did not find '${name}' in the backing chain of '${top.filename}'`, { file: top.filename, field: 'backing file', value: name });
}

/**
 * Opens `name`, as the image `of` would name it, read-only with its whole chain; a missing
 * file is reported with the name as written and as resolved. With `guard`, a chain that
 * reaches that file (the image `of` itself, or the file a new image will replace) is refused.
 */
export async function openBackingFile(of: string, name: string, format: string | undefined, guard: string = of): Promise<Image> {
  const resolved = resolveBackingName(of, name);
  let image: Image;
  try {
    image = await openImage(resolved, { format, readOnly: true });
  } catch (err) {
    if (err instanceof ImageError && err.code === 'NOT_FOUND' && err.file === resolved && err.field !== 'backing file') {
      throw new ImageError('NOT_FOUND', `backing file '${name}' (resolved to ${resolved}) does not exist`, { file: of, field: 'backing file', value: name });
    }
    throw err;
  }
  const self = await realpathOf(guard);
  if (self !== undefined) {
    for (const layer of chainLayers(image)) {
      if ((await realpathOf(layer.filename)) === self) {
        await image.close();
        throw new ImageError('INVALID_ARGUMENT', `backing file '${name}' (resolved to ${resolved}) would make a loop: its chain reaches ${guard}`, {
          file: of,
          field: 'backing file',
          value: name,
        });
      }
    }
  }
  return image;
}

/** The virtual size of `backing` as a new image `file` names it; opening it also checks its chain. */
export async function backingImageSize(file: string, backing: string, backingFormat: string | undefined): Promise<number> {
  const image = await openBackingFile(file, backing, backingFormat);
  try {
    return image.size;
  } finally {
    await image.close();
  }
}

export interface OverlayRequest {
  /** The backing file, relative to the overlay's directory unless absolute; stored as given. */
  backingFile: string;
  /** Its format, recorded in the overlay and used as is when opening it (never probed). */
  backingFormat: string;
  /** Format of the overlay (default qcow2). */
  format?: string;
  /** Virtual size; the backing file's when absent. */
  size?: number;
  /** Creation options, as with -o. */
  options?: Record<string, string>;
  /** Do not open the backing file (a size must be given): create -u. */
  unsafe?: boolean;
}

/** Creates `file` as an overlay of a backing file (img create -b … -F …). */
export async function createOverlay(file: string, req: OverlayRequest): Promise<void> {
  let size = req.size;
  if (!req.unsafe) {
    const backingSize = await backingImageSize(file, req.backingFile, req.backingFormat);
    size ??= backingSize;
  }
  if (size === undefined) throw new ImageError('INVALID_ARGUMENT', 'an overlay created without opening its backing file needs a size', { file });
  await createImage(req.format ?? 'qcow2', file, { size, options: req.options ?? {}, backingFile: req.backingFile, backingFormat: req.backingFormat });
}
