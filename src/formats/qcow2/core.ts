/**
 * The qcow2 engine's shared state: files, header, tables, locks, and the read side
 * (guest range → pieces → bytes). Writing lives in write.ts, the Image facade in image.ts.
 *
 * Locks: every request holds `gate` shared; applying deferred refcount decrements holds it
 * exclusive, so no request still uses a cluster when it becomes reusable. A request that
 * changes L2 entries holds the guest clusters' keys in `clusterLocks` for the whole change.
 */
import { CompressionType, decompressSync } from '../../block/compress';
import { Extent } from '../../block/device';
import { ImageError } from '../../block/errors';
import { pushExtent } from '../../block/extents';
import { Image } from '../../block/image';
import { KeyedLock, Mutex, RwLock } from '../../block/lock';
import { HostFile } from '../../io/host-file';
import { setBe64 } from '../../io/bytes';
import * as C from './constants';
import { geometry, Geometry, Qcow2Header } from './header';
import { decodeCompressed, entryHex, getL2, hasZeroFlag, hostOffset, isCompressed, isCopied, L2Entry, UNALLOCATED } from './l2';
import { Refcounts, Release } from './refcount';
import { Tables, TablesHost } from './tables';

/** Byte offset of incompatible_features in a v3 header. */
const HDR_INCOMPATIBLE = 72;
const DECOMPRESSED_CACHE = 8;

export interface CacheSizes {
  l2?: number;
  refcount?: number;
}

export type PieceKind = 'data' | 'zero' | 'backing' | 'compressed';

/** A guest range with one way of reading it. */
export interface Piece {
  kind: PieceKind;
  offset: number;
  length: number;
  /** data: host byte offset of `offset`; zero and backing: the same when `mapped`. */
  host: number;
  /**
   * A zero or backing piece inside a cluster that has a host cluster (a preallocated zero
   * cluster, unallocated subclusters of an allocated one): qemu reports where it lies.
   */
  mapped?: boolean;
  /** compressed: the L2 entry and the guest offset of its cluster. */
  entry: L2Entry;
  clusterStart: number;
}

/** The host offset of a zero or unallocated piece `skip` bytes in, when it lies in a host cluster. */
function mappedAt(p: Piece, skip: number): { hostOffset?: number } {
  return p.mapped ? { hostOffset: p.host + skip } : {};
}

export class Qcow2Core implements TablesHost {
  readonly g: Geometry;
  readonly refcounts: Refcounts;
  readonly tables: Tables;
  readonly gate = new RwLock();
  readonly clusterLocks = new KeyedLock();
  private readonly flushLock = new Mutex();
  private readonly dirtyLock = new Mutex();
  private pending: Release[] = [];
  private pendingClusters = 0;
  /** Whether the metadata looks preallocated (decided once, at the first block status). */
  private preallocated?: Promise<boolean>;
  /** Decompressed clusters by descriptor (`hi:lo`). */
  private readonly decompressed = new Map<string, Uint8Array>();
  /** End of the used part of the image file (grows with allocations). */
  end: number;
  /** Data written since the last fdatasync. */
  unsynced = false;
  /** The dirty bit was set by this process (lazy refcounts) and is cleared at flush. */
  private dirtySet = false;

  constructor(
    readonly file: HostFile,
    /** Where guest data lives: the image file, or the external data file. */
    readonly dataFile: HostFile,
    readonly header: Qcow2Header,
    readonly backing: Image | null,
    fileSize: number,
    /** Cache sizes in bytes (defaults when absent). */
    readonly caches: CacheSizes = {},
  ) {
    this.g = geometry(header);
    this.end = fileSize;
    this.refcounts = new Refcounts(file, header, this.g, (b) => (this.end = Math.max(this.end, b)), caches.refcount);
    this.tables = new Tables(this, caches.l2);
  }

  get size(): number {
    return this.header.size;
  }
  get readOnly(): boolean {
    return this.file.readOnly;
  }
  get hasDataFile(): boolean {
    return this.dataFile !== this.file;
  }
  /** v3 zero flags (and extended L2 zero bits) are available. */
  get zeroFlags(): boolean {
    return this.header.version === 3;
  }
  /** The image names a backing file (whether or not it was opened). */
  get namesBacking(): boolean {
    return this.header.backingFile !== undefined;
  }
  get compression(): CompressionType {
    return this.header.compressionType === C.COMPRESSION_ZSTD ? 'zstd' : 'deflate';
  }

