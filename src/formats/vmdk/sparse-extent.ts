/**
 * Hosted sparse extents (monolithicSparse, twoGbMaxExtentSparse, streamOptimized): a grain
 * directory of grain tables of grain offsets, in sectors (Virtual Disk Format 1.1, §"Grain
 * Directories and Grain Tables"). Grain tables go through a TableCache keyed by directory index,
 * so a redundant copy (rgd) is written with its primary. Every offset read from the file is
 * checked against the file's end before it is followed.
 */
import { decompressSync } from '../../block/compress';
import { ImageError } from '../../block/errors';
import { TableCache } from '../../block/cache';
import { le32, le64, setLe32, setLe64 } from '../../io/bytes';
import { HostFile } from '../../io/host-file';
import * as C from './constants';
import { Extent, Mapping } from './extent';
import { gdEntries, gtSectors, parseMarker, parseSparseHeader, SparseHeader } from './sparse-header';

const GT_CACHE_TABLES = 64;
/** A compressed grain may be a little larger than the grain (incompressible data). */
const compressedLimit = (grainBytes: number): number => grainBytes * 2 + C.SECTOR;

/**
 * Reads the header, or for a stream-optimized extent with gdOffset GD_AT_END, the footer's copy
 * (`inFooter`).
 */
export async function readSparseHeader(file: HostFile, fileSize: number): Promise<{ header: SparseHeader; inFooter: boolean }> {
  const head = new Uint8Array(C.SECTOR);
  await file.read(0, head);
  if (fileSize < C.SECTOR) throw new ImageError('BAD_HEADER', `file is too small (${fileSize} bytes) for a sparse extent header`, { file: file.path });
  const header = parseSparseHeader(head, file.path);
  if (header.gdOffset !== null) return { header, inFooter: false };
  // Footer marker, footer (a header copy with the real gdOffset), end-of-stream marker: the last 3 sectors.
  const tailAt = Math.floor(fileSize / C.SECTOR) * C.SECTOR - 3 * C.SECTOR;
  if (tailAt < C.SECTOR) throw new ImageError('CORRUPT', 'stream-optimized extent is too short to hold its footer', { file: file.path, field: 'footer' });
  const tail = new Uint8Array(3 * C.SECTOR);
  await file.read(tailAt, tail);
  const footerMarker = parseMarker(tail, 0);
  const eos = parseMarker(tail, 2 * C.SECTOR);
  if (footerMarker.size !== 0 || footerMarker.type !== C.MARKER_FOOTER || eos.val !== 0 || eos.size !== 0 || eos.type !== C.MARKER_EOS) {
    throw new ImageError('CORRUPT', `no valid footer and end-of-stream marker at offset ${tailAt} (the stream is truncated?)`, { file: file.path, field: 'footer' });
  }
  const footer = parseSparseHeader(tail.subarray(C.SECTOR, 2 * C.SECTOR), file.path, 'footer');
  if (footer.gdOffset === null) throw new ImageError('CORRUPT', 'the footer does not say where the grain directory is', { file: file.path, field: 'gdOffset' });
  return { header: footer, inFooter: true };
}

export class SparseExtent implements Extent {
  readonly grainBytes: number;
  readonly compressed: boolean;
  readonly hasMarkers: boolean;
  readonly zeroGrain: boolean;
  readonly gtes: number;
  readonly gtBytes: number;
  readonly gd: Uint32Array;
  readonly rgd: Uint32Array | null;
  /** End of the used file, in bytes: every offset followed must lie below it. */
  end: number;
  private nextFree: number;
  private gdDirty = false;
  private readonly cache: TableCache;
  private lastGrain: { host: number; data: Uint8Array } | null = null;

