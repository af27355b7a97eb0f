/**
 * The write side of a device that can only be read (a window onto another device, an internal
 * snapshot): every change is refused with READ_ONLY, flush has nothing to do, and close leaves
 * the files to whoever owns them.
 */
import { BlockDevice, Extent } from './device';
import { ImageError } from './errors';

export abstract class ReadOnlyDevice implements BlockDevice {
  readonly readOnly = true;
  abstract readonly size: number;

  /**
   * @param what how the refusal names the device ("a range view")
   * @param file the file the refusal names, if any
   */
  protected constructor(
    private readonly what: string,
    private readonly file?: string,
  ) {}

  abstract read(offset: number, into: Uint8Array): Promise<void>;
  abstract blockStatus(offset: number, length: number): Promise<Extent[]>;

  write(): Promise<void> {
    return this.refuse();
  }
  writeZeroes(): Promise<void> {
    return this.refuse();
  }
  discard(): Promise<void> {
    return this.refuse();
  }
  async flush(): Promise<void> {}
  async close(): Promise<void> {}

  private refuse(): Promise<never> {
    return Promise.reject(new ImageError('READ_ONLY', `${this.what} is read-only`, { file: this.file }));
  }
}