  deferRelease(r: Release): void {
    this.pending.push(r);
    this.pendingClusters += r.count;
  }

  /** Clusters waiting for the next flush to lose a reference. */
  get pendingReleases(): number {
    return this.pendingClusters;
  }

  async beforeL2Writeback(): Promise<void> {
    await this.syncIfNeeded();
  }

  /**
   * Makes every write so far durable, the cached refcount blocks written first: whatever is
   * written after a sync may point at any cluster allocated before it.
   */
  async sync(): Promise<void> {
    await this.refcounts.writeBack();
    this.unsynced = false;
    this.refcounts.unsynced = false;
    await this.file.flush();
    if (this.hasDataFile) await this.dataFile.flush();
  }

  async syncIfNeeded(): Promise<void> {
    if (this.unsynced || this.refcounts.unsynced || this.refcounts.dirty) await this.sync();
  }

  /** With lazy_refcounts, the dirty bit goes on disk before the first change. */
  async beforeWrite(): Promise<void> {
    if (this.dirtySet || (this.header.compatibleFeatures & C.COMPAT_LAZY_REFCOUNTS) === 0n) return;
    await this.dirtyLock.run(async () => {
      if (this.dirtySet) return;
      await this.writeIncompatible(this.header.incompatibleFeatures | C.INCOMPAT_DIRTY);
      this.dirtySet = true;
    });
  }

  async writeIncompatible(v: bigint): Promise<void> {
    const b = new Uint8Array(8);
    setBe64(b, 0, v);
    await this.file.write(HDR_INCOMPATIBLE, b);
    await this.file.flush();
    this.header.incompatibleFeatures = v;
  }

  /**
   * Makes everything durable in the safe order: data and refcounts, L2 tables, then the L1
   * entries naming them, then the deferred decrements, then the dirty bit cleared.
   */
  flush(): Promise<void> {
    if (this.readOnly) return Promise.resolve();
    return this.flushLock.run(async () => {
      const l1 = this.tables.snapshotL1();
      const releases = this.pending.splice(0);
      this.pendingClusters = 0;
      await this.tables.l2.flush();
      if (l1.size > 0) {
        await this.syncIfNeeded();
        await this.tables.writeL1(l1);
        this.unsynced = true;
      }
      if (releases.length > 0) {
        await this.sync();
        await this.gate.exclusive(async () => {
          for (const r of releases) for (let i = 0; i < r.count; i++) this.tables.l2.forget((r.cluster + i) * this.g.clusterSize);
          this.decompressed.clear();
          await this.refcounts.release(releases);
        });
      }
      // Clusters allocated but never written (preallocated metadata) must lie inside the file.
      if ((await this.file.size()) < this.end) await this.file.truncate(this.end);
      await this.sync();
      if (this.dirtySet) {
        this.dirtySet = false;
        await this.writeIncompatible(this.header.incompatibleFeatures & ~C.INCOMPAT_DIRTY);
      }
    });
  }

  // ---- mapping -------------------------------------------------------------------------

  /** How [offset, offset+length) is stored, as pieces in guest order (adjacent alike ones merged). */
  async mapRange(offset: number, length: number): Promise<Piece[]> {
    const out: Piece[] = [];
    const cs = this.g.clusterSize;
    const span = this.tables.tableSpan;
    for (let pos = offset, end = offset + length; pos < end; ) {
      const l1i = Math.floor(pos / span);
      const tEnd = Math.min(end, (l1i + 1) * span);
      const table = await this.tables.l2Read(l1i);
      if (!table) this.push(out, 'backing', pos, tEnd - pos, 0);
      else {
        for (let c = pos; c < tEnd; ) {
          const start = Math.floor(c / cs) * cs;
          const stop = Math.min(tEnd, start + cs);
          this.entryPieces(start, getL2(table, (start / cs) % this.g.l2Entries, this.g), c - start, stop - start, out);
          c = stop;
        }
      }
      pos = tEnd;
    }
    return out;
  }

