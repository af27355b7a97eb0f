/**
 * What a format hands back when it opens a file: a BlockDevice plus what the commands
 * (info, check, map, resize, amend, convert) need to know of it. Capabilities a format
 * lacks are simply absent; callers test for them and report UNSUPPORTED.
 */
import { ByteSink } from '../io/sink';
import { BlockDevice } from './device';

/** Mirrors the fields of `qemu-img info --output=json`, in camelCase. */
export interface ImageInfo {
  filename: string;
  format: string;
  virtualSize: number;
  actualSize: number;
  dirtyFlag?: boolean;
  clusterSize?: number;
  backingFilename?: string;
  fullBackingFilename?: string;
  backingFilenameFormat?: string;
  formatSpecific?: { type: string; data: Record<string, unknown> };
  snapshots?: SnapshotInfo[];
}

export interface SnapshotInfo {
  id: string;
  name: string;
  vmStateSize: number;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  icount?: number;
  /** Virtual disk size when the snapshot was taken (what applying it restores). */
  diskSize?: number;
}

/**
 * An internal snapshot by id or name (a string, matched as qemu-img does: an id first, then
 * a name for apply and convert -l; only a name for delete), or by id and/or name exactly.
 */
export type SnapshotSelector = string | { id?: string; name?: string };

/** The result of a consistency check, with qemu-img check's vocabulary. */
export interface CheckReport {
  filename: string;
  format: string;
  checkErrors: number;
  corruptions: number;
  leaks: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset?: number;
  totalClusters?: number;
  allocatedClusters?: number;
  fragmentedClusters?: number;
  compressedClusters?: number;
  /** One human line per problem found, in the order found. */
  messages: string[];
}

export type RepairMode = 'leaks' | 'all';

export interface Image extends BlockDevice {
  readonly format: string;
  readonly filename: string;
  /** The image unallocated ranges read through to, already opened; null at the chain's end. */
  readonly backing: Image | null;
  /** Allocation granularity (cluster or grain size; 512 for raw files). */
  readonly clusterSize: number;
  info(): Promise<ImageInfo>;
  check?(opts?: { repair?: RepairMode }): Promise<CheckReport>;
  resize?(size: number, opts?: { shrink?: boolean; preallocation?: string }): Promise<void>;
  amend?(options: Record<string, string>): Promise<void>;
  /** Writes whole clusters compressed (convert -c); the range must be cluster-aligned. */
  writeCompressed?(offset: number, data: Uint8Array): Promise<void>;
  /** Only compressed writes are possible (vmdk streamOptimized): convert then compresses by itself. */
  readonly needsCompressedWrites?: boolean;
  /**
   * The descriptor of the host file this layer's extent `hostOffset`s point into, present only
   * while that mapping is stable: a host range never comes to hold other virtual data while the
   * image is open (a raw file; a qcow2 open read-only). Then a range looked up with blockStatus
   * may be sent from the file later without reading it first (NBD read replies use splice).
   */
  readonly stableDataFd?: number;
  /** Files besides `filename` that hold the image's data (vmdk extents): removed with a failed convert target. */
  readonly dataFiles?: readonly string[];
  /** A read-only view of an internal snapshot's disk (convert -l), by id or name. */
  openSnapshot?(snapshot: SnapshotSelector): Promise<BlockDevice>;
  /** Internal snapshots, in table order (formats that have them). */
  listSnapshots?(): Promise<SnapshotInfo[]>;
  /** Takes an internal snapshot of the disk as it is now; returns it with its new id. */
  createSnapshot?(name: string, opts?: { date?: Date }): Promise<SnapshotInfo>;
  /** Reverts the disk (and its virtual size) to an internal snapshot, which is kept. */
  applySnapshot?(snapshot: SnapshotSelector): Promise<SnapshotInfo>;
  /** Deletes an internal snapshot, freeing what only it held; returns what it was. */
  deleteSnapshot?(snapshot: SnapshotSelector): Promise<SnapshotInfo>;
  /** Drops every mapping of this layer so it reads through to its backing file (commit). */
  makeEmpty?(): Promise<void>;
}

export interface OpenBackingRequest {
  /** The backing name as written in the image. */
  name: string;
  /** The backing name resolved against the image's directory. */
  resolved: string;
  /** The format named in the image, if any: used as is, never probed. */
  format?: string;
  /** The image that names it, for error messages and cycle detection. */
  from: string;
}

export interface OpenOptions {
  readOnly?: boolean;
  /** Opens the named backing file; absent means the image is opened without its backing chain. */
  openBacking?: (req: OpenBackingRequest) => Promise<Image>;
  /**
   * The backing file to use, given by the caller, where the image does not name one by file
   * name (a VDI differencing image names its parent by UUID): opened through openBacking.
   */
  backingFile?: string;
  /** qcow2: bytes of L2 tables and of refcount blocks kept in memory (qemu's l2-cache-size, refcount-cache-size). */
  l2CacheSize?: number;
  refcountCacheSize?: number;
}

export interface CreateOptions {
  size: number;
  /** Format options as given with -o, values unparsed. */
  options: Record<string, string>;
  backingFile?: string;
  backingFormat?: string;
  /**
   * The name the image will have once complete, when it is created under a temporary one
   * (convert): formats that record file names inside the image (vmdk extents) use it.
   */
  finalName?: string;
  /** The image being converted into this one, if any (a vmdk stream names its extent after it). */
  sourceName?: string;
}

/**
 * A new image written in one pass to a sequential sink (convert to '-'): writes must come in
 * ascending order; finish() appends what ends the image.
 */
export interface StreamTarget {
  readonly size: number;
  readonly clusterSize: number;
  readonly filename: string;
  readonly needsCompressedWrites?: boolean;
  write(offset: number, data: Uint8Array): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  writeCompressed(offset: number, data: Uint8Array): Promise<void>;
  finish(): Promise<void>;
}

export interface CreateOptionSpec {
  name: string;
  type: 'size' | 'number' | 'bool' | 'string';
  help: string;
  default?: string;
}

/** What `img measure` reports: host bytes a new image of this format needs. */
export interface MeasureResult {
  /** Bytes for the image holding `source`'s allocated data (or an empty image of `size`). */
  required: number;
  /** Bytes for the image with every cluster allocated. */
  fullyAllocated: number;
  /** Bytes the source's persistent bitmaps would take, where the format stores them. */
  bitmaps?: number;
}

export interface MeasureOptions {
  /** Virtual size; the source's size when a source is given. */
  size: number;
  /** Creation options, as with -o. */
  options: Record<string, string>;
  /** The image whose data would be converted into the new one. */
  source?: BlockDevice;
}

export interface ImageFormat {
  readonly name: string;
  /** True when the first bytes of a file are this format's signature. raw never claims a file. */
  probe(head: Uint8Array): boolean;
  open(filename: string, opts: OpenOptions): Promise<Image>;
  create(filename: string, opts: CreateOptions): Promise<void>;
  readonly createOptions: CreateOptionSpec[];
  /** Starts a new image written in one pass to `sink` (formats that can be streamed to a pipe). */
  createStream?(sink: ByteSink, opts: CreateOptions): Promise<StreamTarget>;
  /** Space a new image needs (img measure). */
  measure?(opts: MeasureOptions): Promise<MeasureResult>;
  /**
   * Checks (and repairs) a file without opening it as an image, as qemu's lenient check-mode
   * open does, so images too broken to open can still be checked and repaired.
   */
  checkFile?(filename: string, opts: { repair?: RepairMode }): Promise<CheckReport>;
}
