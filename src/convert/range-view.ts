/** A read-only window [base, base+size) of a device, seen as a device of its own (img dd skip=). */
import { BlockDevice, Extent } from '../block/device';
import { ImageError } from '../block/errors';
import { ReadOnlyDevice } from '../block/read-only';

export class RangeView extends ReadOnlyDevice {
  constructor(
    private readonly device: BlockDevice,
    private readonly base: number,
    readonly size: number,
  ) {
    super('a range view');
    if (base < 0 || size < 0 || base + size > device.size) {
      throw new ImageError('OUT_OF_RANGE', `window ${base}+${size} is outside the device (size ${device.size})`);
    }
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    return this.device.read(this.base + offset, into);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const extents = await this.device.blockStatus(this.base + offset, length);
    return extents.map((e) => ({ ...e, offset: e.offset - this.base }));
  }
}