  /** Pieces for bytes [a, b) of the guest cluster at `start`, mapped by entry `e`. */
  entryPieces(start: number, e: L2Entry, a: number, b: number, out: Piece[]): void {
    if (isCompressed(e)) {
      this.checkCompressed(start, e);
      out.push({ kind: 'compressed', offset: start + a, length: b - a, host: 0, entry: e, clusterStart: start });
      return;
    }
    const host = hostOffset(e);
    const allocated = this.allocated(e);
    if (allocated) this.checkHost(start, host);
    if (!this.g.extendedL2) {
      const zero = hasZeroFlag(e);
      if (zero && !this.zeroFlags) throw this.corrupt(start, e, 'has the zero flag in a version 2 image');
      if (zero) this.push(out, 'zero', start + a, b - a, allocated ? host + a : 0, allocated);
      else if (allocated) this.push(out, 'data', start + a, b - a, host + a);
      else this.push(out, 'backing', start + a, b - a, 0);
      return;
    }
    const sc = this.g.subclusterSize;
    for (let x = a; x < b; ) {
      const i = Math.floor(x / sc);
      const y = Math.min(b, (i + 1) * sc);
      const alloc = (e.alloc >>> i) & 1;
      const zero = (e.zero >>> i) & 1;
      if (alloc && zero) throw this.corrupt(start, e, `marks subcluster ${i} both allocated and zero`);
      if (alloc && !allocated) throw this.corrupt(start, e, `marks subcluster ${i} allocated without a host cluster`);
      if (alloc) this.push(out, 'data', start + x, y - x, host + x);
      else this.push(out, zero ? 'zero' : 'backing', start + x, y - x, allocated ? host + x : 0, allocated);
      x = y;
    }
  }

  /**
   * Whether a standard entry maps a host cluster. Offset 0 means unallocated, except with an
   * external data file where COPIED marks host offset 0 as real (qcow2.rst "Standard Cluster Descriptor").
   */
  allocated(e: L2Entry): boolean {
    return !isCompressed(e) && (hostOffset(e) !== 0 || (this.hasDataFile && isCopied(e)));
  }

  private push(out: Piece[], kind: PieceKind, offset: number, length: number, host: number, mapped = false): void {
    const last = out[out.length - 1];
    const hostMatters = kind === 'data' || mapped;
    if (
      last &&
      last.kind === kind &&
      last.offset + last.length === offset &&
      !!last.mapped === mapped &&
      (!hostMatters || last.host + last.length === host)
    ) {
      last.length += length;
      return;
    }
    out.push({ kind, offset, length, host, entry: UNALLOCATED, clusterStart: 0, ...(mapped ? { mapped } : {}) });
  }

  checkHost(start: number, host: number): void {
    const cs = this.g.clusterSize;
    if (host % cs !== 0) throw this.corrupt(start, host, 'points to an unaligned host offset');
    if (!this.hasDataFile && host >= this.end) throw this.corrupt(start, host, `points past the end of the file (${this.end} bytes)`);
  }

  /**
   * Before writing guest data in place: the cluster must not be the header, the L1 table or
   * the refcount table (qemu's metadata overlap check, for the tables img can name cheaply).
   */
  checkOverlap(start: number, host: number): void {
    if (this.hasDataFile) return;
    const h = this.header;
    const cs = this.g.clusterSize;
    const hits: [string, number, number][] = [
      ['the header', 0, cs],
      ['the L1 table', h.l1TableOffset, h.l1Size * 8],
      ['the refcount table', h.refcountTableOffset, h.refcountTableClusters * cs],
    ];
    for (const [what, at, bytes] of hits) {
      if (host < at + bytes && at < host + cs) throw this.corrupt(start, host, `points into ${what}`);
    }
  }

  private checkCompressed(start: number, e: L2Entry): void {
    if (this.hasDataFile) throw this.corrupt(start, e, 'is compressed, which an external data file does not allow');
    const d = decodeCompressed(e, this.g.clusterBits);
    if (d.offset === 0 || d.offset >= this.end) throw this.corrupt(start, e, `is a compressed descriptor pointing past the end of the file (${this.end} bytes)`);
  }

  /** An error about the L2 entry of guest offset `guest`: the entry, or the host offset it names. */
  corrupt(guest: number, e: L2Entry | number, what: string): ImageError {
    const hex = `0x${typeof e === 'number' ? e.toString(16) : entryHex(e)}`;
    return new ImageError('CORRUPT', `L2 entry ${hex} for guest offset ${guest} ${what}`, { file: this.file.path, field: 'L2 entry', value: hex });
  }

