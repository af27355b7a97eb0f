/**
 * raw: the virtual disk is the host file, byte for byte. Holes in a sparse file are
 * reported as zero extents through SEEK_DATA/SEEK_HOLE, so convert skips them.
 */
import { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../../block/device';
import { ImageError } from '../../block/errors';
import { checkRange, pushExtent } from '../../block/extents';
import { CreateOptions, CreateOptionSpec, Image, ImageFormat, ImageInfo, MeasureOptions, MeasureResult, OpenOptions } from '../../block/image';
import { HostFile } from '../../io/host-file';
import { parsePreallocation, parseSize } from '../options';

const SECTOR = 512;

export class RawImage implements Image, BlockDevice {
  readonly format = 'raw';
  readonly backing = null;
  readonly clusterSize = SECTOR;
  /** Set when the format was guessed: writes to the first sector are refused, as qemu does. */
  probed = false;

  private constructor(
    private readonly file: HostFile,
    public size: number,
  ) {}

  static async open(filename: string, opts: OpenOptions = {}): Promise<RawImage> {
    const file = await HostFile.open(filename, { readOnly: opts.readOnly });
    return new RawImage(file, await file.size());
  }

  get filename(): string {
    return this.file.path;
  }
  get readOnly(): boolean {
    return this.file.readOnly;
  }
  /** The mapping is the identity: always stable. */
  get stableDataFd(): number {
    return this.file.fd;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRange(this.size, offset, into.byteLength, 'read');
    await this.file.read(offset, into);
  }

  async write(offset: number, data: Uint8Array, opts?: WriteOptions): Promise<void> {
    this.checkWritable(offset, data.byteLength);
    await this.file.write(offset, data);
    if (opts?.fua) await this.file.flush();
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.checkWritable(offset, length);
    // A punched hole reads as zeroes whatever mayUnmap says; only full preallocation would
    // care, and raw files do not remember it.
    await this.file.punchHole(offset, length);
    if (opts?.fua) await this.file.flush();
  }

  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable(offset, length);
    await this.file.punchHole(offset, length);
  }

  async flush(): Promise<void> {
    await this.file.flush();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(this.size, offset, length, 'block status');
    const out: Extent[] = [];
    // The mapping is the identity, holes included (qemu-img map reports their offset too).
    for (const e of await this.file.extents(offset, length)) {
      pushExtent(out, { offset: e.offset, length: e.length, kind: e.data ? 'data' : 'zero', depth: 0, hostOffset: e.offset });
    }
    return out;
  }

  async info(): Promise<ImageInfo> {
    return {
      filename: this.filename,
      format: 'raw',
      virtualSize: this.size,
      actualSize: await this.file.allocatedSize(),
    };
  }

  async resize(size: number, opts: { shrink?: boolean; preallocation?: string } = {}): Promise<void> {
    if (this.readOnly) throw new ImageError('READ_ONLY', 'image is open read-only', { file: this.filename });
    if (size < this.size && !opts.shrink) {
      throw new ImageError('INVALID_ARGUMENT', 'shrinking needs --shrink (data past the new end is lost)', { file: this.filename });
    }
    const old = this.size;
    await this.file.truncate(size);
    if (size > old) await preallocate(this.file, old, size - old, parsePreallocation(opts.preallocation ?? 'off'));
    this.size = size;
  }

  async close(): Promise<void> {
    await this.file.close();
  }

  private checkWritable(offset: number, length: number): void {
    if (this.readOnly) throw new ImageError('READ_ONLY', 'image is open read-only', { file: this.filename });
    checkRange(this.size, offset, length, 'write');
    if (this.probed && offset < SECTOR && length > 0) {
      throw new ImageError('READ_ONLY', 'format was probed as raw: writing the first sector is refused; give -f raw to allow it', {
        file: this.filename,
      });
    }
  }
}

async function preallocate(file: HostFile, offset: number, length: number, mode: string): Promise<void> {
  if (mode === 'falloc') await file.allocate(offset, length);
  else if (mode === 'full') await file.writeZeroBytes(offset, length);
}

export const raw: ImageFormat = {
  name: 'raw',
  probe: () => false,
  open: (filename, opts) => RawImage.open(filename, opts),
  async create(filename: string, opts: CreateOptions): Promise<void> {
    if (opts.backingFile) throw new ImageError('INVALID_ARGUMENT', 'raw images cannot have a backing file', { file: filename });
    for (const k of Object.keys(opts.options)) {
      if (!raw.createOptions.some((o) => o.name === k)) {
        throw new ImageError('INVALID_ARGUMENT', `raw does not support option '${k}'`, { file: filename });
      }
    }
    const size = opts.options.size !== undefined ? parseSize(opts.options.size) : opts.size;
    const file = await HostFile.open(filename, { create: true });
    try {
      await file.truncate(size);
      await preallocate(file, 0, size, parsePreallocation(opts.options.preallocation ?? 'off'));
      await file.flush();
    } finally {
      await file.close();
    }
  },
  // Unallocated sectors count towards a raw file's size, so both figures are the virtual size.
  async measure(opts: MeasureOptions): Promise<MeasureResult> {
    const required = opts.source ? opts.source.size : Math.ceil(opts.size / SECTOR) * SECTOR;
    return { required, fullyAllocated: required };
  },
  createOptions: [
    { name: 'size', type: 'size', help: 'Virtual disk size' },
    { name: 'preallocation', type: 'string', help: 'Preallocation mode (allowed values: off, falloc, full)', default: 'off' },
  ] satisfies CreateOptionSpec[],
};
