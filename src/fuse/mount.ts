/**
 * `img mount`: an image exported through FUSE at a directory, in one of two forms.
 * - disk: DIR/disk is the virtual disk as a raw file, DIR/p1, DIR/p2, … its partitions.
 * - fs (root): the partition is exported in a private directory, attached to a loop device and
 *   mounted at DIR by the host kernel, so any filesystem the kernel knows works.
 * Every step is recorded in the mount's state file before the next one, so `img unmount` can
 * undo whatever a killed process left behind (see cleanup.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockDevice } from '../block/device';
import { fromSystemError, ImageError } from '../block/errors';
import { Image } from '../block/image';
import { openImage } from '../formats/index';
import { undoMount } from './cleanup';
import { isRoot, runHost } from './host';
import { filesystemDevice, partitionFiles } from './partitions';
import { ExportedFile, FuseServer } from './server';
import { MountState, removeState, stateDir, writeState } from './state';

export interface MountOptions {
  image: string;
  dir: string;
  format?: string;
  readOnly?: boolean;
  /** Mount the guest filesystem itself (root only). */
  fs?: boolean;
  /** With fs: the partition number holding it. */
  partition?: number;
}

const FUSE_DEVICE = '/dev/fuse';
const LOOP_CONTROL = '/dev/loop-control';

/** The mount point: an existing empty directory, resolved. */
function checkMountPoint(dir: string): string {
  try {
    const real = fs.realpathSync(dir);
    if (!fs.statSync(real).isDirectory()) throw new ImageError('INVALID_ARGUMENT', `mount point ${dir} is not a directory`);
    if (fs.readdirSync(real).length > 0) throw new ImageError('INVALID_ARGUMENT', `mount point ${dir} is not empty`);
    return real;
  } catch (err) {
    if (err instanceof ImageError) throw err;
    // A FUSE mount whose server died answers ENOTCONN to everything.
    if ((err as NodeJS.ErrnoException).code === 'ENOTCONN') throw new ImageError('IO', `mount point ${dir} is a dead FUSE mount: run img unmount ${dir}`);
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new ImageError('NOT_FOUND', `mount point ${dir} does not exist`);
    throw fromSystemError(err, dir);
  }
}

function checkHost(wantFs: boolean): void {
  if (!fs.existsSync(FUSE_DEVICE)) throw new ImageError('UNSUPPORTED', `no ${FUSE_DEVICE}: FUSE is not available on this host (modprobe fuse)`);
  if (!wantFs) return;
  if (!isRoot()) throw new ImageError('UNSUPPORTED', 'img mount --fs needs root: it attaches a loop device and mounts the filesystem');
  if (!fs.existsSync(LOOP_CONTROL)) throw new ImageError('UNSUPPORTED', `loop devices are unavailable (no ${LOOP_CONTROL}; modprobe loop)`);
}

export class MountedImage {
  /** The paths a user sees: the exported files, or the mount point of the filesystem. */
  readonly paths: string[];
  /** Settles once everything is undone and the image is flushed and closed. */
  readonly finished: Promise<void>;
  private unmounting?: Promise<void>;

  constructor(
    private readonly state: MountState,
    server: FuseServer,
    image: Image,
    views: BlockDevice[],
    paths: string[],
    /** What the user should know (a partition table that could not be read). */
    readonly warnings: string[],
  ) {
    this.paths = paths;
    this.finished = server.ended.then(async () => {
      for (const v of views) await v.close();
      await image.close();
      if (state.fuseDir !== state.dir) fs.rmSync(state.fuseDir, { recursive: true, force: true });
      removeState(state.dir);
      if (server.firstError) throw server.firstError;
    });
  }

  /**
   * Undoes the mount (filesystem, loop device, FUSE) and waits until the image is closed.
   * A failure (DIR busy) leaves the mount serving; calling again retries.
   */
  unmount(): Promise<void> {
    this.unmounting ??= undoMount(this.state, false).then(
      () => this.finished,
      (err) => {
        this.unmounting = undefined;
        throw err;
      },
    );
    return this.unmounting;
  }
}

export async function mountImage(opts: MountOptions): Promise<MountedImage> {
  checkHost(!!opts.fs);
  const dir = checkMountPoint(opts.dir);
  const readOnly = !!opts.readOnly;
  const image = await openImage(opts.image, { format: opts.format, readOnly });
  const views: BlockDevice[] = [];
  const warnings: string[] = [];
  let server: FuseServer | undefined;
  const state: MountState = { dir, pid: process.pid, image: path.resolve(opts.image), fuseDir: dir };
  try {
    let files: ExportedFile[];
    if (opts.fs) {
      const device = await filesystemDevice(image, opts.partition);
      if (device !== image) views.push(device);
      files = [{ name: 'disk', device }];
      fs.mkdirSync(stateDir(), { recursive: true, mode: 0o700 });
      state.fuseDir = fs.mkdtempSync(path.join(stateDir(), 'fs-'));
    } else {
      if (opts.partition !== undefined) throw new ImageError('INVALID_ARGUMENT', '-P needs --fs (the partitions are DIR/p1, DIR/p2, …)');
      // A broken partition table still leaves the disk worth exporting.
      const parts = await partitionFiles(image).catch((err) => {
        if (!(err instanceof ImageError)) throw err;
        warnings.push(`${err.message}: exporting disk only`);
        return [];
      });
      views.push(...parts.map((p) => p.device));
      files = [{ name: 'disk', device: image }, ...parts];
    }
    writeState(state);
    // A disk and its partitions overlap: no page cache, so every view sees every write.
    server = new FuseServer(state.fuseDir, files, { directIo: true });
    const mounted = new MountedImage(state, server, image, views, opts.fs ? [dir] : files.map((f) => path.join(dir, f.name)), warnings);
    if (opts.fs) await attachFilesystem(state, readOnly).catch(async (err) => {
      await mounted.unmount().catch(() => undefined);
      throw err;
    });
    return mounted;
  } catch (err) {
    if (!server) {
      for (const v of views) await v.close();
      await image.close();
      if (state.fuseDir !== dir) fs.rmSync(state.fuseDir, { recursive: true, force: true });
      removeState(dir);
    }
    throw err;
  }
}

/** --fs: loop device over the exported file, then the kernel mounts the filesystem on it. */
async function attachFilesystem(state: MountState, readOnly: boolean): Promise<void> {
  const file = path.join(state.fuseDir, 'disk');
  state.loop = await runHost('losetup', ['--find', '--show', ...(readOnly ? ['--read-only'] : []), file]);
  writeState(state);
  try {
    await runHost('mount', [...(readOnly ? ['-o', 'ro'] : []), state.loop, state.dir]);
  } catch (err) {
    throw new ImageError('UNSUPPORTED', `cannot mount the filesystem: ${(err as Error).message.replace(/^mount .*?: mount: [^:]*: /, '')}`, { cause: err });
  }
  state.fsMounted = true;
  writeState(state);
}
