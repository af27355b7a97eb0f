/**
 * Walks a device's block status offset by offset, asking the device for a large window at a
 * time: `at(offset)` is the extent starting at `offset` (clipped from the one containing it).
 */
import { BlockDevice, Extent } from '../block/device';

const WINDOW = 1 << 30;

export class StatusCursor {
  private list: Extent[] = [];
  private index = 0;

  constructor(private readonly device: BlockDevice) {}

  async at(offset: number): Promise<Extent> {
    for (;;) {
      while (this.index < this.list.length && this.list[this.index].offset + this.list[this.index].length <= offset) this.index++;
      const e = this.list[this.index];
      if (e && e.offset <= offset) {
        const skip = offset - e.offset;
        return { ...e, offset, length: e.length - skip, hostOffset: e.hostOffset === undefined ? undefined : e.hostOffset + skip };
      }
      this.list = await this.device.blockStatus(offset, Math.min(WINDOW, this.device.size - offset));
      this.index = 0;
    }
  }
}
