/** Walking what openImage opened: the image and every layer of its backing chain (close() closes them all). */
import { Image, ImageInfo } from '../block/image';
import { backingImageSize } from '../snapshot/chain';

/** The infos of an image and, with `wholeChain`, of every image below it, top first. */
export async function chainInfo(image: Image, wholeChain: boolean): Promise<ImageInfo[]> {
  const infos: ImageInfo[] = [];
  for (let layer: Image | null = image; layer; layer = wholeChain ? layer.backing : null) infos.push(await layer.info());
  return infos;
}

/**
 * The virtual size of the backing file `backing` named by a new image `file` (its default
 * size). Opening it checks its whole chain; a missing file is named as written and as resolved.
 */
export function backingSize(file: string, backing: string, backingFormat: string | undefined): Promise<number> {
  return backingImageSize(file, backing, backingFormat);
}
