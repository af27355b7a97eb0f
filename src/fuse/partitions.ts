/** The partitions of a disk as exported files, and the choice of the filesystem `--fs` mounts. */
import { BlockDevice } from '../block/device';
import { WindowDevice } from '../block/window';
import { chooseFilesystem } from '../guestfs/find-fs';
import { readPartitions } from '../guestfs/partitions';
import { ExportedFile } from './server';

/** `p1`, `p2`, … (Linux numbering: logical partitions from p5), each a window onto the disk. */
export async function partitionFiles(disk: BlockDevice): Promise<ExportedFile[]> {
  const table = await readPartitions(disk);
  return table.partitions.map((p) => ({ name: `p${p.number}`, device: new WindowDevice(disk, p.start, p.size) }));
}

/** The device `--fs` hands to the kernel: the filesystem chooseFilesystem picks, as a window when it is a partition. */
export async function filesystemDevice(disk: BlockDevice, number?: number): Promise<BlockDevice> {
  const { partition } = await chooseFilesystem(disk, number);
  return partition ? new WindowDevice(disk, partition.start, partition.size) : disk;
}
