/**
 * The refcounts stored in an image: the refcount table plus refcount blocks read on demand,
 * with a small write-back cache, for tools working on the file directly (check, repair,
 * amend). Mirrors qemu's qcow2_get_refcount: a cluster past the table or under a zero
 * table entry has refcount 0; an unaligned refcount block offset is an error.
 */
import { ImageError } from '../../block/errors';
import { be64n } from '../../io/bytes';
import { HostFile } from '../../io/host-file';
import * as C from './constants';
import { Qcow2Header } from './header';
import { getRefcountEntry, setRefcountEntry } from './refcount-array';

const REFTABLE_ENTRY_SIZE = 8;
/** Refcount blocks kept in memory at once. */
const CACHE_BLOCKS = 16;

/** Reads `into` at `offset`, zero-filling what lies past `fileSize` (as a sparse file reads). */
export async function readClamped(file: HostFile, fileSize: number, offset: number, into: Uint8Array): Promise<void> {
  if (offset >= fileSize) {
    into.fill(0);
    return;
  }
  await file.read(offset, into);
}

/** An offset field as a number; values past 2^53 (never inside a real file) saturate. */
export function offsetOf(entry: bigint, mask: bigint): number {
  const v = entry & mask;
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

/** Reads the refcount table the header points at: its raw entries, one per refcount block. */
export async function readRefcountTable(file: HostFile, h: Qcow2Header, fileSize: number): Promise<bigint[]> {
  const bytes = new Uint8Array(h.refcountTableClusters * 2 ** h.clusterBits);
  await readClamped(file, fileSize, h.refcountTableOffset, bytes);
  const out: bigint[] = new Array(bytes.byteLength / REFTABLE_ENTRY_SIZE);
  for (let i = 0; i < out.length; i++) out[i] = be64n(bytes, i * REFTABLE_ENTRY_SIZE);
  return out;
}

interface CachedBlock {
  data: Uint8Array;
  dirty: boolean;
}

export class StoredRefcounts {
  private readonly cache = new Map<number, CachedBlock>();
  private readonly clusterSize: number;
  /** Refcount entries per block. */
  private readonly perBlock: number;
  /** The table's block offsets as numbers (decoded once: lookups run per cluster). */
  private readonly offsets: number[];

  constructor(
    private readonly file: HostFile,
    private fileSize: number,
    readonly reftable: bigint[],
    clusterBits: number,
    readonly order: number,
  ) {
    this.clusterSize = 2 ** clusterBits;
    this.perBlock = 2 ** (clusterBits + 3 - order);
    this.offsets = reftable.map((e) => offsetOf(e, C.REFT_OFFSET_MASK));
  }

  static async load(file: HostFile, h: Qcow2Header, fileSize: number): Promise<StoredRefcounts> {
    return new StoredRefcounts(file, fileSize, await readRefcountTable(file, h, fileSize), h.clusterBits, h.refcountOrder);
  }

  /** The refcount block covering `cluster`, or 0 when none is allocated. Throws when unaligned. */
  blockOffset(cluster: number): number {
    const index = Math.floor(cluster / this.perBlock);
    if (index >= this.offsets.length) return 0;
    const offset = this.offsets[index];
    if (offset % this.clusterSize !== 0) {
      throw new ImageError('CORRUPT', `refcount block offset 0x${offset.toString(16)} unaligned (refcount table index ${index})`, {
        file: this.file.path,
        field: 'refcount table entry',
        value: index,
      });
    }
    return offset;
  }

  private async block(offset: number): Promise<CachedBlock> {
    let b = this.cache.get(offset);
    if (b) {
      this.cache.delete(offset);
      this.cache.set(offset, b);
      return b;
    }
    if (this.cache.size >= CACHE_BLOCKS) {
      const [oldest, old] = this.cache.entries().next().value as [number, CachedBlock];
      if (old.dirty) await this.file.write(oldest, old.data);
      this.cache.delete(oldest);
    }
    b = { data: new Uint8Array(this.clusterSize), dirty: false };
    await readClamped(this.file, this.fileSize, offset, b.data);
    this.cache.set(offset, b);
    return b;
  }

  private index(cluster: number): number {
    return cluster % this.perBlock;
  }

  /** The refcount when its block is already in memory (no I/O), else undefined. Throws when unaligned. */
  cached(cluster: number): number | undefined {
    const offset = this.blockOffset(cluster);
    if (offset === 0) return 0;
    const b = this.cache.get(offset);
    return b && getRefcountEntry(b.data, this.index(cluster), this.order);
  }

  async get(cluster: number): Promise<number> {
    const offset = this.blockOffset(cluster);
    if (offset === 0) return 0;
    return getRefcountEntry((await this.block(offset)).data, this.index(cluster), this.order);
  }

  /** Stores a refcount in an existing refcount block (callers only fix counts that are there). */
  async set(cluster: number, value: number): Promise<void> {
    const offset = this.blockOffset(cluster);
    if (offset === 0) throw new Error(`no refcount block for cluster ${cluster}`);
    const b = await this.block(offset);
    setRefcountEntry(b.data, this.index(cluster), this.order, value);
    b.dirty = true;
    if (offset + this.clusterSize > this.fileSize) this.fileSize = offset + this.clusterSize;
  }

  /** Writes dirty refcount blocks and makes them durable. */
  async flush(): Promise<void> {
    for (const [offset, b] of this.cache) {
      if (!b.dirty) continue;
      await this.file.write(offset, b.data);
      b.dirty = false;
    }
    await this.file.flush();
  }
}
