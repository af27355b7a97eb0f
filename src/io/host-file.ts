/**
 * A host file with positional I/O: the only place img touches file descriptors for image data.
 * Reads past end-of-file return zeroes (as a sparse file would), like qemu's file driver.
 */
import * as fs from 'node:fs';
import { ImageError, fromSystemError } from '../block/errors';
import { nativeSys } from './native';
import { WriteGather } from './write-gather';

export interface HostExtent {
  offset: number;
  length: number;
  data: boolean;
}

export interface OpenFileOptions {
  readOnly?: boolean;
  /** Create the file (truncating an existing one). */
  create?: boolean;
}

function pread(fd: number, buf: Uint8Array, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.read(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n))),
  );
}

function call<T>(fn: (cb: (err: NodeJS.ErrnoException | null, v?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => fn((err, v) => (err ? reject(err) : resolve(v as T))));
}

export class HostFile {
  private closed = false;
  private readonly gather: WriteGather;

  private constructor(
    readonly path: string,
    readonly fd: number,
    readonly readOnly: boolean,
  ) {
    this.gather = new WriteGather(fd);
  }

  static async open(path: string, opts: OpenFileOptions = {}): Promise<HostFile> {
    const flags = opts.create ? 'w+' : opts.readOnly ? 'r' : 'r+';
    try {
      const fd = await call<number>((cb) => fs.open(path, flags, 0o644, cb));
      const st = await call<fs.Stats>((cb) => fs.fstat(fd, cb));
      if (st.isDirectory()) {
        fs.closeSync(fd);
        throw new ImageError('INVALID_ARGUMENT', 'is a directory', { file: path });
      }
      return new HostFile(path, fd, !!opts.readOnly);
    } catch (err) {
      throw fromSystemError(err, path);
    }
  }

  /**
   * Fills `into` from `offset`; bytes past end-of-file read as zero. What the page cache holds
   * is copied at once on this thread (a hand-off to the thread pool costs more than the copy);
   * the rest is read asynchronously.
   */
  async read(offset: number, into: Uint8Array): Promise<void> {
    let done = 0;
    try {
      const sys = nativeSys();
      while (done < into.byteLength) {
        const n = sys.preadNoWait(this.fd, done === 0 ? into : into.subarray(done), offset + done);
        if (n < 0) break;
        if (n === 0) {
          into.fill(0, done);
          return;
        }
        done += n;
      }
      while (done < into.byteLength) {
        const n = await pread(this.fd, into, done, into.byteLength - done, offset + done);
        if (n === 0) {
          into.fill(0, done);
          return;
        }
        done += n;
      }
    } catch (err) {
      throw fromSystemError(err, this.path);
    }
  }

  /** Writes `data` at `offset` (gathered with adjacent writes of the same loop iteration). */
  async write(offset: number, data: Uint8Array): Promise<void> {
    if (this.readOnly) throw new ImageError('READ_ONLY', 'file is open read-only', { file: this.path });
    if (data.byteLength === 0) return;
    try {
      await this.gather.write(offset, data);
    } catch (err) {
      throw fromSystemError(err, this.path);
    }
  }

  /** Makes every completed write durable (fdatasync). */
  async flush(): Promise<void> {
    if (this.readOnly) return;
    this.gather.submitPending();
    try {
      await call<void>((cb) => fs.fdatasync(this.fd, cb));
    } catch (err) {
      throw fromSystemError(err, this.path);
    }
  }

  async size(): Promise<number> {
    const st = await call<fs.Stats>((cb) => fs.fstat(this.fd, cb));
    return st.size;
  }

  /** Bytes the file occupies on the host file system (st_blocks × 512). */
  async allocatedSize(): Promise<number> {
    const st = await call<fs.Stats>((cb) => fs.fstat(this.fd, cb));
    return st.blocks * 512;
  }

  async truncate(length: number): Promise<void> {
    this.gather.submitPending();
    try {
      await call<void>((cb) => fs.ftruncate(this.fd, length, cb));
    } catch (err) {
      throw fromSystemError(err, this.path);
    }
  }

  /** Reserves host blocks for the range (posix_fallocate semantics), growing the file if needed. */
  async allocate(offset: number, length: number): Promise<void> {
    if (length <= 0) return;
    this.gather.submitPending();
    const sys = nativeSys();
    try {
      sys.fallocate(this.fd, 0, offset, length);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EOPNOTSUPP') throw fromSystemError(err, this.path);
      await this.writeZeroBytes(offset, length);
    }
  }

  /** Makes the range read as zeroes, deallocating it where the file system can. Keeps the size. */
  async punchHole(offset: number, length: number): Promise<void> {
    if (length <= 0) return;
    this.gather.submitPending();
    const sys = nativeSys();
    const end = Math.min(offset + length, await this.size());
    if (end <= offset) return;
    try {
      sys.fallocate(this.fd, sys.FALLOC_FL_PUNCH_HOLE | sys.FALLOC_FL_KEEP_SIZE, offset, end - offset);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EOPNOTSUPP') throw fromSystemError(err, this.path);
      await this.writeZeroBytes(offset, end - offset);
    }
  }

  /** Writes explicit zero bytes (for full preallocation, or where holes cannot be punched). */
  async writeZeroBytes(offset: number, length: number): Promise<void> {
    const chunk = new Uint8Array(Math.min(length, 4 << 20));
    for (let done = 0; done < length; ) {
      const n = Math.min(chunk.byteLength, length - done);
      await this.write(offset + done, n === chunk.byteLength ? chunk : chunk.subarray(0, n));
      done += n;
    }
  }

  /**
   * Which parts of [offset, offset+length) hold data and which are holes, from SEEK_DATA and
   * SEEK_HOLE. Past end-of-file counts as a hole. File systems without support report all data.
   */
  async extents(offset: number, length: number): Promise<HostExtent[]> {
    const sys = nativeSys();
    const out: HostExtent[] = [];
    const end = offset + length;
    const eof = await this.size();
    let pos = offset;
    const push = (o: number, l: number, data: boolean) => {
      if (l <= 0) return;
      const last = out[out.length - 1];
      if (last && last.data === data && last.offset + last.length === o) last.length += l;
      else out.push({ offset: o, length: l, data });
    };
    while (pos < end) {
      if (pos >= eof) {
        push(pos, end - pos, false);
        break;
      }
      let dataAt: number;
      try {
        dataAt = sys.seek(this.fd, pos, sys.SEEK_DATA);
      } catch {
        push(pos, Math.min(end, eof) - pos, true); // no SEEK_DATA: assume data
        pos = Math.min(end, eof);
        continue;
      }
      if (dataAt < 0 || dataAt >= end) {
        push(pos, end - pos, false);
        break;
      }
      push(pos, dataAt - pos, false);
      const holeAt = Math.min(sys.seek(this.fd, dataAt, sys.SEEK_HOLE), end);
      push(dataAt, holeAt - dataAt, true);
      pos = holeAt;
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await call<void>((cb) => fs.close(this.fd, cb));
  }
}
