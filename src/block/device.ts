/**
 * The BlockDevice contract: every format, chain and transport meets here.
 * Offsets and lengths are bytes; JS numbers are exact up to 2^53, far past any image.
 */

/** What a range of the virtual disk holds, as seen through the whole backing chain. */
export type ExtentKind =
  | 'data' // allocated, reads return stored bytes
  | 'zero' // reads as zeroes, known to the format (zero cluster, hole in a raw file)
  | 'unallocated'; // no layer of the chain holds it: reads as zeroes

export interface Extent {
  offset: number;
  length: number;
  kind: ExtentKind;
  /** Which layer answered: 0 is the top image, 1 its backing file, …; for 'unallocated', the chain length. */
  depth: number;
  /** Where the data lies in that layer's host file, when it is a plain uncompressed mapping. */
  hostOffset?: number;
  /** The data is stored compressed (qcow2 compressed clusters, vmdk streamOptimized grains). */
  compressed?: boolean;
  /**
   * A 'zero' range that reads as zeroes only because the layer at `depth` ends before it (a
   * backing file shorter than the image above it). qemu-img map shows it one layer up, as not
   * present: the layer above has nothing there and its backing file has no bytes there.
   */
  pastBackingEnd?: boolean;
  /**
   * 'data' that lies in a hole of the host file: the format maps it, but it reads as zeroes
   * (qemu's DATA|ZERO status: a qcow2 with preallocated metadata).
   */
  readsZero?: boolean;
}

export interface WriteOptions {
  /** Force unit access: the write is durable before the promise settles. */
  fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** The device may deallocate the range instead of writing zero bytes. */
  mayUnmap?: boolean;
}

export interface BlockDevice {
  readonly size: number;
  readonly readOnly: boolean;
  read(offset: number, into: Uint8Array): Promise<void>;
  write(offset: number, data: Uint8Array, opts?: WriteOptions): Promise<void>;
  writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
  /** Extents covering [offset, offset+length) exactly, in order, adjacent ones of one kind merged. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
}
