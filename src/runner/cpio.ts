/**
 * A writer for the cpio "newc" format, the one the Linux kernel unpacks as an initramfs
 * (Documentation/driver-api/early-userspace/buffer-format.rst): per entry a 110-byte ASCII
 * header of 8-digit hex fields, the NUL-terminated name, padding to 4 bytes, the data,
 * padding to 4 bytes; the archive ends with the entry "TRAILER!!!".
 */
import { ImageError } from '../block/errors';

const MAGIC = '070701';
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

export class CpioWriter {
  private readonly parts: Buffer[] = [];
  private readonly names = new Set<string>();
  private ino = 1;
  private length = 0;

  /** A directory; parents must be added first (the kernel does not create them). */
  dir(path: string, mode = 0o755): this {
    return this.entry(path, S_IFDIR | mode, new Uint8Array(0));
  }

  file(path: string, data: Uint8Array, mode = 0o644): this {
    return this.entry(path, S_IFREG | mode, data);
  }

  symlink(path: string, target: string): this {
    return this.entry(path, S_IFLNK | 0o777, Buffer.from(target));
  }

  node(path: string, kind: 'c' | 'b', major: number, minor: number, mode = 0o600): this {
    return this.entry(path, (kind === 'c' ? S_IFCHR : S_IFBLK) | mode, new Uint8Array(0), major, minor);
  }

  /** Every parent directory of `path` not added yet, outermost first. */
  parents(path: string, mode = 0o755): this {
    const parts = checkPath(path).split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = parts.slice(0, i).join('/');
      if (!this.names.has(dir)) this.dir(dir, mode);
    }
    return this;
  }

  /** The archive, terminated by the trailer entry. The writer cannot be used afterwards. */
  finish(): Buffer {
    this.header('TRAILER!!!', 0, 0, 0, 0, 0);
    const out = Buffer.concat(this.parts, this.length);
    this.parts.length = 0;
    return out;
  }

  private entry(path: string, mode: number, data: Uint8Array, rdevMajor = 0, rdevMinor = 0): this {
    checkPath(path);
    if (this.names.has(path)) throw new ImageError('INVALID_ARGUMENT', `cpio: ${path} added twice`);
    this.names.add(path);
    this.header(path, mode, data.length, rdevMajor, rdevMinor, (mode & S_IFDIR) === S_IFDIR ? 2 : 1);
    this.push(Buffer.from(data.buffer, data.byteOffset, data.length));
    this.pad();
    return this;
  }

  private header(name: string, mode: number, size: number, rdevMajor: number, rdevMinor: number, nlink: number): void {
    if (size > 0xffffffff) throw new ImageError('INVALID_ARGUMENT', `cpio: ${name} is larger than 4 GiB`);
    const nameBytes = Buffer.from(name + '\0');
    // c_ino c_mode c_uid c_gid c_nlink c_mtime c_filesize c_devmajor c_devminor c_rdevmajor c_rdevminor c_namesize c_check
    const fields = [this.ino++, mode, 0, 0, nlink, 0, size, 0, 0, rdevMajor, rdevMinor, nameBytes.length, 0];
    const header = MAGIC + fields.map((v) => v.toString(16).padStart(8, '0')).join('');
    this.push(Buffer.from(header, 'ascii'));
    this.push(nameBytes);
    this.pad();
  }

  private push(b: Buffer): void {
    if (b.length === 0) return;
    this.parts.push(b);
    this.length += b.length;
  }

  private pad(): void {
    const n = (4 - (this.length % 4)) % 4;
    if (n) this.push(Buffer.alloc(n));
  }
}

function checkPath(path: string): string {
  if (!path || path.startsWith('/') || path.endsWith('/') || path.split('/').some((p) => p === '' || p === '.' || p === '..')) {
    throw new ImageError('INVALID_ARGUMENT', `cpio: bad path '${path}' (relative, no '.', '..' or empty parts)`);
  }
  return path;
}
