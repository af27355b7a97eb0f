/**
 * VmdkImage: the `Image` a vmdk opens as. Requests are cut at extent and grain boundaries and
 * handed to the extents (extent.ts, sparse-extent.ts); unallocated grains read through the
 * parent disk (parentFileNameHint), checked by CID as VMware does. A stream-optimized image
 * opened for writing while still empty is written in one pass through a StreamWriter.
 */
import { randomInt } from 'node:crypto';
import { compressorPool } from '../../block/compress';
import { Extent as DeviceExtent, WriteOptions, ZeroOptions } from '../../block/device';
import { ImageError } from '../../block/errors';
import { checkRange, pushExtent } from '../../block/extents';
import { Mutex } from '../../block/lock';
import { CheckReport, Image, ImageInfo, OpenOptions, RepairMode } from '../../block/image';
import { HostFile } from '../../io/host-file';
import { FileSink } from '../../io/sink';
import { resolveBackingName } from '../backing-name';
import { checkVmdk } from './check';
import * as C from './constants';
import { hex32, NO_PARENT, withKey } from './descriptor';
import { Extent } from './extent';
import { Layout, openLayout } from './open';
import { SparseExtent } from './sparse-extent';
import { StreamWriter } from './stream';

/** Compression limit for grains: they are always stored compressed, whatever the ratio. */
const NO_LIMIT = Number.MAX_SAFE_INTEGER;

export class VmdkImage implements Image {
  readonly format = 'vmdk';
  readonly size: number;
  readonly clusterSize: number;
  /** Stream-optimized targets only take compressed grains (convert compresses for them). */
  readonly needsCompressedWrites: boolean;
  private readonly lock = new Mutex();
  private cidUpdated = false;

  private constructor(
    private readonly file: HostFile,
    readonly layout: Layout,
    readonly backing: Image | null,
    readonly readOnly: boolean,
    private readonly stream: StreamWriter | null,
  ) {
    this.size = layout.extents.reduce((n, e) => n + e.size, 0);
    this.clusterSize = Math.max(C.SECTOR, ...layout.extents.map((e) => e.grainBytes ?? 0));
    this.needsCompressedWrites = layout.extents.some((e) => e.compressed);
  }

  get filename(): string {
    return this.file.path;
  }
  get cid(): number {
    return this.layout.descriptor.cid;
  }
  get dataFiles(): readonly string[] {
    return this.layout.extraFiles.map((f) => f.path);
  }
  get extents(): readonly Extent[] {
    return this.layout.extents;
  }

  static async open(filename: string, opts: OpenOptions = {}): Promise<VmdkImage> {
    const readOnly = !!opts.readOnly;
    const file = await HostFile.open(filename, { readOnly });
    let layout: Layout | undefined;
    let backing: Image | null = null;
    try {
      layout = await openLayout(file, readOnly);
      const d = layout.descriptor;
      if (d.parentFileNameHint !== undefined && opts.openBacking) {
        backing = await opts.openBacking({ name: d.parentFileNameHint, resolved: resolveBackingName(filename, d.parentFileNameHint), format: 'vmdk', from: filename });
        if (backing instanceof VmdkImage && backing.cid !== d.parentCid) {
          throw new ImageError('CORRUPT', `parentCID ${hex32(d.parentCid)} does not match the CID ${hex32(backing.cid)} of parent ${d.parentFileNameHint}: the parent changed since this delta was made`, {
            file: filename,
            field: 'parentCID',
            value: d.parentCid,
          });
        }
      }
      return new VmdkImage(file, layout, backing, readOnly, readOnly ? null : streamWriterFor(file, layout));
    } catch (err) {
      await backing?.close();
      for (const f of layout?.extraFiles ?? []) await f.close();
      await file.close();
      throw err;
    }
  }

  async read(offset: number, into: Uint8Array): Promise<void> {
    checkRange(this.size, offset, into.byteLength, 'read');
    this.refuseWhileStreaming();
    await this.pieces(offset, into.byteLength, async (extent, rel, n, at) => {
      const m = await extent.map(rel, n);
      const part = into.subarray(at - offset, at - offset + m.length);
      if (m.kind === 'data') await extent.readData(rel, m, part);
      else {
        part.fill(0);
        if (m.kind === 'unallocated') await this.fillFromBacking(at, part);
      }
      return m.length;
    });
  }

  async write(offset: number, data: Uint8Array, opts?: WriteOptions): Promise<void> {
    this.checkWrite(offset, data.byteLength);
    if (this.stream) return this.stream.writeData(offset, data);
    await this.lock.run(async () => {
      await this.touchCid();
      await this.pieces(offset, data.byteLength, async (extent, rel, whole, at) => {
        const n = inGrain(extent, rel, whole);
        const piece = data.subarray(at - offset, at - offset + n);
        if (extent.compressed) await this.appendCompressedGrain(extent as SparseExtent, rel, piece);
        else await extent.write(rel, piece, (grainOffset, whole) => this.fillFromBacking(extent.start + grainOffset, whole));
        return n;
      });
    });
    if (opts?.fua) await this.flush();
  }

