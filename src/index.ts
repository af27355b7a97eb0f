/**
 * img as a library: open, create, inspect, check, convert and compare disk images.
 *
 * ```ts
 * import { open, create, convert } from 'img';
 * await create('disk.qcow2', { format: 'qcow2', size: 10 << 30 });
 * const disk = await open('disk.qcow2');
 * await disk.write(0, new Uint8Array(512));
 * await disk.close();
 * await convert({ source: 'disk.qcow2', target: 'disk.raw', targetFormat: 'raw' });
 * ```
 *
 * Internal snapshots and backing chains:
 * ```ts
 * import { snapshots, overlay, rebase, commit, openChain } from 'img';
 * await snapshots.create('disk.qcow2', 'before-upgrade');
 * await snapshots.apply('disk.qcow2', 'before-upgrade');
 * await overlay('work.qcow2', { backingFile: 'disk.qcow2', backingFormat: 'qcow2' });
 * await commit({ file: 'work.qcow2' });
 * ```
 * Every failure is an `ImageError` with a stable `code`.
 */
import { ImageError } from './block/errors';
import { CheckReport, Image, ImageInfo, RepairMode, SnapshotInfo, SnapshotSelector } from './block/image';
import { backingSize, chainInfo } from './convert/chain';
import { compareDevices, CompareOptions, CompareResult } from './convert/compare';
import { convertImage, ConvertRequest } from './convert/convert';
import { createImage, openImage, OpenImageOptions } from './formats/index';
import { mapImage, MapEntry } from './cli/map';
import { chainLayers, createOverlay, OverlayRequest } from './snapshot/chain';
import { commitImage, CommitRequest } from './snapshot/commit';
import { rebaseImage, RebaseRequest } from './snapshot/rebase';
import { applySnapshot, createSnapshot, deleteSnapshot, listSnapshots, SnapshotFileOptions } from './snapshot/snapshots';

export type { BlockDevice, Extent, ExtentKind, WriteOptions, ZeroOptions } from './block/device';
export { ImageError };
export type { ErrorCode } from './block/errors';
export type { CheckReport, Image, ImageInfo, RepairMode, SnapshotInfo, SnapshotSelector, MeasureResult } from './block/image';
export type { CompareResult, ConvertRequest, MapEntry, OpenImageOptions };
export type { CommitRequest, OverlayRequest, RebaseRequest, SnapshotFileOptions };
export { FORMATS, findFormat, probeFormat } from './formats/index';
export { parseSize } from './formats/options';
/** NBD: serve any BlockDevice (`new NbdServer({ exports, … }).listen(…)`); nbd:// URIs open with `open`. */
export { NbdServer } from './nbd/server';
export type { ListenAddress, ServerOptions as NbdServerOptions } from './nbd/server';
export type { NbdExport } from './nbd/export';

/**
 * Opens an image and its backing chain. The format is probed when not given (raw last; a
 * probed raw image refuses writes to its first sector). `close()` closes the whole chain.
 */
export function open(filename: string, opts: OpenImageOptions = {}): Promise<Image> {
  return openImage(filename, opts);
}

export interface CreateRequest {
  /** Format name: 'raw', 'qcow2', … (default 'raw'). */
  format?: string;
  /** Virtual size in bytes; taken from the backing file when omitted. */
  size?: number;
  /** Format options as for `img create -o` (e.g. { cluster_size: '65536', compat: '1.1' }). */
  options?: Record<string, string>;
  backingFile?: string;
  /** Format of the backing file: required with backingFile, never probed. */
  backingFormat?: string;
  /** Do not open the backing file (by default it is opened, with its chain, as qemu-img create does). */
  unsafe?: boolean;
}

/** Creates an image file (replacing an existing file of that name). */
export async function create(filename: string, req: CreateRequest): Promise<void> {
  let size = req.size;
  const fromBacking = req.backingFile && !req.unsafe ? await backingSize(filename, req.backingFile, req.backingFormat) : undefined;
  if (size === undefined) {
    if (fromBacking === undefined) throw new ImageError('INVALID_ARGUMENT', 'create: a size is needed when there is no backing file to take it from', { file: filename });
    size = fromBacking;
  }
  await createImage(req.format ?? 'raw', filename, {
    size,
    options: req.options ?? {},
    backingFile: req.backingFile,
    backingFormat: req.backingFormat,
  });
}

/** What `img info` shows: for the image alone, or (with `backingChain`) for each layer, top first. */
export async function info(filename: string, opts: { format?: string; backingChain?: boolean } = {}): Promise<ImageInfo[]> {
  const image = await openImage(filename, { format: opts.format, readOnly: true, backingChain: !!opts.backingChain });
  try {
    return await chainInfo(image, !!opts.backingChain);
  } finally {
    await image.close();
  }
}

/** Checks an image's metadata (repairing with `repair`), as `img check` does. */
export async function check(filename: string, opts: { format?: string; repair?: RepairMode } = {}): Promise<CheckReport> {
  const image = await openImage(filename, { format: opts.format, readOnly: !opts.repair });
  try {
    if (!image.check) throw new ImageError('UNSUPPORTED', `the ${image.format} format does not support checks`, { file: filename });
    return await image.check({ repair: opts.repair });
  } finally {
    await image.close();
  }
}

