/**
 * Which filesystem of an image the appliance mounts (or root mode boots): the partition asked
 * for, else the first partition holding a filesystem, else the whole disk; named as the guest
 * names it (vda, vda1, …).
 */
import { BlockDevice } from '../block/device';
import { ImageError } from '../block/errors';
import { FsInfo, probeFilesystem } from '../guestfs/fs-probe';
import { readPartitions } from '../guestfs/partitions';

export interface GuestFilesystem {
  /** The guest's block device name: vda for the whole disk, vdaN for partition N. */
  device: string;
  type: FsInfo['type'];
}

export async function findFilesystem(dev: BlockDevice, partition?: number): Promise<GuestFilesystem> {
  const table = await readPartitions(dev);
  if (partition !== undefined) {
    const p = table.partitions.find((x) => x.number === partition);
    if (!p) throw new ImageError('NOT_FOUND', `the image has no partition ${partition} (${table.scheme === 'none' ? 'no partition table' : `partitions: ${table.partitions.map((x) => x.number).join(', ') || 'none'}`})`);
    const fs = await probeFilesystem(dev, p.start);
    if (!fs || fs.type === 'swap') throw new ImageError('UNSUPPORTED', `partition ${partition} holds no filesystem img can mount`);
    return { device: `vda${partition}`, type: fs.type };
  }
  for (const p of table.partitions) {
    const fs = await probeFilesystem(dev, p.start);
    if (fs && fs.type !== 'swap') return { device: `vda${p.number}`, type: fs.type };
  }
  if (table.scheme === 'none') {
    const fs = await probeFilesystem(dev, 0);
    if (fs && fs.type !== 'swap') return { device: 'vda', type: fs.type };
  }
  throw new ImageError('UNSUPPORTED', table.scheme === 'none' ? 'the image holds no filesystem (and no partition table)' : `no partition of the image (${table.scheme}) holds a filesystem`);
}