  private constructor(
    readonly start: number,
    readonly file: HostFile,
    readonly header: SparseHeader,
    readonly type: string,
    readonly writable: boolean,
    /** The grain directory is found through the footer (a stream written in one pass). */
    readonly footerLayout: boolean,
    fileSize: number,
    gd: Uint32Array,
    rgd: Uint32Array | null,
  ) {
    this.grainBytes = header.grainSize * C.SECTOR;
    this.compressed = header.compressAlgorithm === C.COMPRESSION_DEFLATE;
    this.hasMarkers = (header.flags & C.FLAG_MARKERS) !== 0;
    this.zeroGrain = (header.flags & C.FLAG_ZERO_GRAIN) !== 0;
    this.gtes = header.numGTEsPerGT;
    this.gtBytes = gtSectors(header) * C.SECTOR;
    this.gd = gd;
    this.rgd = rgd;
    this.end = fileSize;
    this.nextFree = Math.ceil(fileSize / this.grainBytes) * this.grainBytes;
    this.cache = new TableCache({
      tableSize: this.gtes * 4,
      capacity: GT_CACHE_TABLES,
      load: (i, into) => this.loadTable(i, into),
      store: async (i, data) => {
        await this.file.write(this.gd[i] * C.SECTOR, data);
        if (this.rgd && this.rgd[i]) await this.file.write(this.rgd[i] * C.SECTOR, data);
      },
    });
  }

  get size(): number {
    return this.header.capacity * C.SECTOR;
  }

  static async open(start: number, file: HostFile, type: string, readOnly: boolean): Promise<SparseExtent> {
    const fileSize = await file.size();
    const { header: h, inFooter } = await readSparseHeader(file, fileSize);
    const where = { file: file.path };
    const compressed = h.compressAlgorithm === C.COMPRESSION_DEFLATE;
    if (compressed && (h.flags & C.FLAG_MARKERS) === 0) {
      throw new ImageError('UNSUPPORTED', 'compressed sparse extents without grain markers are not supported', { ...where, field: 'flags' });
    }
    if (h.version === 3 && !compressed && !readOnly) {
      // Version 3 adds changed block tracking, which img does not maintain (as qemu).
      throw new ImageError('READ_ONLY', 'VMDK version 3 sparse extents can only be opened read-only', { ...where, field: 'version', value: 3 });
    }
    if (h.overHead * C.SECTOR > fileSize) {
      throw new ImageError('CORRUPT', `file is truncated: overHead says grains start at ${h.overHead * C.SECTOR} but the file holds ${fileSize} bytes`, { ...where, field: 'overHead' });
    }
    const entries = gdEntries(h);
    if (entries > C.MAX_GD_ENTRIES) throw new ImageError('BAD_HEADER', `grain directory of ${entries} entries is too large`, { ...where, field: 'capacity', value: h.capacity });
    const gd = await readDirectory(file, fileSize, h.gdOffset!, entries, 'gdOffset');
    const rgd = (h.flags & C.FLAG_REDUNDANT_GT) !== 0 && h.rgdOffset !== 0 ? await readDirectory(file, fileSize, h.rgdOffset, entries, 'rgdOffset') : null;
    return new SparseExtent(start, file, h, type, !readOnly, inFooter, fileSize, gd, rgd);
  }

  /**
   * The run from `offset` of grains alike (unallocated, zeroed, or uncompressed grains that
   * follow each other in the file) inside one grain table, at most `length` bytes; a
   * compressed grain is a run of its own.
   */
  async map(offset: number, length: number): Promise<Mapping> {
    const grain = Math.floor(offset / this.grainBytes);
    const i = Math.floor(grain / this.gtes);
    const tableEnd = (i + 1) * this.gtes * this.grainBytes;
    const limit = Math.min(length, tableEnd - offset);
    const first = Math.min(limit, this.grainBytes - (offset % this.grainBytes));
    if (i >= this.gd.length || this.gd[i] === 0) return { length: limit, kind: 'unallocated' };
    const table = await this.cache.get(i);
    const entryOf = (g: number) => le32(table, (g % this.gtes) * 4);
    const e = entryOf(grain);
    const kind = e === 0 ? 'unallocated' : e === C.GTE_ZEROED && this.zeroGrain ? 'zero' : 'data';
    if (kind === 'data') this.checkGrain(grain, e);
    let n = first;
    if (!(kind === 'data' && this.compressed)) {
      for (let g = grain + 1; n < limit; g++) {
        const next = entryOf(g);
        const same = kind === 'data' ? next === e + (g - grain) * this.header.grainSize && next * C.SECTOR < this.end : next === e;
        if (!same) break;
        n = Math.min(limit, n + this.grainBytes);
      }
    }
    if (kind !== 'data') return { length: n, kind };
    const host = e * C.SECTOR;
    if (this.compressed) return { length: n, kind: 'data', compressed: true, grainHost: host };
    return { length: n, kind: 'data', hostOffset: host + (offset % this.grainBytes), grainHost: host };
  }

