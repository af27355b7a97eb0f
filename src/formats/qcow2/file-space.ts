/**
 * Host-cluster bookkeeping for tools that work on the file directly (amend, check's snapshot
 * table repair): all stored refcounts in memory, clusters allocated at the end of the file,
 * and the refcounts made durable (in place when existing refcount blocks cover every change,
 * else as a new refcount structure) before any table that points at the new clusters is
 * written.
 */
import { ImageError } from '../../block/errors';
import { HostFile } from '../../io/host-file';
import { setBe32, setBe64 } from '../../io/bytes';
import { Qcow2Header } from './header';
import { RefcountArray } from './refcount-array';
import { HEADER_REFCOUNT_ORDER, HEADER_REFCOUNT_TABLE_OFFSET, NewRefcountTable, switchRefcountTable, writeRefcountStructure } from './refcount-rewrite';
import { offsetOf, StoredRefcounts } from './stored-refcounts';
import * as C from './constants';

/** In-memory counts use 32-bit cells whatever the image's width (amend may widen it). */
const WIDE_ORDER = 6;

export class FileSpace {
  private readonly changed = new Set<number>();
  private constructor(
    readonly file: HostFile,
    readonly h: Qcow2Header,
    readonly imrt: RefcountArray,
    private stored: StoredRefcounts,
    /** First cluster past everything in the file. */
    private next: number,
  ) {}

  static async load(file: HostFile, h: Qcow2Header): Promise<FileSpace> {
    const fileSize = await file.size();
    const clusters = Math.ceil(fileSize / 2 ** h.clusterBits);
    const stored = await StoredRefcounts.load(file, h, fileSize);
    const imrt = new RefcountArray(WIDE_ORDER, clusters, file.path);
    for (let k = 0; k < clusters; k++) imrt.set(k, await stored.get(k));
    return new FileSpace(file, h, imrt, stored, clusters);
  }

  get clusterSize(): number {
    return 2 ** this.h.clusterBits;
  }

  /** Allocates one cluster at the end of the file with `refcount` references; returns its offset. */
  allocate(refcount: number): number {
    const k = this.next++;
    this.imrt.set(k, refcount);
    this.changed.add(k);
    return k * this.clusterSize;
  }

  /** Records a new count for a cluster (e.g. 0 to free it). */
  setCount(cluster: number, refcount: number): void {
    this.imrt.set(cluster, refcount);
    this.changed.add(cluster);
  }

  /**
   * Makes every recorded change durable: written into the existing refcount blocks when they
   * cover all changed clusters, else by switching to a whole new refcount structure.
   */
  async commit(): Promise<void> {
    if (this.changed.size === 0) return;
    await this.file.truncate(Math.max(await this.file.size(), this.next * this.clusterSize));
    const covered = [...this.changed].every((k) => this.stored.blockOffset(k) !== 0);
    if (covered) {
      for (const k of this.changed) await this.stored.set(k, this.imrt.get(k));
      await this.stored.flush();
    } else {
      await this.rewrite(this.h.refcountOrder);
    }
    this.changed.clear();
  }

  /**
   * Replaces the refcount structure with one of 2^order-bit entries holding the current
   * counts; the old structure's clusters are counted free in it. Updates the header.
   */
  async rewrite(order: number): Promise<void> {
    const { h } = this;
    const old = this.stored.reftable;
    const cs = this.clusterSize;
    for (let c = 0; c < h.refcountTableClusters; c++) this.imrt.set(h.refcountTableOffset / cs + c, 0);
    for (const e of old) {
      const off = offsetOf(e, C.REFT_OFFSET_MASK);
      if (off !== 0) this.imrt.set(off / cs, 0);
    }
    const t = await writeRefcountStructure(this.file, h.clusterBits, order, this.imrt, this.next);
    this.next = Math.ceil((await this.file.size()) / cs);
    if (h.version === 3) await switchRefcountStructure(this.file, t, order);
    else await switchRefcountTable(this.file, t); // v2: refcount_order is always 4
    h.refcountTableOffset = t.offset;
    h.refcountTableClusters = t.clusters;
    h.refcountOrder = order;
    this.stored = await StoredRefcounts.load(this.file, h, await this.file.size());
    this.changed.clear();
  }

  /** The largest stored refcount and the first cluster holding it. */
  maxRefcount(): { cluster: number; refcount: number } {
    let best = { cluster: 0, refcount: 0 };
    for (let k = 0; k < this.imrt.length; k++) if (this.imrt.get(k) > best.refcount) best = { cluster: k, refcount: this.imrt.get(k) };
    return best;
  }
}

/**
 * Points the header at a new refcount table and sets refcount_order, in one write of the
 * header bytes 48..99 (inside the first sector), then flushes.
 */
async function switchRefcountStructure(file: HostFile, t: NewRefcountTable, order: number): Promise<void> {
  const span = new Uint8Array(HEADER_REFCOUNT_ORDER + 4 - HEADER_REFCOUNT_TABLE_OFFSET);
  await file.read(HEADER_REFCOUNT_TABLE_OFFSET, span);
  setBe64(span, 0, t.offset);
  setBe32(span, 8, t.clusters);
  setBe32(span, HEADER_REFCOUNT_ORDER - HEADER_REFCOUNT_TABLE_OFFSET, order);
  await file.write(HEADER_REFCOUNT_TABLE_OFFSET, span);
  await file.flush();
}

/** Refuses a refcount width the stored refcounts do not fit in (qemu's wording). */
export function checkRefcountsFit(space: FileSpace, bits: number, file: string): void {
  const max = bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** bits - 1;
  const { cluster, refcount } = space.maxRefcount();
  if (refcount > max) {
    throw new ImageError(
      'INVALID_ARGUMENT',
      `Cannot decrease refcount entry width to ${bits} bits: Cluster at offset 0x${(cluster * space.clusterSize).toString(16)} has a refcount of ${refcount}`,
      { file, field: 'refcount_bits', value: bits },
    );
  }
}
