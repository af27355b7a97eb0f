/**
 * Internal snapshots of an image file (img snapshot): list, create, apply, delete. The image
 * is opened without its backing chain — none of these reads through it — and closed again.
 * Formats without internal snapshots report UNSUPPORTED (listing them gives an empty list).
 */
import { ImageError } from '../block/errors';
import { Image, SnapshotInfo, SnapshotSelector } from '../block/image';
import { openImage } from '../formats/index';

export interface SnapshotFileOptions {
  /** The image's format; probed when absent. */
  format?: string;
}

export type SnapshotAction = 'create' | 'apply' | 'delete';

/** UNSUPPORTED for a format without internal snapshots, worded for the action. */
export function noSnapshots(image: Image, action: SnapshotAction | 'list'): ImageError {
  return new ImageError('UNSUPPORTED', `the ${image.format} format does not support internal snapshots (cannot ${action} one)`, { file: image.filename });
}

async function withImage<T>(file: string, opts: SnapshotFileOptions, readOnly: boolean, fn: (image: Image) => Promise<T>): Promise<T> {
  const image = await openImage(file, { format: opts.format, readOnly, backingChain: false });
  try {
    return await fn(image);
  } finally {
    await image.close();
  }
}

/** The internal snapshots, in table order (as `img snapshot -l` lists them). */
export function listSnapshots(file: string, opts: SnapshotFileOptions = {}): Promise<SnapshotInfo[]> {
  return withImage(file, opts, true, async (image) => (image.listSnapshots ? image.listSnapshots() : []));
}

/** Takes a snapshot named `name` (names need not be unique: the id qemu's way tells them apart). */
export function createSnapshot(file: string, name: string, opts: SnapshotFileOptions & { date?: Date } = {}): Promise<SnapshotInfo> {
  return withImage(file, opts, false, async (image) => {
    if (!image.createSnapshot) throw noSnapshots(image, 'create');
    return image.createSnapshot(name, { date: opts.date });
  });
}

/** Reverts the disk to a snapshot (a string is an id first, then a name, as qemu-img snapshot -a). */
export function applySnapshot(file: string, snapshot: SnapshotSelector, opts: SnapshotFileOptions = {}): Promise<SnapshotInfo> {
  return withImage(file, opts, false, async (image) => {
    if (!image.applySnapshot) throw noSnapshots(image, 'apply');
    return image.applySnapshot(snapshot);
  });
}

/** Deletes a snapshot (a string is a name, as qemu-img snapshot -d takes it; `{ id }` for an id). */
export function deleteSnapshot(file: string, snapshot: SnapshotSelector, opts: SnapshotFileOptions = {}): Promise<SnapshotInfo> {
  return withImage(file, opts, false, async (image) => {
    if (!image.deleteSnapshot) throw noSnapshots(image, 'delete');
    return image.deleteSnapshot(snapshot);
  });
}