  /** Whole grains compressed: the stream (on worker threads), or appended to a compressed extent. */
  async writeCompressed(offset: number, data: Uint8Array): Promise<void> {
    if (this.stream) {
      this.checkWrite(offset, data.byteLength);
      return this.stream.writeData(offset, data, true);
    }
    return this.write(offset, data);
  }

  async writeZeroes(offset: number, length: number, opts?: ZeroOptions): Promise<void> {
    this.checkWrite(offset, length);
    // Grains never written read as zeroes already, unless a parent shows through them.
    if (this.stream && !this.backing) return;
    if (this.stream) {
      const stream = this.stream;
      const grains: Promise<void>[] = [];
      for (let o = offset; o < offset + length; o += stream.grainBytes) grains.push(stream.writeData(o, new Uint8Array(Math.min(stream.grainBytes, offset + length - o)), true));
      return Promise.all(grains).then(() => undefined);
    }
    await this.lock.run(async () => {
      await this.touchCid();
      await this.pieces(offset, length, async (extent, rel, n) => {
        if (extent.zeroGrains && (await extent.zeroGrains(rel, n))) return n;
        const m = extent.grainBytes ? await extent.map(rel, inGrain(extent, rel, n)) : { kind: 'data', length: n };
        if (m.kind === 'zero' || (m.kind === 'unallocated' && !this.backing)) return m.length;
        const zeroes = new Uint8Array(m.length);
        if (extent.compressed) await this.appendCompressedGrain(extent as SparseExtent, rel, zeroes);
        else await extent.write(rel, zeroes, async (_o, whole) => void whole.fill(0));
        return m.length;
      });
    });
    if (opts?.fua) await this.flush();
  }

  /** vmdk cannot give space back: discarded ranges are zeroed where that is cheap, else kept. */
  async discard(offset: number, length: number): Promise<void> {
    this.checkWrite(offset, length);
  }

  async flush(): Promise<void> {
    if (this.readOnly || this.stream) return;
    await this.lock.run(async () => {
      for (const e of this.layout.extents) if (e.writable) await e.flush();
    });
  }

  async blockStatus(offset: number, length: number): Promise<DeviceExtent[]> {
    checkRange(this.size, offset, length, 'block status');
    if (this.stream) return [{ offset, length, kind: 'unallocated', depth: 0 }];
    const out: DeviceExtent[] = [];
    let hole: { offset: number; length: number } | null = null;
    const endHole = async () => {
      if (!hole) return;
      if (!this.backing) pushExtent(out, { ...hole, kind: 'unallocated', depth: 0 });
      else for (const e of await this.backing.blockStatus(hole.offset, hole.length)) pushExtent(out, { ...e, depth: e.depth + 1 });
      hole = null;
    };
    await this.pieces(offset, length, async (extent, rel, n, at) => {
      const m = await extent.map(rel, n);
      if (m.kind === 'unallocated') {
        if (hole) hole.length += m.length;
        else hole = { offset: at, length: m.length };
        return m.length;
      }
      await endHole();
      if (m.kind === 'zero') pushExtent(out, { offset: at, length: m.length, kind: 'zero', depth: 0 });
      else pushExtent(out, { offset: at, length: m.length, kind: 'data', depth: 0, hostOffset: m.hostOffset, compressed: m.compressed || undefined });
      return m.length;
    });
    await endHole();
    return out;
  }

  async info(): Promise<ImageInfo> {
    const d = this.layout.descriptor;
    let actualSize = await this.file.allocatedSize();
    for (const f of this.layout.extraFiles) actualSize += await f.allocatedSize();
    const extents = this.layout.extents.map((e) => ({
      compressed: e.compressed || undefined,
      virtualSize: e.size,
      filename: e.file?.path ?? '',
      clusterSize: e.grainBytes ?? undefined,
      format: e.type,
    }));
    const info: ImageInfo = {
      filename: this.filename,
      format: 'vmdk',
      virtualSize: this.size,
      actualSize,
      formatSpecific: { type: 'vmdk', data: { cid: d.cid, parentCid: d.parentCid, createType: d.createType, extents } },
    };
    const grains = this.layout.extents.find((e) => e.grainBytes);
    if (grains) info.clusterSize = grains.grainBytes!;
    if (d.parentFileNameHint !== undefined) {
      info.backingFilename = d.parentFileNameHint;
      info.fullBackingFilename = resolveBackingName(this.filename, d.parentFileNameHint);
      info.backingFilenameFormat = 'vmdk';
    }
    return info;
  }

  async check(opts: { repair?: RepairMode } = {}): Promise<CheckReport> {
    if (opts.repair && this.readOnly) throw new ImageError('READ_ONLY', 'image is open read-only: it cannot be repaired', { file: this.filename });
    this.refuseWhileStreaming();
    await this.flush();
    return this.lock.run(() => checkVmdk(this, opts.repair));
  }

