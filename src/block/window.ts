/**
 * A byte range [start, start+size) of another device seen as a device of its own: a
 * partition, or the part of a disk `img dd skip=` copies. Every request is checked against
 * the window before it reaches the device below; close() leaves that device open.
 */
import { BlockDevice, Extent, WriteOptions, ZeroOptions } from './device';
import { ImageError } from './errors';
import { checkRange } from './extents';

export class WindowDevice implements BlockDevice {
  readonly readOnly: boolean;

  constructor(
    private readonly device: BlockDevice,
    readonly start: number,
    readonly size: number,
    opts: { readOnly?: boolean } = {},
  ) {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(size) || start < 0 || size < 0 || start + size > device.size) {
      throw new ImageError('OUT_OF_RANGE', `window ${start}+${size} is outside the device (size ${device.size})`);
    }
    this.readOnly = device.readOnly || !!opts.readOnly;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRange(this.size, offset, into.length, 'read');
    return this.device.read(this.start + offset, into);
  }

  async write(offset: number, data: Uint8Array, opts?: WriteOptions): Promise<void> {
    this.writable(offset, data.length, 'write');
    return this.device.write(this.start + offset, data, opts);
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.writable(offset, length, 'write zeroes');
    return this.device.writeZeroes(this.start + offset, length, opts);
  }

  async discard(offset: number, length: number): Promise<void> {
    this.writable(offset, length, 'discard');
    return this.device.discard(this.start + offset, length);
  }

  async flush(): Promise<void> {
    if (!this.readOnly) await this.device.flush();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(this.size, offset, length, 'block status');
    const extents = await this.device.blockStatus(this.start + offset, length);
    return extents.map((e) => ({ ...e, offset: e.offset - this.start }));
  }

  async close(): Promise<void> {}

  private writable(offset: number, length: number, what: string): void {
    if (this.readOnly) throw new ImageError('READ_ONLY', 'the window is read-only');
    checkRange(this.size, offset, length, what);
  }
}
