/**
 * VdiImage: the `Image` a VDI file opens as. Reads map each block through the block map;
 * writes to an unallocated block append a whole data block (copying the parent's bytes in a
 * differencing image), as qemu and VirtualBox do. The block map and cBlocksAllocated are
 * written on flush, after the data they point to is durable.
 */
import * as path from 'node:path';
import { backingStatus, readBacking } from '../../block/backing';
import { Extent, WriteOptions, ZeroOptions } from '../../block/device';
import { ImageError } from '../../block/errors';
import { checkRange, pushExtent } from '../../block/extents';
import { CheckReport, Image, ImageInfo, OpenOptions, RepairMode } from '../../block/image';
import { KeyedLock, Mutex } from '../../block/lock';
import { HostFile } from '../../io/host-file';
import { alignUp } from '../../io/bytes';
import { BlockMap, describeProblems, MapScan, scanBlockMap } from './block-map';
import { checkVdi } from './check';
import { allocatedField, BLOCK_FREE, BLOCK_ZERO, F, HEADER_SECTOR, isAllocated, parseHeader, SECTOR, TYPE_DIFF, TYPE_FIXED, TYPE_NAMES, VdiHeader } from './header';
import { findParent } from './parent';

/** A piece of a request inside one block. */
interface Piece {
  block: number;
  /** Offset of the piece in the virtual disk. */
  offset: number;
  /** Offset of the piece in the request's buffer. */
  at: number;
  length: number;
}

export class VdiImage implements Image {
  readonly format = 'vdi';
  readonly size: number;
  private readonly allocLock = new KeyedLock();
  private readonly flushLock = new Mutex();
  /** The block map's problems, kept only when there are some. */
  private bad: MapScan | null = null;
  private nextFree = 0;
  private allocated = 0;
  private headerDirty = false;
  private fileSize: number;

  private constructor(
    readonly file: HostFile,
    readonly header: VdiHeader,
    readonly map: BlockMap,
    readonly backing: Image | null,
    fileSize: number,
  ) {
    // 'VBoxManage convertfromraw' writes odd sizes; qemu rounds them up to a sector.
    this.size = alignUp(header.diskSize, SECTOR);
    this.fileSize = fileSize;
    this.rescan();
  }

  static async open(filename: string, opts: OpenOptions = {}): Promise<VdiImage> {
    const file = await HostFile.open(filename, { readOnly: !!opts.readOnly });
    let backing: Image | null = null;
    try {
      const fileSize = await file.size();
      const head = new Uint8Array(HEADER_SECTOR);
      await file.read(0, head);
      const header = parseHeader(head, fileSize, filename);
      const map = await BlockMap.load(file, header);
      if (header.imageType === TYPE_DIFF && opts.openBacking) {
        backing = await openParent(filename, header, opts);
      }
      return new VdiImage(file, header, map, backing, fileSize);
    } catch (err) {
      await backing?.close();
      await file.close();
      throw err;
    }
  }

  get filename(): string {
    return this.file.path;
  }
  get readOnly(): boolean {
    return this.file.readOnly;
  }
  get clusterSize(): number {
    return this.header.blockSize;
  }
  get isDiff(): boolean {
    return this.header.imageType === TYPE_DIFF;
  }

  /** Re-derives what the block map implies (after open and after a repair). */
  rescan(): void {
    const scan = scanBlockMap(this.map.entries, this.header, this.fileSize);
    this.bad = scan.problems > 0 ? scan : null;
    this.nextFree = scan.nextFree;
    this.allocated = scan.allocated;
  }

  private pieces(offset: number, length: number): Piece[] {
    const bs = this.header.blockSize;
    const out: Piece[] = [];
    for (let pos = offset; pos < offset + length; ) {
      const block = Math.floor(pos / bs);
      const n = Math.min(offset + length, (block + 1) * bs) - pos;
      out.push({ block, offset: pos, at: pos - offset, length: n });
      pos += n;
    }
    return out;
  }

  private hostOffset(entry: number, offset: number): number {
    return this.header.offsetData + entry * this.header.blockSize + (offset % this.header.blockSize);
  }

  private isBad(block: number): boolean {
    return !!this.bad && this.bad.problem[block] !== 0;
  }

  private checkBlock(block: number): void {
    if (this.bad && this.isBad(block)) {
      const entry = this.map.get(block);
      throw new ImageError('CORRUPT', `${describeProblems(this.bad, block, entry, this.header, this.fileSize)[0]} (repair with check -r all)`, {
        file: this.filename,
        field: 'block map',
        value: entry,
      });
    }
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRange(this.size, offset, into.byteLength, 'read');
    await Promise.all(
      this.pieces(offset, into.byteLength).map(async (p) => {
        this.checkBlock(p.block);
        const entry = this.map.get(p.block);
        const buf = into.subarray(p.at, p.at + p.length);
        if (isAllocated(entry)) await this.file.read(this.hostOffset(entry, p.offset), buf);
        else if (entry === BLOCK_FREE && this.isDiff) await readBacking(this.backing, p.offset, buf);
        else buf.fill(0);
      }),
    );
  }

