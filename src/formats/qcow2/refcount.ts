/**
 * Refcounts (qcow2.rst "Reference counts"): the refcount table and its blocks, cluster and
 * byte allocation, and growth of the table.
 *
 * Refcount blocks live in a write-back cache. The image writes them (writeBack) and syncs
 * before any L2 table, L1 entry or header field that may point at a newly allocated cluster
 * reaches the disk (core.ts sync), so the on-disk order is data, refcounts, then tables.
 * An increment that reaches the disk early only leaks a cluster after a crash. Decrements come
 * in through release(), which the image calls only after the references are gone from disk.
 */
import { TableCache } from '../../block/cache';
import { ImageError } from '../../block/errors';
import { Mutex } from '../../block/lock';
import { HostFile } from '../../io/host-file';
import { be16, be32, be64, be64n, divCeil, setBe16, setBe32, setBe64 } from '../../io/bytes';
import * as C from './constants';
import { Geometry, Qcow2Header } from './header';

/** Byte offset of refcount_table_offset in the header; refcount_table_clusters follows at 56. */
const HDR_REFCOUNT_TABLE_OFFSET = 48;
const REFCOUNT_CACHE_BYTES = 4 << 20;
const MAX_ALLOCATION_ATTEMPTS = 1000;

export interface Release {
  /** First host cluster index and how many clusters, each losing one reference. */
  cluster: number;
  count: number;
}

export class Refcounts {
  private table: number[] = [];
  private readonly cache: TableCache;
  readonly mutex = new Mutex();
  private freeHint = 0;
  /** Where the next compressed cluster may start (inside a cluster we hold a reference to), or 0. */
  private freeByte = 0;
  private readonly max: number;
  /** Refcount writes not yet made durable (the image syncs before L2/L1 writeback). */
  unsynced = false;

  constructor(
    private readonly file: HostFile,
    private readonly h: Qcow2Header,
    private readonly g: Geometry,
    /** End of the used part of the image file, raised by every allocation. */
    private readonly raiseEnd: (bytes: number) => void,
    cacheBytes?: number,
  ) {
    this.max = g.refcountBits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** g.refcountBits - 1;
    this.cache = new TableCache({
      tableSize: g.clusterSize,
      capacity: cacheBytes !== undefined ? Math.floor(cacheBytes / g.clusterSize) : Math.max(4, Math.floor(REFCOUNT_CACHE_BYTES / g.clusterSize)),
      load: (off, into) => this.file.read(off, into),
      store: async (off, data) => {
        this.unsynced = true;
        await this.file.write(off, data);
      },
    });
  }

  async load(fileSize: number): Promise<void> {
    const bytes = new Uint8Array(this.h.refcountTableClusters * this.g.clusterSize);
    await this.file.read(this.h.refcountTableOffset, bytes);
    this.table = [];
    for (let i = 0; i < bytes.byteLength / 8; i++) {
      const off = Number(be64n(bytes, i * 8) & C.REFT_OFFSET_MASK);
      if (off % this.g.clusterSize !== 0 || off >= fileSize) {
        if (off !== 0) throw this.corrupt(`refcount table entry ${i} (0x${off.toString(16)}) is unaligned or past the end of the file`);
      }
      this.table.push(off);
    }
  }

  /** Refcount blocks changed in memory and not written yet. */
  get dirty(): boolean {
    return this.cache.hasDirty;
  }

  /** Writes every changed refcount block (not synced: that is the image's business). */
  writeBack(): Promise<void> {
    return this.cache.flush();
  }

  /** The refcount of a host cluster (0 for clusters no block covers). */
  async get(cluster: number): Promise<number> {
    const b = Math.floor(cluster / this.g.refcountBlockEntries);
    if (b >= this.table.length || this.table[b] === 0) return 0;
    const block = await this.cache.get(this.table[b]);
    return this.entryAt(block, cluster % this.g.refcountBlockEntries);
  }

  /** Allocates `n` clusters with refcount 1, the first free ones (mostly contiguous); returns their host offsets in order. */
  allocate(n: number): Promise<number[]> {
    return this.mutex.run(() => this.allocateLocked(n, false));
  }

  /** Allocates `n` contiguous clusters (for tables); returns the host offset of the first. */
  async allocateContiguous(n: number): Promise<number> {
    return (await this.mutex.run(() => this.allocateLocked(n, true)))[0];
  }

  /**
   * Finds room for `length` bytes of compressed data, packing descriptors one after another
   * as qemu does; each host cluster the bytes touch gains one reference.
   */
  allocateBytes(length: number): Promise<number> {
    return this.mutex.run(async () => {
      const cs = this.g.clusterSize;
      const at = this.freeByte;
      if (at % cs !== 0) {
        const cluster = Math.floor(at / cs);
        const spill = at + length - (cluster + 1) * cs; // bytes that run into the next cluster
        if ((await this.get(cluster)) < this.max) {
          if (spill <= 0) {
            await this.update([{ cluster, count: 1 }], 1);
            this.freeByte = at + length;
            return at;
          }
          if (spill <= cs && (await this.isFreeCovered(cluster + 1))) {
            await this.update([{ cluster, count: 2 }], 1);
            this.freeByte = at + length;
            this.raiseEnd((cluster + 2) * cs);
            return at;
          }
        }
      }
      const [start] = await this.allocateLocked(divCeil(length, cs), true);
      this.freeByte = start + length;
      return start;
    });
  }