  private checkGrain(grain: number, e: number): void {
    if (e < this.header.overHead || e * C.SECTOR >= this.end) {
      throw new ImageError('CORRUPT', `grain table entry of grain ${grain} points to sector ${e}, outside the grain area (${this.header.overHead} to ${Math.ceil(this.end / C.SECTOR)})`, {
        file: this.file.path,
        field: 'grain table entry',
        value: e,
      });
    }
  }

  async readData(offset: number, m: Mapping, into: Uint8Array): Promise<void> {
    if (!this.compressed) return this.file.read(m.hostOffset!, into);
    const grain = Math.floor(offset / this.grainBytes);
    const data = await this.readCompressedGrain(grain, m.grainHost!);
    const at = offset % this.grainBytes;
    into.set(data.subarray(at, at + into.byteLength));
  }

  /** Inflates grain `grain` from its marker at `host`, checking what the marker claims. */
  async readCompressedGrain(grain: number, host: number): Promise<Uint8Array> {
    if (this.lastGrain?.host === host) return this.lastGrain.data;
    const head = new Uint8Array(C.GRAIN_MARKER_SIZE);
    await this.file.read(host, head);
    const lba = le64Safe(head, 0);
    const size = le32(head, 8);
    const where = { file: this.file.path, field: 'grain marker' };
    const expectLba = grain * this.header.grainSize;
    if (lba !== expectLba) throw new ImageError('CORRUPT', `grain marker at offset ${host} says LBA ${lba}, but the grain table places it at LBA ${expectLba}`, { ...where, value: lba });
    if (size === 0 || size > compressedLimit(this.grainBytes) || host + C.GRAIN_MARKER_SIZE + size > this.end) {
      throw new ImageError('CORRUPT', `grain marker at offset ${host} claims ${size} compressed bytes (the grain is ${this.grainBytes} bytes, the file ends at ${this.end})`, { ...where, value: size });
    }
    const src = new Uint8Array(size);
    await this.file.read(host + C.GRAIN_MARKER_SIZE, src);
    const expect = Math.min(this.grainBytes, this.size - grain * this.grainBytes);
    let data: Uint8Array;
    try {
      data = decompressSync('zlib', src, expect);
    } catch (err) {
      throw new ImageError('CORRUPT', `grain at offset ${host} does not decompress: ${(err as Error).message}`, where);
    }
    this.lastGrain = { host, data };
    return data;
  }

  async write(offset: number, data: Uint8Array, fill: (grainOffset: number, into: Uint8Array) => Promise<void>): Promise<void> {
    const grain = Math.floor(offset / this.grainBytes);
    const at = offset % this.grainBytes;
    const m = await this.map(offset, data.byteLength);
    if (m.kind === 'data') return this.file.write(m.hostOffset!, data);
    const whole = new Uint8Array(this.grainBytes);
    // A zeroed grain does not show its backing file's bytes: only unallocated ones copy them.
    if (m.kind === 'unallocated' && (at > 0 || data.byteLength < this.grainBytes)) await fill(grain * this.grainBytes, whole);
    whole.set(data, at);
    const host = this.allocate(this.grainBytes);
    await this.file.write(host, whole);
    await this.setEntry(grain, host / C.SECTOR);
  }

  /** Appends a compressed grain (its marker and zlib bytes) and points the grain table at it. */
  async appendCompressed(grain: number, payload: Uint8Array): Promise<void> {
    const host = this.allocate(C.GRAIN_MARKER_SIZE + payload.byteLength, C.SECTOR);
    const rec = new Uint8Array(Math.ceil((C.GRAIN_MARKER_SIZE + payload.byteLength) / C.SECTOR) * C.SECTOR);
    setLe64(rec, 0, grain * this.header.grainSize);
    setLe32(rec, 8, payload.byteLength);
    rec.set(payload, C.GRAIN_MARKER_SIZE);
    await this.file.write(host, rec);
    await this.setEntry(grain, host / C.SECTOR);
  }

