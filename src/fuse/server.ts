/**
 * A FUSE export of BlockDevices as fixed-size files in one flat directory. The kernel protocol
 * is spoken by native/fuse.cc; here each data request is carried out on its device and
 * answered. Requests arrive concurrently (one per native worker) and are served concurrently.
 */
import { constants } from 'node:os';
import { BlockDevice } from '../block/device';
import { ImageError } from '../block/errors';
import { FuseOp, nativeFuse, NativeFuseSession } from './binding';

export interface ExportedFile {
  name: string;
  device: BlockDevice;
}

export interface FuseServerOptions {
  /** Requests served at once (native worker threads). */
  workers?: number;
  /**
   * Bypass the page cache (FOPEN_DIRECT_IO). Needed for coherence whenever the files overlap
   * (a disk and its partitions) and anything may write.
   */
  directIo?: boolean;
}

const DEFAULT_WORKERS = 8;

const { EROFS, ENOSPC, EINVAL, EIO } = constants.errno;

/** The errno a failed device operation is reported with. */
function errnoOf(err: unknown): number {
  const code = (err as { code?: string }).code;
  if (code === 'READ_ONLY') return EROFS;
  if (code === 'NO_SPACE') return ENOSPC;
  if (code === 'OUT_OF_RANGE') return EINVAL;
  return EIO;
}

export class FuseServer {
  /** Settles once the kernel connection is gone (unmounted, or aborted) and no request is left. */
  readonly ended: Promise<void>;
  /** The first device error met, if any (the guest only ever sees EIO). */
  firstError: unknown;
  private readonly session: NativeFuseSession;

  /** Mounts at dir and starts serving; the mount is usable when this returns. */
  constructor(dir: string, files: ExportedFile[], opts: FuseServerOptions = {}) {
    const fuse = nativeFuse();
    const buffers = Array.from({ length: opts.workers ?? DEFAULT_WORKERS }, () => Buffer.allocUnsafeSlow(fuse.FUSE_BUFFER_SIZE));
    const readOnly = files.every((f) => f.device.readOnly);
    let fd: number;
    try {
      fd = fuse.fuseMount(dir, readOnly);
    } catch (err) {
      throw new ImageError('IO', `cannot mount FUSE at ${dir}: ${(err as Error).message}`, { cause: err });
    }
    const specs = files.map((f) => ({ name: f.name, size: f.device.size, writable: !f.device.readOnly }));
    let resolveEnd!: () => void;
    this.ended = new Promise((resolve) => (resolveEnd = resolve));
    const serve = (slot: number, op: FuseOp, file: number, offset: number, length: number): void => {
      const device = files[file].device;
      const buf = buffers[slot];
      let work: Promise<void>;
      switch (op) {
        case FuseOp.Read:
          work = device.read(offset, buf.subarray(fuse.FUSE_READ_DATA_OFFSET, fuse.FUSE_READ_DATA_OFFSET + length));
          break;
        case FuseOp.Write:
          work = device.write(offset, buf.subarray(fuse.FUSE_WRITE_DATA_OFFSET, fuse.FUSE_WRITE_DATA_OFFSET + length));
          break;
        case FuseOp.Flush:
          work = device.flush();
          break;
        case FuseOp.Zero:
          work = device.writeZeroes(offset, length);
          break;
        case FuseOp.Punch:
          work = device.writeZeroes(offset, length, { mayUnmap: true });
          break;
        default:
          work = Promise.reject(new ImageError('UNSUPPORTED', `FUSE request ${op}`));
      }
      work.then(
        () => this.session.reply(slot, 0, length),
        (err) => {
          this.firstError ??= err;
          this.session.reply(slot, errnoOf(err), 0);
        },
      );
    };
    this.session = new fuse.FuseSession(fd, specs, buffers, opts.directIo ?? true, serve, () => resolveEnd());
  }
}