  /** Drops one reference from every cluster listed; freed clusters become allocatable. */
  release(list: Release[]): Promise<void> {
    return this.mutex.run(async () => {
      this.freeByte = 0; // the cluster it points into may be among the freed ones
      await this.update(list, -1);
    });
  }

  /**
   * Adds one reference to every cluster listed (internal snapshots share clusters); the
   * caller checks beforehand that no count overflows.
   */
  retain(list: Release[]): Promise<void> {
    return this.mutex.run(() => this.update(list, 1));
  }

  /** The largest refcount this image's refcount width can hold. */
  get maxRefcount(): number {
    return this.max;
  }

  /**
   * The refcounts of every cluster refcount block `b` covers, decoded at once (all 0 when no
   * block is there): for walks over many clusters, where get() per cluster costs too much.
   */
  async blockCounts(b: number): Promise<Float64Array> {
    const out = new Float64Array(this.g.refcountBlockEntries);
    if (b >= this.table.length || this.table[b] === 0) return out;
    const block = await this.cache.get(this.table[b]);
    const order = this.h.refcountOrder;
    const v = new DataView(block.buffer, block.byteOffset, block.byteLength);
    if (order === 4) for (let i = 0; i < out.length; i++) out[i] = v.getUint16(i * 2);
    else if (order === 5) for (let i = 0; i < out.length; i++) out[i] = v.getUint32(i * 4);
    else if (order === 3) out.set(block);
    else for (let i = 0; i < out.length; i++) out[i] = this.entryAt(block, i);
    return out;
  }

  private async isFreeCovered(cluster: number): Promise<boolean> {
    const b = Math.floor(cluster / this.g.refcountBlockEntries);
    return b < this.table.length && this.table[b] !== 0 && (await this.get(cluster)) === 0;
  }

  private async allocateLocked(n: number, contiguous: boolean): Promise<number[]> {
    const E = this.g.refcountBlockEntries;
    for (let attempt = 0; ; attempt++) {
      // New refcount blocks land inside the free space, so a contiguous run longer than a
      // block's range may never appear in fresh space: give up instead of looping forever.
      if (attempt > MAX_ALLOCATION_ATTEMPTS) {
        throw new ImageError('UNSUPPORTED', `cannot find ${n} contiguous free clusters for a table (refcount blocks are in the way)`, { file: this.file.path });
      }
      // The first n free clusters from the hint (clusters no block covers are free).
      const found: number[] = [];
      for (let i = this.freeHint; found.length < n; ) {
        const b = Math.floor(i / E);
        if (b >= this.table.length || this.table[b] === 0) {
          for (const stop = Math.min((b + 1) * E, i + n - found.length); i < stop; i++) found.push(i);
          continue;
        }
        const block = await this.cache.get(this.table[b]);
        for (const stop = (b + 1) * E; i < stop && found.length < n; i++) {
          if (this.entryAt(block, i % E) === 0) found.push(i);
          else if (contiguous) found.length = 0;
        }
      }
      // Every block the clusters need must exist; creating one takes a cluster, so look again.
      let grew = false;
      for (let k = 0; k < found.length && !grew; k++) {
        const b = Math.floor(found[k] / E);
        if (k > 0 && b === Math.floor(found[k - 1] / E)) continue;
        if (b >= this.table.length) await this.growTable(b + 1);
        else if (this.table[b] === 0) await this.createBlock(b);
        else continue;
        grew = true;
      }
      if (grew) continue;
      const runs: Release[] = [];
      for (const c of found) {
        const last = runs[runs.length - 1];
        if (last && last.cluster + last.count === c) last.count++;
        else runs.push({ cluster: c, count: 1 });
      }
      await this.update(runs, 1);
      if (found[0] === this.freeHint || !contiguous) this.freeHint = found[found.length - 1] + 1;
      this.raiseEnd((found[found.length - 1] + 1) * this.g.clusterSize);
      return found.map((c) => c * this.g.clusterSize);
    }
  }

  /** Adds `delta` to each listed cluster's refcount, in the cached blocks (marked dirty). */
  private async update(list: Release[], delta: 1 | -1): Promise<void> {
    const E = this.g.refcountBlockEntries;
    for (const { cluster, count } of list) {
      for (let c = cluster; c < cluster + count; ) {
        const b = Math.floor(c / E);
        const off = b < this.table.length ? this.table[b] : 0;
        if (off === 0) throw this.corrupt(`host cluster ${c} has no refcount block`);
        const block = await this.cache.get(off);
        const stop = Math.min(cluster + count, (b + 1) * E);
        for (; c < stop; c++) {
          const idx = c % E;
          const v = this.entryAt(block, idx) + delta;
          if (v < 0) throw this.corrupt(`refcount of host cluster ${c} would drop below zero`);
          if (v > this.max) {
            throw new ImageError('UNSUPPORTED', `refcount of host cluster ${c} would exceed ${this.max} (refcount_bits ${this.g.refcountBits})`, { file: this.file.path });
          }
          setRefcountEntry(this.h.refcountOrder, block, idx, v);
          if (v === 0 && c < this.freeHint) this.freeHint = c;
        }
        this.cache.markDirty(off);
      }
    }
  }

