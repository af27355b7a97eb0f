/**
 * Qcow2Image: the `Image` a qcow2 file opens as. Opening validates the header, opens the
 * data file and backing image, repairs a dirty lazy-refcounts image before writing, and
 * clears autoclear bits img does not maintain; requests go to the engine (core.ts, write.ts).
 */
import { compressorPool } from '../../block/compress';
import { BlockDevice, Extent, WriteOptions, ZeroOptions } from '../../block/device';
import { ImageError } from '../../block/errors';
import { checkRange } from '../../block/extents';
import { CheckReport, Image, ImageInfo, OpenOptions, RepairMode, SnapshotInfo, SnapshotSelector } from '../../block/image';
import { setBe64 } from '../../io/bytes';
import { HostFile } from '../../io/host-file';
import { resolveBackingName } from '../backing-name';
import { parseSize } from '../options';
import { amendQcow2File } from './amend';
import { checkQcow2File } from './check';
import * as C from './constants';
import { Qcow2Core } from './core';
import { parseHeader, Qcow2Header, readBackingName } from './header';
import { resizeQcow2 } from './resize';
import { SnapshotView } from './snapshot-view';
import { applySnapshot, createSnapshot, deleteSnapshot, makeEmpty } from './snapshot-ops';
import { readSnapshotTable, snapshotInfos } from './snapshot-table';
import { writeCompressed, writeData } from './write';
import { zeroRange } from './zero';

/** Byte offset of autoclear_features in a v3 header. */
const HDR_AUTOCLEAR = 88;
const MAX_HEADER_READ = 2 ** C.MAX_CLUSTER_BITS;
/** Freed clusters that may wait for a flush before img flushes by itself. */
const MAX_PENDING_RELEASES = 16384;

async function readHeader(file: HostFile): Promise<{ header: Qcow2Header; fileSize: number }> {
  const fileSize = await file.size();
  const head = new Uint8Array(Math.min(fileSize, MAX_HEADER_READ));
  await file.read(0, head);
  const header = parseHeader(head, fileSize, file.path);
  header.backingFile = readBackingName(head, header, file.path);
  return { header, fileSize };
}

export class Qcow2Image implements Image {
  readonly format = 'qcow2';

  private constructor(private engine: Qcow2Core) {}

  /** The engine (replaced when check or amend rewrote the metadata underneath). */
  get core(): Qcow2Core {
    return this.engine;
  }

  static async open(filename: string, opts: OpenOptions = {}): Promise<Qcow2Image> {
    const readOnly = !!opts.readOnly;
    const file = await HostFile.open(filename, { readOnly });
    let dataFile: HostFile | undefined;
    let backing: Image | null = null;
    try {
      let { header, fileSize } = await readHeader(file);
      if (!readOnly && (header.incompatibleFeatures & C.INCOMPAT_CORRUPT) !== 0n) {
        throw new ImageError('CORRUPT', 'image is marked corrupt: it can only be opened read-only (repair it with check -r all)', {
          file: filename,
          field: 'incompatible_features',
          value: header.incompatibleFeatures,
        });
      }
      if (!readOnly && (header.incompatibleFeatures & C.INCOMPAT_DIRTY) !== 0n) {
        // Refcounts of a dirty image (lazy_refcounts) may be stale: rebuild them before allocating.
        const report = await checkQcow2File(file, { repair: 'all' });
        if (report.corruptions > 0 || report.checkErrors > 0) {
          throw new ImageError('CORRUPT', `the dirty image could not be repaired (${report.corruptions} corruptions left): check it with check -r all`, {
            file: filename,
            field: 'incompatible_features',
          });
        }
        ({ header, fileSize } = await readHeader(file));
      }
      if (header.dataFile !== undefined) {
        dataFile = await HostFile.open(resolveBackingName(filename, header.dataFile), { readOnly });
      }
      if (header.backingFile !== undefined && opts.openBacking) {
        backing = await opts.openBacking({
          name: header.backingFile,
          resolved: resolveBackingName(filename, header.backingFile),
          format: header.backingFormat,
          from: filename,
        });
      }
      const core = new Qcow2Core(file, dataFile ?? file, header, backing, fileSize, { l2: opts.l2CacheSize, refcount: opts.refcountCacheSize });
      await core.tables.loadL1();
      await core.refcounts.load(fileSize);
      if (!readOnly) {
        if ((header.incompatibleFeatures & C.INCOMPAT_DIRTY) !== 0n) await core.writeIncompatible(header.incompatibleFeatures & ~C.INCOMPAT_DIRTY);
        // Bitmaps (and anything unknown) are not maintained by img: their autoclear bits go.
        const keep = header.autoclearFeatures & C.AUTOCLEAR_DATA_FILE_RAW;
        if (header.version === 3 && header.autoclearFeatures !== keep) {
          const b = new Uint8Array(8);
          setBe64(b, 0, keep);
          await file.write(HDR_AUTOCLEAR, b);
          await file.flush();
          header.autoclearFeatures = keep;
        }
      }
      return new Qcow2Image(core);
    } catch (err) {
      await backing?.close();
      await dataFile?.close();
      await file.close();
      throw err;
    }
  }