/**
 * Copies an image into a new one of any format, skipping holes and zeroes; the target
 * appears under its name only when complete.
 */
export function convert(req: ConvertRequest): Promise<void> {
  return convertImage(req);
}

/** Compares two images' contents as `img compare` does. */
export async function compare(
  a: string,
  b: string,
  opts: CompareOptions & { formatA?: string; formatB?: string } = {},
): Promise<CompareResult> {
  const ia = await openImage(a, { format: opts.formatA, readOnly: true });
  try {
    const ib = await openImage(b, { format: opts.formatB, readOnly: true });
    try {
      return await compareDevices(ia, ib, opts);
    } finally {
      await ib.close();
    }
  } finally {
    await ia.close();
  }
}

/** Where an image's data lies, as `img map --output=json` lists it. */
export async function map(filename: string, opts: { format?: string } = {}): Promise<MapEntry[]> {
  const image = await openImage(filename, { format: opts.format, readOnly: true });
  try {
    return await mapImage(image);
  } finally {
    await image.close();
  }
}

/**
 * Internal snapshots of an image file (qcow2), as `img snapshot` handles them. A string names
 * a snapshot as qemu-img does: `apply` tries ids first, then names; `delete` takes names only;
 * `{ id, name }` must match every field given.
 */
export const snapshots = {
  list: (file: string, opts?: SnapshotFileOptions): Promise<SnapshotInfo[]> => listSnapshots(file, opts),
  create: (file: string, name: string, opts?: SnapshotFileOptions & { date?: Date }): Promise<SnapshotInfo> => createSnapshot(file, name, opts),
  apply: (file: string, snapshot: SnapshotSelector, opts?: SnapshotFileOptions): Promise<SnapshotInfo> => applySnapshot(file, snapshot, opts),
  delete: (file: string, snapshot: SnapshotSelector, opts?: SnapshotFileOptions): Promise<SnapshotInfo> => deleteSnapshot(file, snapshot, opts),
};
export { applySnapshot, createSnapshot, deleteSnapshot, listSnapshots };

/** An image opened with its backing chain, every layer at hand. */
export interface Chain {
  top: Image;
  /** The top image first, then its backing file, and so on (index = depth in `img map`). */
  layers: Image[];
  /** Closes every layer. */
  close(): Promise<void>;
}

/**
 * Opens an image and its whole backing chain (cycles and over-deep chains refused, each
 * backing file opened in the format its overlay names, a missing one reported as written and
 * as resolved). Layers below the top are read-only.
 */
export async function openChain(filename: string, opts: OpenImageOptions = {}): Promise<Chain> {
  const top = await openImage(filename, { ...opts, backingChain: true });
  return { top, layers: chainLayers(top), close: () => top.close() };
}

/** Creates `file` (qcow2 by default) on top of a backing file; its size is the backing file's unless given. */
export function overlay(file: string, req: OverlayRequest): Promise<void> {
  return createOverlay(file, req);
}

/** Gives an image another backing file, or none (`backingFile: ''`), keeping what it reads (unless `unsafe`). */
export function rebase(req: RebaseRequest): Promise<void> {
  return rebaseImage(req);
}

/** Writes what an image holds into its backing file (or the base named), then empties it unless `drop`. */
export function commit(req: CommitRequest): Promise<void> {
  return commitImage(req);
}

export type { BootOptions, BootResult } from './runner/boot';
/**
 * Boots an image in a VM to test it: `boot('disk.qcow2', { command: ['sh', 'test.sh'] })` runs
 * the command in the image's filesystem and resolves with `{ exitCode, output }` (exitCode 124
 * on timeout, 125 when the guest ended without a status); `{ root: true }` boots the image's
 * own root filesystem. Uses the bundled KVM runner on hardware KVM, qemu-system-x86_64 elsewhere.
 */
export { boot } from './runner/boot';

export type { DiskConfig, KvmStatus, Vm, VmConfig, VmExit } from './runner/vm';
/**
 * The bundled KVM runner itself: `startVm({ kernel, initrd, cmdline, disks: [{ kind: 'file', path }] })`
 * boots a bzImage with virtio-blk disks (host files or NBD exports) and a serial console;
 * `kvmStatus()` says whether /dev/kvm is usable and hardware-backed.
 */
export { kvmStatus, startVm } from './runner/vm';

export type { MountOptions } from './fuse/mount';
/**
 * FUSE: `mountImage({ image: 'disk.qcow2', dir: '/mnt/x' })` exports the virtual disk as
 * `/mnt/x/disk` (and its partitions as p1, p2, …); `{ fs: true }` (root) mounts the guest
 * filesystem itself. `unmount()` on the result (or `unmountDir(dir)`, which also cleans up
 * after a killed process) undoes it and flushes the image.
 */
export { MountedImage, mountImage } from './fuse/mount';
export { unmountDir } from './fuse/unmount';
