/**
 * Refcount entries of any width (docs/interop/qcow2.rst, "Host cluster management"), and an
 * in-memory refcount array with one entry per host cluster (qemu's "IMRT"), used by check,
 * repair and the refcount rewrites of amend.
 */
import { ImageError } from '../../block/errors';
import { setBe16, setBe32, setBe64 } from '../../io/bytes';

/**
 * Refcount `index` of a refcount block whose entries are 2^order bits wide. Sub-byte entries
 * count from the least significant bit of each byte, as the spec says.
 */
export function getRefcountEntry(block: Uint8Array, index: number, order: number): number {
  // Byte arithmetic rather than the checked helpers: this runs once per host cluster.
  switch (order) {
    case 3:
      return block[index];
    case 4:
      return (block[index * 2] << 8) | block[index * 2 + 1];
    case 5: {
      const o = index * 4;
      return block[o] * 2 ** 24 + ((block[o + 1] << 16) | (block[o + 2] << 8) | block[o + 3]);
    }
    case 6: {
      const o = index * 8;
      const hi = block[o] * 2 ** 24 + ((block[o + 1] << 16) | (block[o + 2] << 8) | block[o + 3]);
      const lo = block[o + 4] * 2 ** 24 + ((block[o + 5] << 16) | (block[o + 6] << 8) | block[o + 7]);
      return hi >= 2 ** 21 ? Number.MAX_SAFE_INTEGER : hi * 2 ** 32 + lo;
    }
    default: {
      const bits = 1 << order;
      const bit = index * bits;
      return (block[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
    }
  }
}

export function setRefcountEntry(block: Uint8Array, index: number, order: number, value: number): void {
  switch (order) {
    case 3:
      block[index] = value;
      return;
    case 4:
      return setBe16(block, index * 2, value);
    case 5:
      return setBe32(block, index * 4, value);
    case 6:
      return setBe64(block, index * 8, value);
    default: {
      const bits = 1 << order;
      const bit = index * bits;
      const mask = ((1 << bits) - 1) << (bit & 7);
      block[bit >> 3] = (block[bit >> 3] & ~mask) | ((value << (bit & 7)) & mask);
    }
  }
}

/** Largest refcount a 2^order-bit entry holds (2^53-1 for 64-bit entries, as JS numbers go). */
export function refcountMax(order: number): number {
  return order === 6 ? Number.MAX_SAFE_INTEGER : 2 ** (1 << order) - 1;
}

/** The in-memory array is refused past this many bytes: the image is then too large to check. */
export const MAX_REFCOUNT_ARRAY_BYTES = 1 << 30;

type Store = Uint8Array | Uint16Array | Uint32Array;

/**
 * One counter per host cluster, saturating at what the image's refcount width can hold (or
 * 2^32-1 for wider entries: no real image has more references to one cluster).
 * Grows on demand; growth past MAX_REFCOUNT_ARRAY_BYTES throws a clean ImageError.
 */
export class RefcountArray {
  readonly max: number;
  private data: Store;
  private len: number;

  constructor(
    readonly order: number,
    length: number,
    private readonly file: string,
  ) {
    this.max = Math.min(refcountMax(order), 0xffffffff);
    this.data = this.alloc(length);
    this.len = length;
  }

  get length(): number {
    return this.len;
  }

  private alloc(n: number): Store {
    const bytesPer = this.order <= 3 ? 1 : this.order === 4 ? 2 : 4;
    if (n * bytesPer > MAX_REFCOUNT_ARRAY_BYTES) {
      throw new ImageError('UNSUPPORTED', `image is too large to check: ${n} clusters would need more than ${MAX_REFCOUNT_ARRAY_BYTES} bytes of refcounts`, {
        file: this.file,
      });
    }
    return bytesPer === 1 ? new Uint8Array(n) : bytesPer === 2 ? new Uint16Array(n) : new Uint32Array(n);
  }

  /** Makes room for clusters [0, n). */
  grow(n: number): void {
    if (n <= this.len) return;
    if (n > this.data.length) {
      const next = this.alloc(Math.max(n, Math.min(this.data.length * 2, n + (1 << 20))));
      next.set(this.data);
      this.data = next;
    }
    this.len = n;
  }

  get(cluster: number): number {
    return cluster < this.len ? this.data[cluster] : 0;
  }

  /** Stores a count, saturating at `max` (a typed array would silently wrap). */
  set(cluster: number, value: number): void {
    this.grow(cluster + 1);
    this.data[cluster] = Math.min(value, this.max);
  }

  /** Adds one reference; false (and no change) when the count is already at its maximum. */
  increment(cluster: number): boolean {
    this.grow(cluster + 1);
    if (this.data[cluster] >= this.max) return false;
    this.data[cluster]++;
    return true;
  }

  clear(): void {
    this.data.fill(0);
  }
}