  async close(): Promise<void> {
    try {
      if (this.stream) await this.finishStream();
      else await this.flush();
    } finally {
      for (const f of this.layout.extraFiles) await f.close();
      await this.file.close();
      await this.backing?.close();
    }
  }

  /** Calls fn for each piece of [offset, offset+length) inside one extent; fn returns how much it did. */
  private async pieces(offset: number, length: number, fn: (extent: Extent, rel: number, n: number, at: number) => Promise<number>): Promise<void> {
    const extents = this.layout.extents;
    let i = 0;
    for (let at = offset; at < offset + length; ) {
      while (at >= extents[i].start + extents[i].size) i++;
      const e = extents[i];
      const n = Math.min(offset + length, e.start + e.size) - at;
      at += await fn(e, at - e.start, n, at);
    }
  }

  /** Reads what a (possibly shorter) parent holds at `offset`; `into` must come zeroed. */
  private async fillFromBacking(offset: number, into: Uint8Array): Promise<void> {
    if (!this.backing) return;
    const n = Math.max(0, Math.min(into.byteLength, this.backing.size - offset));
    if (n > 0) await this.backing.read(offset, into.subarray(0, n));
  }

  private async appendCompressedGrain(extent: SparseExtent, rel: number, data: Uint8Array): Promise<void> {
    const grain = Math.floor(rel / extent.grainBytes);
    const whole = rel % extent.grainBytes === 0 && (data.byteLength === extent.grainBytes || rel + data.byteLength === extent.size);
    if (!whole || (await extent.map(rel, data.byteLength)).kind === 'data') {
      throw new ImageError('UNSUPPORTED', `compressed extents take whole grains written once (write at ${extent.start + rel}, ${data.byteLength} bytes)`, { file: this.filename });
    }
    const payload = await compressorPool().compress('zlib', new Uint8Array(data), NO_LIMIT);
    await extent.appendCompressed(grain, payload!);
  }

  private async finishStream(): Promise<void> {
    const stream = this.stream!;
    await stream.finish();
    await this.file.truncate(stream.end);
    await this.file.flush();
  }

  /** As VMware (and qemu): the first write after opening gives the disk a new content id. */
  private async touchCid(): Promise<void> {
    if (this.cidUpdated) return;
    this.cidUpdated = true;
    const d = this.layout.descriptor;
    const cid = randomInt(0, NO_PARENT);
    const text = Buffer.from(withKey(d.text, 'CID', hex32(cid)), 'utf8');
    const at = this.layout.descriptorAt;
    if (at) {
      if (text.byteLength > at.capacity) throw new ImageError('UNSUPPORTED', 'the descriptor no longer fits in its sectors', { file: this.filename, field: 'descriptorSize' });
      const sector = new Uint8Array(at.capacity);
      sector.set(text);
      await this.file.write(at.offset, sector);
    } else {
      await this.file.write(0, text);
      await this.file.truncate(text.byteLength);
    }
    await this.file.flush();
    d.cid = cid;
    d.text = text.toString('utf8');
  }

  private checkWrite(offset: number, length: number): void {
    if (this.readOnly) throw new ImageError('READ_ONLY', 'image is open read-only', { file: this.filename });
    checkRange(this.size, offset, length, 'write');
    if (!this.stream && this.layout.extents.some((e) => !e.writable)) {
      throw new ImageError('READ_ONLY', 'the image has extents that cannot be written', { file: this.filename });
    }
  }

  private refuseWhileStreaming(): void {
    if (this.stream) throw new ImageError('UNSUPPORTED', 'the stream-optimized image is being written in one pass: it cannot be read until closed', { file: this.filename });
  }
}

/** How much of `length` bytes from extent offset `rel` lies in one grain (all of it for flat extents). */
function inGrain(extent: Extent, rel: number, length: number): number {
  return extent.grainBytes ? Math.min(length, extent.grainBytes - (rel % extent.grainBytes)) : length;
}

/**
 * A stream-optimized image (directory in the footer) opened for writing: written in one pass
 * while it holds no grain yet, refused once it does (its tables cannot be updated in place).
 */
function streamWriterFor(file: HostFile, layout: Layout): StreamWriter | null {
  const extent = layout.extents[0];
  if (layout.extents.length !== 1 || !(extent instanceof SparseExtent) || !extent.compressed || extent.header.gdOffset === null) return null;
  const footerLayout = extent.footerLayout;
  if (!footerLayout) return null;
  if (extent.gd.some((v) => v !== 0)) {
    throw new ImageError('READ_ONLY', 'stream-optimized images with data can only be opened read-only (they are written once, in one pass)', { file: file.path });
  }
  const h = extent.header;
  return new StreamWriter(new FileSink(file, h.overHead * C.SECTOR), { ...h, gdOffset: null }, file.path);
}
