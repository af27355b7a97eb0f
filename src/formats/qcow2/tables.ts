/**
 * The two-level cluster map (qcow2.rst "Cluster mapping"): the L1 table, held in memory
 * and written entry by entry at flush, and L2 tables in a write-back cache.
 *
 * Ordering: a new or copied L2 table is only named in the on-disk L1 after the table itself
 * is on disk (flush writes the L2 cache first, then the L1 entries it snapshotted before).
 */
import { TableCache } from '../../block/cache';
import { ImageError } from '../../block/errors';
import { KeyedLock } from '../../block/lock';
import { HostFile } from '../../io/host-file';
import { be64n, setBe64 } from '../../io/bytes';
import * as C from './constants';
import { Geometry, Qcow2Header } from './header';
import { Refcounts, Release } from './refcount';

const L2_CACHE_BYTES = 32 << 20;
const MAX_L2_CACHE_TABLES = 8192;

export interface TablesHost {
  readonly file: HostFile;
  readonly header: Qcow2Header;
  readonly g: Geometry;
  readonly refcounts: Refcounts;
  /** End of the used part of the image file: metadata pointing past it is corrupt. */
  readonly end: number;
  deferRelease(r: Release): void;
  /** Runs before dirty L2 tables are written (makes refcount and data writes durable). */
  beforeL2Writeback(): Promise<void>;
}

export class Tables {
  l1: Uint8Array = new Uint8Array(0);
  private readonly l1Dirty = new Set<number>();
  readonly l2: TableCache;
  private readonly l2Locks = new KeyedLock();

  constructor(
    private readonly host: TablesHost,
    cacheBytes?: number,
  ) {
    const g = host.g;
    this.l2 = new TableCache({
      tableSize: g.clusterSize,
      capacity: cacheBytes !== undefined ? Math.floor(cacheBytes / g.clusterSize) : Math.min(MAX_L2_CACHE_TABLES, Math.max(16, Math.floor(L2_CACHE_BYTES / g.clusterSize))),
      load: (off, into) => host.file.read(off, into),
      store: (off, data) => host.file.write(off, data),
      beforeWriteback: () => host.beforeL2Writeback(),
    });
  }

  async loadL1(): Promise<void> {
    const h = this.host.header;
    this.l1 = new Uint8Array(h.l1Size * 8);
    if (h.l1Size > 0) await this.host.file.read(h.l1TableOffset, this.l1);
  }

  get l1Size(): number {
    return this.l1.byteLength / 8;
  }

  /** Guest bytes one L2 table maps. */
  get tableSpan(): number {
    return this.host.g.clusterSize * this.host.g.l2Entries;
  }

  l1Entry(i: number): bigint {
    return i < this.l1Size ? be64n(this.l1, i * 8) : 0n;
  }

  /** The L2 table for L1 index i, or null when none is allocated. Valid until the next await. */
  async l2Read(i: number): Promise<Uint8Array | null> {
    const off = this.l2Offset(i);
    return off === 0 ? null : this.l2.get(off);
  }

  /**
   * The L2 table for L1 index i, made writable: allocated when absent, copied when shared
   * with a snapshot (L1 entry without COPIED). Returns its host offset; mark it dirty after changes.
   */
  async l2Write(i: number): Promise<number> {
    if (i >= this.l1Size) throw new ImageError('OUT_OF_RANGE', `L1 index ${i} is past l1_size ${this.l1Size}`, { file: this.host.file.path });
    // Already writable: nothing to allocate, so no need to wait for the lock (an entry only
    // gains COPIED once its table is in place, and only snapshot operations, which exclude
    // writes, take it away).
    const writable = this.l2Offset(i);
    if (writable !== 0 && (this.l1Entry(i) & C.OFLAG_COPIED) !== 0n) return writable;
    const release = await this.l2Locks.acquire([i]);
    try {
      const e = this.l1Entry(i);
      const old = this.l2Offset(i);
      if (old !== 0 && (e & C.OFLAG_COPIED) !== 0n) return old;
      const copy = old !== 0 ? (await this.l2.get(old)).slice() : null;
      const [fresh] = await this.host.refcounts.allocate(1);
      const table = await this.l2.create(fresh);
      if (copy) table.set(copy);
      this.setL1(i, BigInt(fresh) | C.OFLAG_COPIED);
      // The shared table loses the active L1's reference once the new L1 entry is on disk.
      if (old !== 0) this.host.deferRelease({ cluster: old / this.host.g.clusterSize, count: 1 });
      return fresh;
    } finally {
      release();
    }
  }

  setL1(i: number, v: bigint): void {
    setBe64(this.l1, i * 8, v);
    this.l1Dirty.add(i);
  }

  /** The dirty L1 entries as they are now; flush writes exactly these after the L2 tables. */
  snapshotL1(): Map<number, bigint> {
    const snap = new Map<number, bigint>();
    for (const i of this.l1Dirty) snap.set(i, this.l1Entry(i));
    this.l1Dirty.clear();
    return snap;
  }

  async writeL1(snap: Map<number, bigint>): Promise<void> {
    const idx = [...snap.keys()].sort((a, b) => a - b);
    try {
      for (let k = 0; k < idx.length; ) {
        let j = k + 1;
        while (j < idx.length && idx[j] === idx[j - 1] + 1) j++;
        const buf = new Uint8Array((j - k) * 8);
        for (let m = k; m < j; m++) setBe64(buf, (m - k) * 8, snap.get(idx[m])!);
        await this.host.file.write(this.host.header.l1TableOffset + idx[k] * 8, buf);
        k = j;
      }
    } catch (err) {
      for (const i of idx) this.l1Dirty.add(i);
      throw err;
    }
  }

  /** Installs a new L1 table (after growth); every entry counts as written. */
  replaceL1(bytes: Uint8Array): void {
    this.l1 = bytes;
    this.l1Dirty.clear();
  }

  private l2Offset(i: number): number {
    const off = Number(this.l1Entry(i) & C.L1E_OFFSET_MASK);
    if (off === 0) return 0;
    const cs = this.host.g.clusterSize;
    if (off % cs !== 0 || off >= this.host.end) {
      throw new ImageError('CORRUPT', `L1 entry ${i} points to an L2 table at 0x${off.toString(16)}, ${off % cs ? 'not cluster-aligned' : 'past the end of the file'}`, {
        file: this.host.file.path,
        field: 'L1 entry',
        value: off,
      });
    }
    return off;
  }
}
