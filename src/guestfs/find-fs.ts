/**
 * Which filesystem of an image to use (the boot appliance mounts it, `img mount --fs` hands it
 * to the kernel): partition N when asked for, else the first partition holding a filesystem
 * the probe knows (swap aside), else the whole disk when it has no partition table, else the
 * only partition there is. `fs` is what the probe found there, null when it found nothing.
 */
import { BlockDevice } from '../block/device';
import { ImageError } from '../block/errors';
import { FsInfo, probeFilesystem } from './fs-probe';
import { Partition, readPartitions } from './partitions';

export interface FilesystemChoice {
  /** The partition holding it; undefined for the whole disk. */
  partition?: Partition;
  fs: FsInfo | null;
}

const usable = (fs: FsInfo | null): fs is FsInfo => !!fs && fs.type !== 'swap';

export async function chooseFilesystem(dev: BlockDevice, number?: number): Promise<FilesystemChoice> {
  const table = await readPartitions(dev);
  if (number !== undefined) {
    const partition = table.partitions.find((p) => p.number === number);
    if (!partition) {
      const have = table.scheme === 'none' ? 'no partition table' : `partitions: ${table.partitions.map((p) => p.number).join(', ') || 'none'}`;
      throw new ImageError('NOT_FOUND', `the image has no partition ${number} (${have})`);
    }
    return { partition, fs: await probeFilesystem(dev, partition.start) };
  }
  for (const partition of table.partitions) {
    const fs = await probeFilesystem(dev, partition.start);
    if (usable(fs)) return { partition, fs };
  }
  if (table.scheme === 'none') return { fs: await probeFilesystem(dev, 0) };
  if (table.partitions.length === 1) return { partition: table.partitions[0], fs: null };
  throw new ImageError('UNSUPPORTED', `no partition of the image (${table.scheme}) holds a filesystem img recognises: choose one with -P N`);
}

export interface GuestFilesystem {
  /** The guest's block device name: vda for the whole disk, vdaN for partition N. */
  device: string;
  type: FsInfo['type'];
}

/** The filesystem the boot appliance mounts, as the guest names its device; its type must be known. */
export async function findFilesystem(dev: BlockDevice, number?: number): Promise<GuestFilesystem> {
  const { partition, fs } = await chooseFilesystem(dev, number);
  if (usable(fs)) return { device: partition ? `vda${partition.number}` : 'vda', type: fs.type };
  if (partition) throw new ImageError('UNSUPPORTED', `partition ${partition.number} holds no filesystem img can mount`);
  throw new ImageError('UNSUPPORTED', 'the image holds no filesystem (and no partition table)');
}