  async write(offset: number, data: Uint8Array, opts?: WriteOptions): Promise<void> {
    this.beforeWrite(offset, data.byteLength);
    await Promise.all(this.pieces(offset, data.byteLength).map((p) => this.writePiece(p, data.subarray(p.at, p.at + p.length))));
    if (opts?.fua) await this.flush();
  }

  private async writePiece(p: Piece, data: Uint8Array): Promise<void> {
    this.checkBlock(p.block);
    const entry = this.map.get(p.block);
    if (isAllocated(entry)) return this.file.write(this.hostOffset(entry, p.offset), data);
    const release = await this.allocLock.acquire([p.block]);
    try {
      const now = this.map.get(p.block);
      if (isAllocated(now)) return await this.file.write(this.hostOffset(now, p.offset), data);
      await this.allocate(p, now, data);
    } finally {
      release();
    }
  }

  /** Appends a data block for `p.block` holding `data` and what the block read as before. */
  private async allocate(p: Piece, entry: number, data: Uint8Array): Promise<void> {
    const bs = this.header.blockSize;
    let block = data;
    if (data.byteLength !== bs) {
      if (entry === BLOCK_FREE && this.isDiff && !this.backing) {
        throw new ImageError('UNSUPPORTED', `writing part of block ${p.block} needs the parent image, which is not open`, { file: this.filename });
      }
      block = new Uint8Array(bs);
      if (entry === BLOCK_FREE && this.isDiff) await readBacking(this.backing, p.block * bs, block);
      block.set(data, p.offset % bs);
    }
    const index = this.nextFree++;
    const host = this.header.offsetData + index * bs;
    await this.file.write(host, block);
    this.fileSize = Math.max(this.fileSize, host + bs);
    this.map.set(p.block, index);
    this.allocated++;
    this.headerDirty = true;
  }