  async zeroGrains(offset: number, length: number): Promise<boolean> {
    if (!this.zeroGrain || offset % this.grainBytes !== 0 || (length % this.grainBytes !== 0 && offset + length !== this.size)) return false;
    for (let o = offset; o < offset + length; o += this.grainBytes) await this.setEntry(o / this.grainBytes, C.GTE_ZEROED);
    return true;
  }

  async flush(): Promise<void> {
    await this.cache.flush();
    if (this.gdDirty) {
      this.gdDirty = false;
      await this.file.write(this.header.gdOffset! * C.SECTOR, directoryBytes(this.gd));
      if (this.rgd) await this.file.write(this.header.rgdOffset * C.SECTOR, directoryBytes(this.rgd));
    }
    await this.file.flush();
  }

  /** Loads grain table `i` after checking that it lies inside the file. */
  private async loadTable(i: number, into: Uint8Array): Promise<void> {
    const host = this.gd[i] * C.SECTOR;
    if (host < C.SECTOR || host + this.gtBytes > this.end) {
      throw new ImageError('CORRUPT', `grain directory entry ${i} points to sector ${this.gd[i]}: the grain table would lie outside the file (${this.end} bytes)`, {
        file: this.file.path,
        field: 'grain directory entry',
        value: this.gd[i],
      });
    }
    await this.file.read(host, into);
  }

  private async setEntry(grain: number, value: number): Promise<void> {
    const i = Math.floor(grain / this.gtes);
    let table: Uint8Array;
    if (this.gd[i] === 0) {
      // A grain table the directory lacks (VMware leaves empty ones out): append it, and its copy.
      this.gd[i] = this.allocate(this.gtBytes, C.SECTOR) / C.SECTOR;
      if (this.rgd) this.rgd[i] = this.allocate(this.gtBytes, C.SECTOR) / C.SECTOR;
      this.gdDirty = true;
      table = await this.cache.create(i);
    } else table = await this.cache.get(i);
    setLe32(table, (grain % this.gtes) * 4, value);
    this.cache.markDirty(i);
    if (this.lastGrain) this.lastGrain = null;
  }

  /** Reserves `bytes` at the end of the file (aligned to `align`, a grain by default). */
  private allocate(bytes: number, align = this.grainBytes): number {
    const host = Math.ceil(this.nextFree / align) * align;
    if (host + bytes > C.MAX_EXTENT_SECTORS * C.SECTOR) {
      throw new ImageError('NO_SPACE', 'the sparse extent is full (grain offsets are 32-bit sector numbers)', { file: this.file.path });
    }
    this.nextFree = host + bytes;
    this.end = Math.max(this.end, this.nextFree);
    return host;
  }
}

function le64Safe(b: Uint8Array, o: number): number {
  try {
    return le64(b, o);
  } catch {
    return Number.MAX_SAFE_INTEGER;
  }
}

async function readDirectory(file: HostFile, fileSize: number, sector: number, entries: number, field: string): Promise<Uint32Array> {
  const bytes = entries * 4;
  if (sector === 0 || sector * C.SECTOR + bytes > fileSize) {
    throw new ImageError('CORRUPT', `grain directory of ${entries} entries at sector ${sector} lies outside the file (${fileSize} bytes)`, { file: file.path, field, value: sector });
  }
  const raw = new Uint8Array(bytes);
  await file.read(sector * C.SECTOR, raw);
  const out = new Uint32Array(entries);
  for (let i = 0; i < entries; i++) out[i] = le32(raw, i * 4);
  return out;
}

function directoryBytes(gd: Uint32Array): Uint8Array {
  const b = new Uint8Array(gd.length * 4);
  for (let i = 0; i < gd.length; i++) setLe32(b, i * 4, gd[i]);
  return b;
}
