/** The addon's small syscalls (native/sys.cc), loaded once. */
import * as path from 'node:path';

export interface NativeSys {
  fallocate(fd: number, mode: number, offset: number, length: number): void;
  /** lseek with SEEK_DATA/SEEK_HOLE; -1 when there is no data at or after offset. */
  seek(fd: number, offset: number, whence: number): number;
  /**
   * pread that never waits for the disk (RWF_NOWAIT): the bytes read (0 at end of file), or
   * -1 when the data is not all in the page cache or the file system cannot tell.
   */
  preadNoWait(fd: number, into: Uint8Array, position: number): number;
  /** A new close-on-exec descriptor for the same open file (fcntl F_DUPFD_CLOEXEC). */
  dup(fd: number): number;
  SEEK_DATA: number;
  SEEK_HOLE: number;
  FALLOC_FL_KEEP_SIZE: number;
  FALLOC_FL_PUNCH_HOLE: number;
  FALLOC_FL_ZERO_RANGE: number;
}

let cached: NativeSys | undefined;

export function nativeSys(): NativeSys {
  if (!cached) {
    const root = path.resolve(__dirname, '..', '..', '..');
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    cached = require(path.join(root, 'build', 'Release', 'img_native.node')) as NativeSys;
  }
  return cached;
}