  /** Extents of [offset, offset+length): unallocated ranges resolved through the backing chain. */
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    const backing = this.backing;
    const preallocated = await this.metadataPreallocated();
    for (const p of await this.mapRange(offset, length)) {
      if (p.kind === 'data' && preallocated) await this.holesAsZero(p, out);
      else if (p.kind === 'data') pushExtent(out, { offset: p.offset, length: p.length, kind: 'data', depth: 0, hostOffset: p.host });
      else if (p.kind === 'compressed') pushExtent(out, { offset: p.offset, length: p.length, kind: 'data', depth: 0, compressed: true });
      else if (p.kind === 'zero') pushExtent(out, { offset: p.offset, length: p.length, kind: 'zero', depth: 0, ...mappedAt(p, 0) });
      else if (!backing) pushExtent(out, { offset: p.offset, length: p.length, kind: 'unallocated', depth: 0, ...mappedAt(p, 0) });
      else {
        const inside = Math.max(0, Math.min(p.length, backing.size - p.offset));
        if (inside > 0) for (const e of await backing.blockStatus(p.offset, inside)) pushExtent(out, { ...e, depth: e.depth + 1 });
        // Past the end of a shorter backing file the image reads zeroes.
        pushExtent(out, { offset: p.offset + inside, length: p.length - inside, kind: 'zero', depth: 1, pastBackingEnd: true, ...mappedAt(p, inside) });
      }
    }
    return out;
  }

  /**
   * A data piece's extents when the metadata is preallocated: the host file is asked where it
   * has holes. Those clusters were never written and read as zeroes, as qemu reports them.
   */
  private async holesAsZero(p: Piece, out: Extent[]): Promise<void> {
    for (const e of await this.dataFile.extents(p.host, p.length)) {
      pushExtent(out, { offset: p.offset + e.offset - p.host, length: e.length, kind: 'data', depth: 0, hostOffset: e.offset, ...(e.data ? {} : { readsZero: true }) });
    }
  }

  /**
   * qemu's test for preallocated metadata (qcow2_detect_metadata_preallocation): clusters in
   * use, counted up to the end of the file, reach max(real × 10/9, real + 2), where `real` is
   * the clusters the file system has actually allocated.
   */
  private metadataPreallocated(): Promise<boolean> {
    this.preallocated ??= (async () => {
      const cs = this.g.clusterSize;
      const real = Math.floor((await this.file.allocatedSize()) / cs);
      const threshold = Math.max(Math.floor((real * 10) / 9), real + 2);
      const end = Math.ceil((await this.file.size()) / cs);
      const per = this.g.refcountBlockEntries;
      let used = 0;
      for (let b = 0; b * per < end && used < threshold; b++) {
        const counts = await this.refcounts.blockCounts(b);
        for (let i = 0; i < per && b * per + i < end; i++) if (counts[i] !== 0) used++;
      }
      return used >= threshold;
    })();
    return this.preallocated;
  }

  // ---- reading -------------------------------------------------------------------------

  /** Fills `buf` (guest bytes from `base`) for each piece, all pieces concurrently. */
  async readPieces(pieces: Piece[], buf: Uint8Array, base: number): Promise<void> {
    await Promise.all(
      pieces.map(async (p) => {
        const into = buf.subarray(p.offset - base, p.offset - base + p.length);
        switch (p.kind) {
          case 'data':
            return this.dataFile.read(p.host, into);
          case 'zero':
            into.fill(0);
            return;
          case 'backing':
            return this.readBacking(p.offset, into);
          case 'compressed': {
            const cluster = await this.decompress(p.clusterStart, p.entry);
            into.set(cluster.subarray(p.offset - p.clusterStart, p.offset - p.clusterStart + p.length));
          }
        }
      }),
    );
  }

  async readBacking(offset: number, into: Uint8Array): Promise<void> {
    const b = this.backing;
    const inside = b ? Math.max(0, Math.min(into.byteLength, b.size - offset)) : 0;
    if (b && inside > 0) await b.read(offset, into.subarray(0, inside));
    into.fill(0, inside);
  }

  async decompress(guest: number, e: L2Entry): Promise<Uint8Array> {
    const key = `${e.hi}:${e.lo}`;
    const hit = this.decompressed.get(key);
    if (hit) return hit;
    const d = decodeCompressed(e, this.g.clusterBits);
    const src = new Uint8Array(d.length);
    await this.file.read(d.offset, src);
    let out: Uint8Array;
    try {
      out = decompressSync(this.compression, src, this.g.clusterSize);
    } catch (err) {
      throw this.corrupt(guest, e, `is a compressed cluster that does not decompress: ${(err as Error).message}`);
    }
    if (this.decompressed.size >= DECOMPRESSED_CACHE) this.decompressed.delete(this.decompressed.keys().next().value!);
    this.decompressed.set(key, out);
    return out;
  }
}