  /**
   * Allocated blocks get zeroes (holes punched in the file with mayUnmap); an unallocated
   * block of a differencing image becomes a zero block, so the parent no longer shows through.
   */
  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.beforeWrite(offset, length);
    const bs = this.header.blockSize;
    for (const p of this.pieces(offset, length)) {
      this.checkBlock(p.block);
      const entry = this.map.get(p.block);
      const host = this.hostOffset(entry, p.offset);
      if (isAllocated(entry)) await (opts?.mayUnmap ? this.file.punchHole(host, p.length) : this.file.writeZeroBytes(host, p.length));
      else if (entry === BLOCK_FREE && this.isDiff) {
        const whole = p.length === bs || (p.offset % bs === 0 && p.offset + p.length === this.size);
        if (whole) this.map.set(p.block, BLOCK_ZERO);
        else await this.writePiece(p, new Uint8Array(p.length));
      }
    }
    if (opts?.fua) await this.flush();
  }

  /** Data blocks are never freed (the data area stays compact for qemu and VirtualBox): discarding zeroes. */
  async discard(offset: number, length: number): Promise<void> {
    await this.writeZeroes(offset, length, { mayUnmap: true });
  }

  /** Data first, then cBlocksAllocated, then the block map, each made durable in turn. */
  flush(): Promise<void> {
    return this.flushLock.run(async () => {
      if (this.readOnly) return;
      const sectors = this.map.takeDirty();
      const count = this.headerDirty ? this.allocated : undefined;
      this.headerDirty = false;
      if (sectors.length === 0 && count === undefined) return this.file.flush();
      await this.file.flush();
      // The count before the entries (as qemu orders them): a crash between the two leaves the
      // count too high, which wastes a block, never too low, which would make the next
      // writer that appends at cBlocksAllocated overwrite a block in use.
      if (count !== undefined) {
        await this.file.write(F.cBlocksAllocated, allocatedField(count));
        this.header.blocksAllocated = count;
        await this.file.flush();
      }
      for (const s of sectors) await this.file.write(s.offset, s.bytes);
      await this.file.flush();
    });
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    checkRange(this.size, offset, length, 'block status');
    const out: Extent[] = [];
    for (const p of this.pieces(offset, length)) {
      const entry = this.map.get(p.block);
      const at = { offset: p.offset, length: p.length };
      if (isAllocated(entry)) {
        const host = this.hostOffset(entry, p.offset);
        if (this.isBad(p.block)) pushExtent(out, { ...at, kind: 'data', depth: 0 });
        else if (this.header.imageType !== TYPE_FIXED) pushExtent(out, { ...at, kind: 'data', depth: 0, hostOffset: host });
        else {
          // A static image is a sparse file until written: its holes read as zeroes (qemu
          // looks through to the file too, BDRV_BLOCK_RECURSE).
          for (const e of await this.file.extents(host, p.length)) {
            pushExtent(out, { offset: p.offset + e.offset - host, length: e.length, kind: e.data ? 'data' : 'zero', depth: 0, hostOffset: e.offset });
          }
        }
      } else if (entry === BLOCK_ZERO || !this.isDiff) pushExtent(out, { ...at, kind: 'zero', depth: 0 });
      else if (!this.backing) pushExtent(out, { ...at, kind: 'unallocated', depth: 0 });
      else await backingStatus(this.backing, p.offset, p.length, out);
    }
    return out;
  }

  async info(): Promise<ImageInfo> {
    const h = this.header;
    const data: Record<string, unknown> = {
      imageType: TYPE_NAMES[h.imageType],
      version: '1.1',
      headerSize: h.headerSize,
      blockSize: h.blockSize,
      blocksInImage: h.blocks,
      blocksAllocated: h.blocksAllocated,
      offsetBlockMap: h.offsetBlocks,
      offsetData: h.offsetData,
      uuid: h.uuidCreate,
      modificationUuid: h.uuidModify,
    };
    if (this.isDiff) {
      data.parentUuid = h.uuidLinkage;
      data.parentModificationUuid = h.uuidParentModify;
    }
    if (h.comment) data.comment = h.comment;
    const info: ImageInfo = {
      filename: this.filename,
      format: 'vdi',
      virtualSize: this.size,
      actualSize: await this.file.allocatedSize(),
      clusterSize: h.blockSize,
      formatSpecific: { type: 'vdi', data },
    };
    // Without the chain open, the parent is still looked for, to name it (not finding it is no error here).
    const parent = this.backing?.filename ?? (this.isDiff ? await findParent(this.filename, h.uuidLinkage, h.uuidParentModify).catch(() => undefined) : undefined);
    if (parent !== undefined) {
      info.backingFilename = path.relative(path.dirname(this.filename), parent);
      info.fullBackingFilename = parent;
      info.backingFilenameFormat = this.backing?.format ?? 'vdi';
    }
    return info;
  }

  /** Flushes, then checks (and repairs) the block map and header, as described in check.ts. */
  async check(opts: { repair?: RepairMode } = {}): Promise<CheckReport> {
    if (opts.repair && this.readOnly) throw new ImageError('READ_ONLY', 'image is open read-only: it cannot be repaired', { file: this.filename });
    await this.flush();
    return this.flushLock.run(async () => {
      const report = await checkVdi(this.file, this.header, this.map, opts.repair);
      if (opts.repair) {
        this.fileSize = await this.file.size();
        this.rescan();
      }
      return report;
    });
  }

  /**
   * Drops every block (commit empties the layer it committed): all entries become free and
   * the data area goes. The map is written before the count, so a crash leaves the count too
   * high, never too low.
   */
  async makeEmpty(): Promise<void> {
    if (this.readOnly) throw new ImageError('READ_ONLY', 'image is open read-only', { file: this.filename });
    if (this.header.imageType === TYPE_FIXED) throw new ImageError('UNSUPPORTED', 'a static VDI cannot be emptied', { file: this.filename });
    await this.flush();
    await this.flushLock.run(async () => {
      for (let b = 0; b < this.header.blocks; b++) this.map.set(b, BLOCK_FREE);
      for (const s of this.map.takeDirty()) await this.file.write(s.offset, s.bytes);
      await this.file.flush();
      await this.file.write(F.cBlocksAllocated, allocatedField(0));
      this.header.blocksAllocated = 0;
      await this.file.flush();
      await this.file.truncate(this.header.offsetData);
      this.fileSize = this.header.offsetData;
      this.rescan();
    });
  }

  async close(): Promise<void> {
    try {
      if (!this.readOnly) await this.flush();
    } finally {
      await this.file.close();
      await this.backing?.close();
    }
  }

  private beforeWrite(offset: number, length: number): void {
    if (this.readOnly) throw new ImageError('READ_ONLY', 'image is open read-only', { file: this.filename });
    checkRange(this.size, offset, length, 'write');
  }
}

/** Opens the parent of a differencing image: the one given, else the one found by UUID. */
async function openParent(filename: string, h: VdiHeader, opts: OpenOptions): Promise<Image> {
  const found = opts.backingFile ?? (await findParent(filename, h.uuidLinkage, h.uuidParentModify));
  const parent = await opts.openBacking!({
    name: path.relative(path.dirname(filename), found),
    resolved: found,
    format: opts.backingFile ? undefined : 'vdi',
    from: filename,
  });
  const uuid = parent instanceof VdiImage ? parent.header.uuidCreate : undefined;
  if (uuid !== h.uuidLinkage) {
    await parent.close();
    throw new ImageError(
      'INVALID_ARGUMENT',
      `${found} is not the parent of this differencing image: it expects a VDI with UUID ${h.uuidLinkage}, ${uuid ? `not ${uuid}` : `not a ${parent.format} image`}`,
      { file: filename, field: 'uuidLinkage', value: h.uuidLinkage },
    );
  }
  return parent;
}
