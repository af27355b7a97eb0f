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

/** The pieces of [offset, offset+length), in order; null when the device is not an image. */
export async function hostPieces(dev: BlockDevice, offset: number, length: number): Promise<HostPiece[] | null> {
  if (!isImage(dev)) return null;
  const pieces: HostPiece[] = [];
  for (const e of await dev.blockStatus(offset, length)) {
    let layer: Image | null = dev;
    for (let d = 0; d < e.depth && layer; d++) layer = layer.backing;
    const fd = layer?.stableDataFd;
    if (e.kind !== 'data') pieces.push({ kind: 'zero', length: e.length });
    else if (e.compressed || e.hostOffset === undefined || fd === undefined) pieces.push({ kind: 'read', length: e.length });
    else pieces.push({ kind: 'file', length: e.length, fd, position: e.hostOffset });
  }
  return pieces;
}
