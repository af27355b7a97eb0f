/**
 * A range of a device as pieces of host files and runs of zeroes, so a server can send the
 * bytes straight from the page cache (splice) instead of reading them into memory first.
 */
import { BlockDevice } from './device';
import { Image } from './image';

export type HostPiece =
  /** `length` bytes of the file open as `fd`, from `position`. */
  | { kind: 'file'; length: number; fd: number; position: number }
  /** `length` bytes that read as zeroes. */
  | { kind: 'zero'; length: number }
  /** `length` bytes only the format can produce (compressed data, a layer without a stable mapping). */
  | { kind: 'read'; length: number };

function isImage(dev: BlockDevice): dev is Image {
  return 'backing' in dev && 'format' in dev;
}

/**
 * The pieces of [offset, offset+length), in order; null when there is nothing to send from a
 * file: the device is not an image, or no layer of its chain has a stable mapping.
 */
export async function hostPieces(dev: BlockDevice, offset: number, length: number): Promise<HostPiece[] | null> {
  if (!isImage(dev)) return null;
  const fds: (number | undefined)[] = [];
  for (let layer: Image | null = dev; layer; layer = layer.backing) fds.push(layer.stableDataFd);
  if (fds.every((fd) => fd === undefined)) return null;
  return (await dev.blockStatus(offset, length)).map((e): HostPiece => {
    const fd = fds[e.depth];
    if (e.kind !== 'data' || e.readsZero) return { kind: 'zero', length: e.length };
    if (e.compressed || e.hostOffset === undefined || fd === undefined) return { kind: 'read', length: e.length };
    return { kind: 'file', length: e.length, fd, position: e.hostOffset };
  });
}