  get size(): number {
    return this.core.size;
  }
  get readOnly(): boolean {
    return this.core.readOnly;
  }
  /** Writable, a freed cluster may be reused for other data while a reply still refers to it. */
  get stableDataFd(): number | undefined {
    return this.core.readOnly ? this.core.dataFile.fd : undefined;
  }
  get filename(): string {
    return this.core.file.path;
  }
  get backing(): Image | null {
    return this.core.backing;
  }
  get clusterSize(): number {
    return this.core.g.clusterSize;
  }
  get header(): Readonly<Qcow2Header> {
    return this.core.header;
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRange(this.size, offset, into.byteLength, 'read');
    if (into.byteLength === 0) return;
    await this.core.gate.shared(async () => this.core.readPieces(await this.core.mapRange(offset, into.byteLength), into, offset));
  }

  async write(offset: number, data: Uint8Array, opts?: WriteOptions): Promise<void> {
    await this.beforeWrite(offset, data.byteLength);
    if (data.byteLength > 0) await this.core.gate.shared(() => writeData(this.core, offset, data));
    await this.afterWrite(opts?.fua);
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    await this.beforeWrite(offset, length);
    if (length > 0) await this.core.gate.shared(() => zeroRange(this.core, offset, length, opts?.mayUnmap ? 'unmap' : 'zeroes'));
    await this.afterWrite(opts?.fua);
  }

  /** Whole clusters in the range stop holding data and read as zeroes (partial clusters are kept). */
  async discard(offset: number, length: number): Promise<void> {
    await this.beforeWrite(offset, length);
    if (length > 0) await this.core.gate.shared(() => zeroRange(this.core, offset, length, 'discard'));
    await this.afterWrite(false);
  }

