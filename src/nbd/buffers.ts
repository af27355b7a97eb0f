/**
 * Reusable reply buffers: a READ reply's buffer goes back to the pool once the socket has
 * taken its bytes, so a stream of reads allocates (and collects) almost nothing. Buffers come
 * in power-of-two sizes; at most `capacity` bytes are kept idle.
 */
const MIN_CLASS = 4096;

export class BufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private idle = 0;

  constructor(private readonly capacity: number) {}

  /** A buffer of `length` bytes (contents undefined). */
  take(length: number): Buffer {
    const size = sizeClass(length);
    const buf = this.free.get(size)?.pop();
    if (buf) this.idle -= size;
    return (buf ?? Buffer.allocUnsafeSlow(size)).subarray(0, length);
  }

  /** Returns a buffer from take(); it must no longer be in use. */
  give(buf: Buffer): void {
    const size = sizeClass(buf.byteLength);
    if (buf.buffer.byteLength !== size || this.idle + size > this.capacity) return;
    const list = this.free.get(size) ?? [];
    list.push(Buffer.from(buf.buffer, 0, size));
    this.free.set(size, list);
    this.idle += size;
  }
}

function sizeClass(length: number): number {
  return length <= MIN_CLASS ? MIN_CLASS : 2 ** Math.ceil(Math.log2(length));
}
