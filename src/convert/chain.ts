/** Walking what openImage opened: the image and every layer of its backing chain (close() closes them all). */
import { Image, ImageInfo } from '../block/image';
import { openImage, resolveBackingName } from '../formats/index';

/** The infos of an image and, with `wholeChain`, of every image below it, top first. */
export async function chainInfo(image: Image, wholeChain: boolean): Promise<ImageInfo[]> {
  const infos: ImageInfo[] = [];
  for (let layer: Image | null = image; layer; layer = wholeChain ? layer.backing : null) infos.push(await layer.info());
  return infos;
}

/** The virtual size of the backing file `backing` named by a new image `file` (its default size). */
export async function backingSize(file: string, backing: string, backingFormat: string | undefined): Promise<number> {
  const image = await openImage(resolveBackingName(file, backing), { format: backingFormat, readOnly: true });
  try {
    return image.size;
  } finally {
    await image.close();
  }
}