  /** A new refcount block for table entry b, placed at the first cluster it covers (all free). */
  private async createBlock(b: number): Promise<void> {
    if (b === 0) throw this.corrupt('refcount table entry 0 is empty (the header cluster has no refcount)');
    const cs = this.g.clusterSize;
    const at = b * this.g.refcountBlockEntries * cs;
    // Written at once, outside the cache: the refcount table entry below names it.
    const block = new Uint8Array(cs);
    setRefcountEntry(this.h.refcountOrder, block, 0, 1); // it describes itself
    await this.file.write(at, block);
    this.raiseEnd(at + cs);
    const e = new Uint8Array(8);
    setBe64(e, 0, at);
    await this.file.write(this.h.refcountTableOffset + b * 8, e);
    this.table[b] = at;
    this.unsynced = true;
  }

  /**
   * Grows the table to at least `entries` entries: new blocks and the new table go at the end
   * of the covered range, describing themselves; then the header switches to the new table
   * and the old one is freed.
   */
  private async growTable(entries: number): Promise<void> {
    const cs = this.g.clusterSize;
    const E = this.g.refcountBlockEntries;
    const oldN = this.table.length;
    const s = oldN * E; // first cluster no block covers
    let newN = Math.max(entries, oldN * 2);
    let K = 1;
    let T = 0;
    for (;;) {
      T = divCeil(newN * 8, cs);
      const k = divCeil(K + T, E);
      const n = Math.max(newN, oldN + k);
      if (k === K && n === newN) break;
      K = Math.max(K, k);
      newN = n;
    }
    if (T * cs > C.MAX_REFTABLE_BYTES) {
      throw new ImageError('UNSUPPORTED', `image would need a refcount table larger than ${C.MAX_REFTABLE_BYTES} bytes`, { file: this.file.path });
    }
    const areaClusters = K + T;
    const newTable = [...this.table, ...new Array<number>(T * (cs / 8) - oldN).fill(0)];
    for (let j = 0; j < K; j++) {
      const at = (s + j * E) * cs;
      const block = new Uint8Array(cs);
      const covered = Math.min(E, areaClusters - j * E);
      for (let i = 0; i < covered; i++) setRefcountEntry(this.h.refcountOrder, block, i, 1);
      await this.file.write(at, block);
      newTable[oldN + j] = at;
    }
    const tableAt = (s + K) * cs;
    const bytes = new Uint8Array(T * cs);
    newTable.forEach((off, i) => setBe64(bytes, i * 8, off));
    await this.file.write(tableAt, bytes);
    this.raiseEnd(tableAt + T * cs);
    await this.file.flush();
    const hdr = new Uint8Array(12);
    setBe64(hdr, 0, tableAt);
    setBe32(hdr, 8, T);
    await this.file.write(HDR_REFCOUNT_TABLE_OFFSET, hdr);
    await this.file.flush();
    const old = { cluster: this.h.refcountTableOffset / cs, count: this.h.refcountTableClusters };
    this.h.refcountTableOffset = tableAt;
    this.h.refcountTableClusters = T;
    this.table = newTable;
    await this.update([old], -1);
  }

  private entryAt(block: Uint8Array, i: number): number {
    try {
      return refcountEntry(this.h.refcountOrder, block, i);
    } catch {
      throw this.corrupt('a 64-bit refcount is larger than 2^53');
    }
  }

  private corrupt(msg: string): ImageError {
    return new ImageError('CORRUPT', msg, { file: this.file.path, field: 'refcount' });
  }
}

/** Refcount entry `i` of a block; widths below a byte are packed from the low bits up. */
export function refcountEntry(order: number, block: Uint8Array, i: number): number {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const bits = 1 << order;
      const per = 8 >> order;
      return (block[Math.floor(i / per)] >> ((i % per) * bits)) & ((1 << bits) - 1);
    }
    case 3:
      return block[i];
    case 4:
      return be16(block, i * 2);
    case 5:
      return be32(block, i * 4);
    default:
      return be64(block, i * 8);
  }
}

/** Sets entry `i` of a block. */
export function setRefcountEntry(order: number, block: Uint8Array, i: number, v: number): void {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const bits = 1 << order;
      const per = 8 >> order;
      const byte = Math.floor(i / per);
      const shift = (i % per) * bits;
      const mask = ((1 << bits) - 1) << shift;
      block[byte] = (block[byte] & ~mask) | ((v << shift) & mask);
      return;
    }
    case 3:
      block[i] = v;
      return;
    case 4:
      setBe16(block, i * 2, v);
      return;
    case 5:
      setBe32(block, i * 4, v);
      return;
    default:
      setBe64(block, i * 8, v);
  }
}
