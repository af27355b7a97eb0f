/**
 * ESXi seSparse extents (space-efficient sparse, the default for VMFS6 snapshots), read-only.
 * VMware has not published the format; the layout is the one qemu reads (block/vmdk.c), with
 * the same strict checks: a constant header (magic 0xcafebabe, version 2.1, 4 KiB grains,
 * 4096-entry grain tables), a clean volatile header (no journal to replay), a grain directory
 * of 64-bit entries naming grain tables by index, and grain table entries whose top nibble
 * says unallocated, zero (or unmapped) or allocated (with a 60-bit grain number split in two).
 */
import { ImageError } from '../../block/errors';
import { TableCache } from '../../block/cache';
import { le64n } from '../../io/bytes';
import { HostFile } from '../../io/host-file';
import * as C from './constants';
import { Extent, Mapping } from './extent';

const CONST_MAGIC = 0xcafebaben;
const VOLATILE_MAGIC = 0xcafecafen;
const VERSION = 0x0000000200000001n;
const GRAIN_SECTORS = 8n;
const GT_SECTORS = 64n;
const GT_ENTRIES = Number((GT_SECTORS * BigInt(C.SECTOR)) / 8n);
const GD_ALLOCATED = 0x1000000000000000n;
const TYPE_MASK = 0xf000000000000000n;
const TYPE_UNALLOCATED = 0n;
const TYPE_UNMAPPED = 0x1000000000000000n;
const TYPE_ZERO = 0x2000000000000000n;
const TYPE_ALLOCATED = 0x3000000000000000n;
const GT_CACHE_TABLES = 16;
const RESERVED = [6, 7, 8, 9];
/** Const header fields (u64 each), by index. */
const F = { magic: 0, version: 1, capacity: 2, grainSize: 3, gtSize: 4, flags: 5, volatileOffset: 10, gdOffset: 16, gdSize: 17, gtOffset: 18, grainsOffset: 24 } as const;

export class SeSparseExtent implements Extent {
  readonly type = 'SESPARSE';
  readonly grainBytes = Number(GRAIN_SECTORS) * C.SECTOR;
  readonly compressed = false;
  readonly writable = false;
  private readonly cache: TableCache;

  private constructor(
    readonly start: number,
    readonly size: number,
    readonly file: HostFile,
    private readonly gd: BigUint64Array,
    private readonly gtSector: number,
    private readonly grainsSector: number,
    private readonly fileSize: number,
  ) {
    this.cache = new TableCache({
      tableSize: GT_ENTRIES * 8,
      capacity: GT_CACHE_TABLES,
      load: (i, into) => this.loadTable(i, into),
      store: async () => {
        throw new ImageError('READ_ONLY', 'seSparse extents are read-only', { file: this.file.path });
      },
    });
  }

