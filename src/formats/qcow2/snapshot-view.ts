/**
 * A read-only view of an internal snapshot's disk (convert -l): a second engine over the same
 * files whose L1 table is the snapshot's. Unallocated ranges read through the image's backing.
 */
import { Extent } from '../../block/device';
import { checkRange } from '../../block/extents';
import { SnapshotSelector } from '../../block/image';
import { ReadOnlyDevice } from '../../block/read-only';
import { Qcow2Core } from './core';
import { selectSnapshot } from './snapshot-ops';
import { loadSnapshots } from './snapshot-table';

export class SnapshotView extends ReadOnlyDevice {
  private constructor(private readonly core: Qcow2Core) {
    // The files belong to the image the view came from: close() leaves them open.
    super('an internal snapshot', core.file.path);
  }

  /** Opens a snapshot of the image `of` (a string is an id first, then a name, as qemu's -l does). */
  static async open(of: Qcow2Core, sel: SnapshotSelector): Promise<SnapshotView> {
    const fileSize = await of.file.size();
    const table = await loadSnapshots(of.file, of.header, fileSize);
    const snap = selectSnapshot(table.entries, sel, 'id-first', of.file.path);
    const header = { ...of.header, size: snap.diskSize ?? of.header.size, l1Size: snap.l1Size, l1TableOffset: snap.l1TableOffset };
    const core = new Qcow2Core(of.file, of.dataFile, header, of.backing, fileSize, of.caches);
    await core.tables.loadL1();
    return new SnapshotView(core);
  }

  get size(): number {
    return this.core.size;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRange(this.size, offset, into.byteLength, 'read');
    await this.core.readPieces(await this.core.mapRange(offset, into.byteLength), into, offset);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(this.size, offset, length, 'block status');
    return this.core.blockStatus(offset, length);
  }
}