  async writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    await this.beforeWrite(offset, data.byteLength);
    if (data.byteLength > 0) await this.core.gate.shared(() => writeCompressed(this.core, compressorPool(), offset, data));
    await this.afterWrite(false);
  }

  flush(): Promise<void> {
    return this.core.flush();
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(this.size, offset, length, 'block status');
    return this.core.gate.shared(() => this.core.blockStatus(offset, length));
  }

  /** A read-only view of an internal snapshot's disk (convert -l). */
  openSnapshot(snapshot: SnapshotSelector): Promise<BlockDevice> {
    return SnapshotView.open(this.core, snapshot);
  }

  /** The table as stored (parsed with every length checked; the snapshots' L1 tables are checked only by what uses them). */
  async listSnapshots(): Promise<SnapshotInfo[]> {
    const { file, header } = this.core;
    if (header.nbSnapshots === 0) return [];
    return snapshotInfos((await readSnapshotTable(file, header, await file.size())).entries);
  }

  async createSnapshot(name: string, opts: { date?: Date } = {}): Promise<SnapshotInfo> {
    return snapshotInfos([await this.metadataOp((core) => createSnapshot(core, { name, date: opts.date }))])[0];
  }

  async applySnapshot(snapshot: SnapshotSelector): Promise<SnapshotInfo> {
    return snapshotInfos([await this.metadataOp((core) => applySnapshot(core, snapshot))])[0];
  }

  async deleteSnapshot(snapshot: SnapshotSelector): Promise<SnapshotInfo> {
    return snapshotInfos([await this.metadataOp((core) => deleteSnapshot(core, snapshot))])[0];
  }

  makeEmpty(): Promise<void> {
    return this.metadataOp(makeEmpty);
  }

  async info(): Promise<ImageInfo> {
    const h = this.core.header;
    const v3 = h.version === 3;
    const data: Record<string, unknown> = {
      compat: v3 ? '1.1' : '0.10',
      compressionType: h.compressionType === C.COMPRESSION_ZSTD ? 'zstd' : 'zlib',
    };
    if (v3) data.lazyRefcounts = (h.compatibleFeatures & C.COMPAT_LAZY_REFCOUNTS) !== 0n;
    data.refcountBits = this.core.g.refcountBits;
    if (h.dataFile !== undefined) {
      data.dataFile = h.dataFile;
      data.dataFileRaw = (h.autoclearFeatures & C.AUTOCLEAR_DATA_FILE_RAW) !== 0n;
    }
    if (v3) {
      data.corrupt = (h.incompatibleFeatures & C.INCOMPAT_CORRUPT) !== 0n;
      data.extendedL2 = this.core.g.extendedL2;
    }
    const info: ImageInfo = {
      filename: this.filename,
      format: 'qcow2',
      virtualSize: this.size,
      actualSize: await this.core.file.allocatedSize(),
      dirtyFlag: (h.incompatibleFeatures & C.INCOMPAT_DIRTY) !== 0n,
      clusterSize: this.clusterSize,
      formatSpecific: { type: 'qcow2', data },
    };
    if (h.backingFile !== undefined) {
      info.backingFilename = h.backingFile;
      info.fullBackingFilename = resolveBackingName(this.filename, h.backingFile);
      if (h.backingFormat !== undefined) info.backingFilenameFormat = h.backingFormat;
    }
    if (h.nbSnapshots > 0) {
      const table = await readSnapshotTable(this.core.file, h, await this.core.file.size());
      info.snapshots = snapshotInfos(table.entries);
    }
    return info;
  }

  /** Flushes, checks (and repairs) the file as `qemu-img check` does, then reloads the metadata. */
  async check(opts: { repair?: RepairMode } = {}): Promise<CheckReport> {
    if (opts.repair && this.readOnly) throw new ImageError('READ_ONLY', 'image is open read-only: it cannot be repaired', { file: this.filename });
    await this.flush();
    return this.core.gate.exclusive(async () => {
      const report = await checkQcow2File(this.core.file, opts);
      if (opts.repair) await this.reload();
      return report;
    });
  }

  async resize(size: number, opts: { shrink?: boolean; preallocation?: string } = {}): Promise<void> {
    if (this.readOnly) throw new ImageError('READ_ONLY', 'image is open read-only', { file: this.filename });
    await resizeQcow2(this.core, size, opts);
  }

  async close(): Promise<void> {
    try {
      if (!this.readOnly) await this.flush();
    } finally {
      await this.core.file.close();
      if (this.core.hasDataFile) await this.core.dataFile.close();
      await this.core.backing?.close();
    }
  }

  /**
   * Applies `-o` amendments (amend.ts works on the file; `size` resizes through the engine,
   * after the other changes, as qemu orders them), then re-reads the metadata.
   */
  async amend(options: Record<string, string>): Promise<void> {
    if (this.readOnly) throw new ImageError('READ_ONLY', 'image is open read-only', { file: this.filename });
    const { size, ...rest } = options;
    if (Object.keys(rest).length > 0) {
      await this.flush();
      await this.core.gate.exclusive(async () => {
        await amendQcow2File(this.core.file, rest);
        await this.reload();
      });
    }
    if (size !== undefined) await this.resize(parseSize(size), { shrink: true });
  }

  /**
   * Runs a whole-image metadata operation (snapshot-ops.ts) with every request drained and
   * everything flushed, then starts a fresh engine whether it succeeded or not: the
   * operation leaves the old engine's caches behind.
   */
  private async metadataOp<T>(fn: (core: Qcow2Core) => Promise<T>): Promise<T> {
    if (this.readOnly) throw new ImageError('READ_ONLY', 'image is open read-only', { file: this.filename });
    for (;;) {
      await this.flush();
      const done = await this.core.gate.exclusive(async () => {
        // A write that slipped in after the flush left releases only a flush applies: go round again.
        if (this.core.pendingReleases > 0) return undefined;
        try {
          return { value: await fn(this.core) };
        } finally {
          // Refcount changes the operation left in the cache (it ends with releases) go first.
          try {
            await this.core.sync();
          } finally {
            await this.reload();
          }
        }
      });
      if (done) return done.value;
    }
  }

  /** Starts a fresh engine on the same files after the metadata was rewritten underneath. */
  private async reload(): Promise<void> {
    const { header, fileSize } = await readHeader(this.core.file);
    let dataFile = this.core.dataFile;
    if (header.dataFile !== undefined && header.dataFile !== this.core.header.dataFile) {
      // amend renamed the external data file: switch to the file it now names.
      dataFile = await HostFile.open(resolveBackingName(this.filename, header.dataFile), { readOnly: this.readOnly });
      if (this.core.hasDataFile) await this.core.dataFile.close();
    }
    const core = new Qcow2Core(this.core.file, dataFile, header, this.core.backing, fileSize, this.core.caches);
    await core.tables.loadL1();
    await core.refcounts.load(fileSize);
    this.engine = core;
  }

  /**
   * Flushes for FUA, and when many freed clusters wait for the next flush (they are only
   * reusable after it), so a long session without flushes does not grow the file without end.
   */
  private async afterWrite(fua: boolean | undefined): Promise<void> {
    if (fua || this.core.pendingReleases > MAX_PENDING_RELEASES) await this.flush();
  }

  private async beforeWrite(offset: number, length: number): Promise<void> {
    if (this.readOnly) throw new ImageError('READ_ONLY', 'image is open read-only', { file: this.filename });
    checkRange(this.size, offset, length, 'write');
    await this.core.beforeWrite();
  }
}