  static async open(start: number, file: HostFile): Promise<SeSparseExtent> {
    const fileSize = await file.size();
    const where = { file: file.path };
    const h = new Uint8Array(C.SECTOR);
    await file.read(0, h);
    const f = (i: number): bigint => le64n(h, i * 8);
    const bad = (field: string, value: bigint, why: string) =>
      new ImageError('UNSUPPORTED', `seSparse ${field} 0x${value.toString(16)}: ${why}`, { ...where, field, value });
    if (f(F.magic) !== CONST_MAGIC) throw new ImageError('BAD_HEADER', `not an seSparse extent (magic 0x${f(F.magic).toString(16)})`, { ...where, field: 'magic' });
    if (f(F.version) !== VERSION) throw bad('version', f(F.version), 'only version 2.1 is known');
    if (f(F.grainSize) !== GRAIN_SECTORS) throw bad('grain_size', f(F.grainSize), 'only 8-sector grains are known');
    if (f(F.gtSize) !== GT_SECTORS) throw bad('grain_table_size', f(F.gtSize), 'only 64-sector grain tables are known');
    if (f(F.flags) !== 0n) throw bad('flags', f(F.flags), 'no flags are known');
    for (const i of RESERVED) if (f(i) !== 0n) throw bad('reserved field', f(i), 'must be zero');
    const sectorField = (i: number, name: string): number => {
      const v = f(i);
      if (v * BigInt(C.SECTOR) > BigInt(fileSize)) throw new ImageError('CORRUPT', `seSparse ${name} ${v} lies outside the file (${fileSize} bytes)`, { ...where, field: name });
      return Number(v);
    };
    const vol = new Uint8Array(C.SECTOR);
    await file.read(sectorField(F.volatileOffset, 'volatile_header_offset') * C.SECTOR, vol);
    if (le64n(vol, 0) !== VOLATILE_MAGIC) throw new ImageError('CORRUPT', 'seSparse volatile header magic is wrong', { ...where, field: 'volatile header' });
    if (le64n(vol, 24) !== 0n) throw new ImageError('UNSUPPORTED', 'seSparse image is dirty: replaying its journal is not supported', { ...where, field: 'replay_journal' });
    const capacity = f(F.capacity);
    if (capacity > BigInt(C.MAX_EXTENT_SECTORS) * 64n) throw new ImageError('BAD_HEADER', `seSparse capacity ${capacity} is absurdly large`, { ...where, field: 'capacity' });
    const gdSector = sectorField(F.gdOffset, 'grain_dir_offset');
    const gdEntries = Number(f(F.gdSize)) * (C.SECTOR / 8);
    const needed = Math.ceil(Number(capacity) / (GT_ENTRIES * Number(GRAIN_SECTORS)));
    if (gdEntries < needed || gdEntries > C.MAX_GD_ENTRIES || gdSector * C.SECTOR + gdEntries * 8 > fileSize) {
      throw new ImageError('CORRUPT', `seSparse grain directory (${gdEntries} entries at sector ${gdSector}) is too small for the capacity or lies outside the file`, { ...where, field: 'grain_dir_size' });
    }
    const raw = new Uint8Array(gdEntries * 8);
    await file.read(gdSector * C.SECTOR, raw);
    const gd = new BigUint64Array(gdEntries);
    for (let i = 0; i < gdEntries; i++) gd[i] = le64n(raw, i * 8);
    return new SeSparseExtent(start, Number(capacity) * C.SECTOR, file, gd, sectorField(F.gtOffset, 'grain_tables_offset'), sectorField(F.grainsOffset, 'grains_offset'), fileSize);
  }

  async map(offset: number, length: number): Promise<Mapping> {
    const grain = Math.floor(offset / this.grainBytes);
    const n = Math.min(length, this.grainBytes - (offset % this.grainBytes));
    const i = Math.floor(grain / GT_ENTRIES);
    if (this.gd[i] === 0n) return { length: n, kind: 'unallocated' };
    const table = await this.cache.get(i);
    const e = le64n(table, (grain % GT_ENTRIES) * 8);
    const type = e & TYPE_MASK;
    const corrupt = () =>
      new ImageError('CORRUPT', `seSparse grain table entry 0x${e.toString(16)} of grain ${grain} is invalid`, { file: this.file.path, field: 'grain table entry' });
    if (type === TYPE_UNALLOCATED) {
      if (e !== 0n) throw corrupt();
      return { length: n, kind: 'unallocated' };
    }
    if (type === TYPE_UNMAPPED || type === TYPE_ZERO) return { length: n, kind: 'zero' };
    if (type !== TYPE_ALLOCATED) throw corrupt();
    // The grain number is split: bits 48-59 hold its low 12 bits, bits 0-47 the rest.
    const cluster = ((e & 0x0fff000000000000n) >> 48n) | ((e & 0x0000ffffffffffffn) << 12n);
    const host = (BigInt(this.grainsSector) + cluster * GRAIN_SECTORS) * BigInt(C.SECTOR);
    if (host + BigInt(this.grainBytes) > BigInt(this.fileSize)) throw corrupt();
    return { length: n, kind: 'data', hostOffset: Number(host) + (offset % this.grainBytes), grainHost: Number(host) };
  }

  readData(_offset: number, m: Mapping, into: Uint8Array): Promise<void> {
    return this.file.read(m.hostOffset!, into);
  }

  async write(): Promise<void> {
    throw new ImageError('READ_ONLY', 'seSparse extents are read-only', { file: this.file.path });
  }

  async flush(): Promise<void> {}

  private async loadTable(i: number, into: Uint8Array): Promise<void> {
    const e = this.gd[i];
    const index = e & 0xffffffffn;
    const host = (BigInt(this.gtSector) + index * GT_SECTORS) * BigInt(C.SECTOR);
    if ((e & 0xffffffff00000000n) !== GD_ALLOCATED || host + BigInt(into.byteLength) > BigInt(this.fileSize)) {
      throw new ImageError('CORRUPT', `seSparse grain directory entry ${i} (0x${e.toString(16)}) is invalid or points outside the file`, { file: this.file.path, field: 'grain directory entry' });
    }
    await this.file.read(Number(host), into);
  }
}
