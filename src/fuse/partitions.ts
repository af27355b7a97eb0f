/** The partitions of a disk as exported files, and the choice of the filesystem `--fs` mounts. */
import { BlockDevice } from '../block/device';
import { ImageError } from '../block/errors';
import { WindowDevice } from '../block/window';
import { probeFilesystem } from '../guestfs/fs-probe';
import { Partition, readPartitions } from '../guestfs/partitions';
import { ExportedFile } from './server';

/** `p1`, `p2`, … (Linux numbering: logical partitions from p5), each a window onto the disk. */
export async function partitionFiles(disk: BlockDevice): Promise<ExportedFile[]> {
  const table = await readPartitions(disk);
  return table.partitions.map((p) => ({ name: `p${p.number}`, device: new WindowDevice(disk, p.start, p.size) }));
}

/**
 * The device holding the filesystem to mount: partition `number` when given; the whole disk
 * when it has no partition table; else the only partition, or the first one holding a
 * filesystem the probe knows (swap aside).
 */
export async function filesystemDevice(disk: BlockDevice, number?: number): Promise<{ device: BlockDevice; what: string }> {
  const table = await readPartitions(disk);
  const window = (p: Partition) => ({ device: new WindowDevice(disk, p.start, p.size), what: `partition ${p.number}` });
  if (number !== undefined) {
    const p = table.partitions.find((q) => q.number === number);
    if (!p) {
      const have = table.partitions.map((q) => q.number).join(', ') || 'none';
      throw new ImageError('INVALID_ARGUMENT', `no partition ${number} (partitions: ${have})`);
    }
    return window(p);
  }
  if (table.scheme === 'none') return { device: disk, what: 'the whole disk' };
  if (table.partitions.length === 1) return window(table.partitions[0]);
  for (const p of table.partitions) {
    const fs = await probeFilesystem(disk, p.start);
    if (fs && fs.type !== 'swap') return window(p);
  }
  throw new ImageError('INVALID_ARGUMENT', 'no partition holds a known filesystem: choose one with -P N');
}
