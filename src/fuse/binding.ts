/** The addon's FUSE server (native/fuse.cc): typed access to what it exports. */
import { nativeSys } from '../io/native';

export interface FuseFileSpec {
  name: string;
  size: number;
  writable: boolean;
}

/** The data requests native/fuse.cc hands to JS (its JsOp enum). */
export const enum FuseOp {
  Read = 1,
  Write = 2,
  Flush = 3,
  Zero = 4,
  Punch = 5,
}

export interface NativeFuseSession {
  /** Answers the request of `slot`: 0 or a positive errno, and the bytes read or written. */
  reply(slot: number, errno: number, length: number): void;
}

export interface NativeFuse {
  /** Mounts an empty FUSE filesystem at dir (mount(2) as root, fusermount3 otherwise); the fuse fd. */
  fuseMount(dir: string, readOnly: boolean): number;
  FuseSession: new (
    fd: number,
    files: FuseFileSpec[],
    buffers: Buffer[],
    directIo: boolean,
    onRequest: (slot: number, op: FuseOp, file: number, offset: number, length: number) => void,
    onEnd: () => void,
  ) => NativeFuseSession;
  /** Each slot's buffer holds one request, the largest a WRITE of 1 MiB. */
  FUSE_BUFFER_SIZE: number;
  /** Where a READ's data goes in the slot buffer (after the reply header). */
  FUSE_READ_DATA_OFFSET: number;
  /** Where a WRITE's data lies in the slot buffer (after the request headers). */
  FUSE_WRITE_DATA_OFFSET: number;
}

export function nativeFuse(): NativeFuse {
  return nativeSys() as unknown as NativeFuse;
}
