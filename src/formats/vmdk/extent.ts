/**
 * One extent of a vmdk: a contiguous range of the virtual disk stored in one way. Every kind
 * answers `map` (what the grain holding an offset is) and reads/writes through it; image.ts
 * walks the extents, the backing chain and the locks.
 */
import { ImageError } from '../../block/errors';
import { HostFile } from '../../io/host-file';

/** What one piece of an extent holds, from `offset` (extent-relative) for `length` bytes. */
export interface Mapping {
  length: number;
  kind: 'data' | 'zero' | 'unallocated';
  /** Host byte offset of the piece, for plain (uncompressed) data. */
  hostOffset?: number;
  compressed?: boolean;
  /** Host byte offset of the grain (its marker, when compressed), for readData. */
  grainHost?: number;
}

export interface Extent {
  /** Byte offset of the extent in the virtual disk, and its length in bytes. */
  readonly start: number;
  readonly size: number;
  /** The file holding it (null for ZERO extents). */
  readonly file: HostFile | null;
  /** The extent type as the descriptor names it, or '' inside a monolithic sparse file (as qemu reports). */
  readonly type: string;
  /** Grain size in bytes; null for flat and zero extents. */
  readonly grainBytes: number | null;
  readonly compressed: boolean;
  readonly writable: boolean;
  /**
   * The piece at extent-relative `offset`, at most `length` bytes, of one kind (a run of
   * grains alike; a compressed grain is a piece of its own).
   */
  map(offset: number, length: number): Promise<Mapping>;
  /** Reads a piece `map` reported as data. */
  readData(offset: number, m: Mapping, into: Uint8Array): Promise<void>;
  /**
   * Writes `data` at extent-relative `offset` (inside one grain); `fill` supplies the rest of a
   * grain being allocated (the backing file's bytes, or zeroes).
   */
  write(offset: number, data: Uint8Array, fill: (grainOffset: number, into: Uint8Array) => Promise<void>): Promise<void>;
  /** Makes whole grains read as zeroes if the extent can say so cheaply; false when it cannot. */
  zeroGrains?(offset: number, length: number): Promise<boolean>;
  flush(): Promise<void>;
}

/** FLAT and VMFS extents: the bytes lie in the file from `fileOffset`, one to one. */
export class FlatExtent implements Extent {
  readonly grainBytes = null;
  readonly compressed = false;

  constructor(
    readonly start: number,
    readonly size: number,
    readonly file: HostFile,
    private readonly fileOffset: number,
    readonly type: string,
    readonly writable: boolean,
  ) {}

  /** Refuses an extent that does not fit in its file (a lie, or a truncated copy). */
  static async open(start: number, size: number, file: HostFile, fileOffset: number, type: string, writable: boolean): Promise<FlatExtent> {
    const fileSize = await file.size();
    if (fileOffset + size > fileSize) {
      throw new ImageError('CORRUPT', `${type} extent needs ${size} bytes from offset ${fileOffset} but the file holds ${fileSize} bytes`, {
        file: file.path,
        field: 'extent',
        value: fileSize,
      });
    }
    return new FlatExtent(start, size, file, fileOffset, type, writable);
  }

  /** Holes in the extent file read as zeroes, and say so (convert skips them). */
  async map(offset: number, length: number): Promise<Mapping> {
    const [first] = await this.file.extents(this.fileOffset + offset, length);
    return { length: first.length, kind: first.data ? 'data' : 'zero', hostOffset: this.fileOffset + offset };
  }

  readData(offset: number, _m: Mapping, into: Uint8Array): Promise<void> {
    return this.file.read(this.fileOffset + offset, into);
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.file.write(this.fileOffset + offset, data);
  }

  /** A hole punched in the file reads as zeroes (or explicit zeroes where holes are unsupported). */
  async zeroGrains(offset: number, length: number): Promise<boolean> {
    await this.file.punchHole(this.fileOffset + offset, length);
    return true;
  }

  flush(): Promise<void> {
    return this.file.flush();
  }
}

/** ZERO extents: no file, every byte reads as zero; writes are refused. */
export class ZeroExtent implements Extent {
  readonly file = null;
  readonly type = 'ZERO';
  readonly grainBytes = null;
  readonly compressed = false;
  readonly writable = false;

  constructor(
    readonly start: number,
    readonly size: number,
  ) {}

  async map(_offset: number, length: number): Promise<Mapping> {
    return { length, kind: 'zero' };
  }

  async readData(_offset: number, _m: Mapping, into: Uint8Array): Promise<void> {
    into.fill(0);
  }

  async write(): Promise<void> {
    throw new ImageError('READ_ONLY', 'ZERO extents cannot be written');
  }

  async flush(): Promise<void> {}
}
