/**
 * The qcow2 snapshot table (docs/interop/qcow2.rst, "Snapshots"): parsing with every length
 * bounds-checked, serialization, validation of the snapshots' L1 tables, and the views
 * `img info` (SnapshotInfo) and `convert -l` (lookup by id or name) need.
 *
 * Each entry is 8-byte aligned: a 40-byte fixed header, extra_data_size bytes of extra data
 * (vm_state_size_large, disk_size, icount in v3; unknown trailing extra data is preserved),
 * then the unterminated id string and name.
 */
import { badField, ImageError } from '../../block/errors';
import { SnapshotInfo } from '../../block/image';
import { HostFile } from '../../io/host-file';
import { alignUp, be16, be32, be64n, divCeil, setBe16, setBe32, setBe64 } from '../../io/bytes';
import * as C from './constants';
import { FileSpace } from './file-space';
import { Qcow2Header } from './header';

/** qemu's QCOW_MAX_SNAPSHOT_EXTRA_DATA: more extra data per entry is refused. */
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;
/** qemu's QCOW_MAX_SNAPSHOTS_SIZE: the whole table may not exceed 1 KiB per allowed snapshot. */
export const MAX_SNAPSHOT_TABLE_BYTES = 1024 * C.MAX_SNAPSHOTS;
/** Extra data every v3 entry must carry: vm_state_size_large and disk_size. */
export const V3_MIN_SNAPSHOT_EXTRA = 16;
const ENTRY_ALIGN = 8;
const L1_ENTRY_SIZE = 8;

export interface SnapshotEntry {
  id: string;
  name: string;
  l1TableOffset: number;
  l1Size: number;
  dateSec: number;
  dateNsec: number;
  vmClockNsec: number;
  /** vm_state_size_large when present, else the 32-bit vm_state_size. */
  vmStateSize: number;
  /** Virtual disk size at snapshot time; absent in entries without that extra field. */
  diskSize?: number;
  /** Guest instruction count; absent when not recorded (stored as -1 or missing). */
  icount?: number;
  /** extra_data_size as stored. */
  extraDataSize: number;
  /** Extra data past the fields img knows, kept so a rewrite preserves it. */
  unknownExtra: Uint8Array;
}

export interface SnapshotTable {
  entries: SnapshotEntry[];
  /** Bytes the table occupies (qemu's snapshots_size): what its clusters are refcounted by. */
  size: number;
  /** Entries whose excess extra data was cut to the limit (only with `dropExcessExtra`). */
  truncated: number[];
}

const ICOUNT_NONE = 0xffffffffffffffffn;

/** A bigint field shown as a number; values past 2^53 (never legitimate here) saturate. */
function num(v: bigint): number {
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}

/**
 * Reads and parses the table that the header points at. Throws a one-line ImageError naming
 * the entry and field when a count or length is absurd or an entry runs past the end of file.
 * With `dropExcessExtra` (check's repair), extra data past the limit is cut instead, as
 * qemu's repair does, and the entry is listed in `truncated`.
 */
export async function readSnapshotTable(
  file: HostFile,
  h: Qcow2Header,
  fileSize: number,
  opts: { dropExcessExtra?: boolean } = {},
): Promise<SnapshotTable> {
  if (h.nbSnapshots === 0) return { entries: [], size: 0, truncated: [] };
  if (h.nbSnapshots > C.MAX_SNAPSHOTS) throw badField(file.path, 'nb_snapshots', h.nbSnapshots, `more than ${C.MAX_SNAPSHOTS} snapshots`);
  if (h.snapshotsOffset % 2 ** h.clusterBits !== 0) {
    throw badField(file.path, 'snapshots_offset', h.snapshotsOffset, 'not aligned to a cluster');
  }
  const available = Math.min(fileSize - h.snapshotsOffset, MAX_SNAPSHOT_TABLE_BYTES);
  if (available < h.nbSnapshots * C.SNAPSHOT_HEADER_SIZE) {
    throw badField(file.path, 'nb_snapshots', h.nbSnapshots, `${h.nbSnapshots} snapshot headers do not fit between snapshots_offset and the end of the file`);
  }
  const reader = new WindowReader(file, h.snapshotsOffset, available);
  const entries: SnapshotEntry[] = [];
  const truncated: number[] = [];
  let off = 0;
  for (let i = 0; i < h.nbSnapshots; i++) {
    off = alignUp(off, ENTRY_ALIGN);
    const where = (field: string, v: number, why: string) => badField(file.path, `snapshot ${i} ${field}`, v, why);
    const fixed = await reader.get(off, C.SNAPSHOT_HEADER_SIZE, () => where('header', off, 'runs past the end of the file'));
    const idSize = be16(fixed, 12);
    const nameSize = be16(fixed, 14);
    const extraDataSize = be32(fixed, 36);
    if (extraDataSize > MAX_SNAPSHOT_EXTRA_DATA && !opts.dropExcessExtra) {
      throw where('extra_data_size', extraDataSize, `more than ${MAX_SNAPSHOT_EXTRA_DATA} bytes`);
    }
    const varLen = extraDataSize + idSize + nameSize;
    const rest = await reader.get(off + C.SNAPSHOT_HEADER_SIZE, varLen, () =>
      where(nameSize > 0 ? 'name' : 'id_str', off, 'runs past the end of the snapshot table or file'),
    );
    const e = decodeEntry(fixed, rest, extraDataSize, idSize, nameSize);
    if (extraDataSize > MAX_SNAPSHOT_EXTRA_DATA) {
      e.extraDataSize = MAX_SNAPSHOT_EXTRA_DATA;
      e.unknownExtra = e.unknownExtra.slice(0, MAX_SNAPSHOT_EXTRA_DATA - C.SNAPSHOT_EXTRA_V3);
      truncated.push(i);
    }
    entries.push(e);
    off += C.SNAPSHOT_HEADER_SIZE + varLen;
  }
  return { entries, size: off, truncated };
}

function decodeEntry(fixed: Uint8Array, rest: Uint8Array, extraDataSize: number, idSize: number, nameSize: number): SnapshotEntry {
  const extra = rest.subarray(0, extraDataSize);
  const text = (o: number, n: number) => Buffer.from(rest.subarray(o, o + n)).toString('utf8');
  const e: SnapshotEntry = {
    l1TableOffset: num(be64n(fixed, 0)),
    l1Size: be32(fixed, 8),
    dateSec: be32(fixed, 16),
    dateNsec: be32(fixed, 20),
    vmClockNsec: num(be64n(fixed, 24)),
    vmStateSize: be32(fixed, 32),
    extraDataSize,
    id: text(extraDataSize, idSize),
    name: text(extraDataSize + idSize, nameSize),
    unknownExtra: extra.slice(Math.min(extraDataSize, C.SNAPSHOT_EXTRA_V3)),
  };
  if (extraDataSize >= 8) e.vmStateSize = num(be64n(extra, 0));
  if (extraDataSize >= 16) e.diskSize = num(be64n(extra, 8));
  if (extraDataSize >= 24) {
    const icount = be64n(extra, 16);
    if (icount !== ICOUNT_NONE) e.icount = num(icount);
  }
  return e;
}

/** Serves byte ranges of the table from a window read in large pieces, never past `limit`. */
class WindowReader {
  private buf = new Uint8Array(0);
  private start = 0;
  private static readonly WINDOW = 256 << 10;

  constructor(
    private readonly file: HostFile,
    private readonly base: number,
    private readonly limit: number,
  ) {}

  async get(off: number, n: number, past: () => ImageError): Promise<Uint8Array> {
    if (off + n > this.limit) throw past();
    if (off < this.start || off + n > this.start + this.buf.byteLength) {
      this.start = off;
      this.buf = new Uint8Array(Math.min(Math.max(n, WindowReader.WINDOW), this.limit - off));
      await this.file.read(this.base + off, this.buf);
    }
    return this.buf.subarray(off - this.start, off - this.start + n);
  }
}

/**
 * The table as bytes, entries 8-byte aligned. Like qemu, every entry (v2 images too) carries
 * the 24 known extra bytes; `diskSize` defaults to `currentSize` where an entry lacks it.
 */
export function serializeSnapshotTable(entries: SnapshotEntry[], currentSize: number): Uint8Array {
  const enc = entries.map((e) => {
    const id = Buffer.from(e.id, 'utf8');
    const name = Buffer.from(e.name, 'utf8');
    const extraSize = C.SNAPSHOT_EXTRA_V3 + e.unknownExtra.byteLength;
    return { e, id, name, extraSize, len: C.SNAPSHOT_HEADER_SIZE + extraSize + id.byteLength + name.byteLength };
  });
  const total = enc.reduce((t, x) => alignUp(t, ENTRY_ALIGN) + x.len, 0);
  const out = new Uint8Array(total);
  let off = 0;
  for (const { e, id, name, extraSize } of enc) {
    off = alignUp(off, ENTRY_ALIGN);
    setBe64(out, off, e.l1TableOffset);
    setBe32(out, off + 8, e.l1Size);
    setBe16(out, off + 12, id.byteLength);
    setBe16(out, off + 14, name.byteLength);
    setBe32(out, off + 16, e.dateSec);
    setBe32(out, off + 20, e.dateNsec);
    setBe64(out, off + 24, e.vmClockNsec);
    setBe32(out, off + 32, Math.min(e.vmStateSize, 0xffffffff));
    setBe32(out, off + 36, extraSize);
    let p = off + C.SNAPSHOT_HEADER_SIZE;
    setBe64(out, p, e.vmStateSize);
    setBe64(out, p + 8, e.diskSize ?? currentSize);
    setBe64(out, p + 16, e.icount === undefined ? ICOUNT_NONE : BigInt(e.icount));
    out.set(e.unknownExtra, p + C.SNAPSHOT_EXTRA_V3);
    p += extraSize;
    out.set(id, p);
    out.set(name, p + id.byteLength);
    off = p + id.byteLength + name.byteLength;
  }
  return out;
}

/** Header offset of nb_snapshots (u32), followed by snapshots_offset (u64). */
const HEADER_NB_SNAPSHOTS = 60;

/**
 * Writes `entries` as a new table in fresh clusters, points the header at it (one 12-byte
 * write) and frees the old table's clusters (qemu's qcow2_write_snapshots). Crash-safe: the
 * new table and its refcounts are durable before the header switches.
 */
export async function replaceSnapshotTable(space: FileSpace, h: Qcow2Header, oldSize: number, entries: SnapshotEntry[]): Promise<void> {
  const { file, clusterSize } = space;
  const bytes = serializeSnapshotTable(entries, h.size);
  const clusters = divCeil(bytes.byteLength, clusterSize);
  let offset = 0;
  for (let i = 0; i < clusters; i++) {
    const at = space.allocate(1);
    if (i === 0) offset = at;
  }
  await space.commit();
  if (bytes.byteLength > 0) await file.write(offset, bytes);
  await file.flush();
  const pointer = new Uint8Array(12);
  setBe32(pointer, 0, entries.length);
  setBe64(pointer, 4, entries.length ? offset : 0);
  await file.write(HEADER_NB_SNAPSHOTS, pointer);
  await file.flush();
  const oldFirst = h.snapshotsOffset / clusterSize;
  for (let k = oldFirst; oldSize > 0 && k < oldFirst + divCeil(oldSize, clusterSize); k++) space.setCount(k, Math.max(0, space.imrt.get(k) - 1));
  await space.commit();
  h.nbSnapshots = entries.length;
  h.snapshotsOffset = entries.length ? offset : 0;
}

/**
 * Checks what opening a snapshot would rely on: every L1 table cluster-aligned, no larger than
 * qemu allows, inside the file, and overlapping neither the header, the active L1 table, the
 * refcount table, the snapshot table nor another snapshot's L1 table.
 */
export function validateSnapshotL1Tables(table: SnapshotTable, h: Qcow2Header, fileSize: number, file: string): void {
  const clusterSize = 2 ** h.clusterBits;
  const claimed: { what: string; start: number; end: number }[] = [
    { what: 'the header', start: 0, end: clusterSize },
    { what: 'the refcount table', start: h.refcountTableOffset, end: h.refcountTableOffset + h.refcountTableClusters * clusterSize },
    { what: 'the snapshot table', start: h.snapshotsOffset, end: alignUp(h.snapshotsOffset + table.size, clusterSize) },
  ];
  if (h.l1Size > 0) claimed.push({ what: 'the active L1 table', start: h.l1TableOffset, end: h.l1TableOffset + h.l1Size * L1_ENTRY_SIZE });
  table.entries.forEach((e, i) => {
    const field = `snapshot ${i} (${e.name}) l1_table_offset`;
    if (e.l1Size * L1_ENTRY_SIZE > C.MAX_L1_BYTES) {
      throw badField(file, `snapshot ${i} (${e.name}) l1_size`, e.l1Size, `L1 table larger than ${C.MAX_L1_BYTES} bytes`);
    }
    if (e.l1Size === 0) return;
    if (e.l1TableOffset % clusterSize !== 0) throw badField(file, field, e.l1TableOffset, 'not aligned to a cluster');
    const end = e.l1TableOffset + e.l1Size * L1_ENTRY_SIZE;
    if (end > fileSize) throw badField(file, field, e.l1TableOffset, `L1 table ends past the end of the file (${fileSize} bytes)`);
    const hit = claimed.find((c) => e.l1TableOffset < c.end && c.start < end);
    if (hit) throw badField(file, field, e.l1TableOffset, `L1 table overlaps ${hit.what}`);
    claimed.push({ what: `the L1 table of snapshot ${i} (${e.name})`, start: e.l1TableOffset, end });
  });
}

/** Reads the table and validates its L1 tables: what `info` and `convert -l` need. */
export async function loadSnapshots(file: HostFile, h: Qcow2Header, fileSize: number): Promise<SnapshotTable> {
  const table = await readSnapshotTable(file, h, fileSize);
  validateSnapshotL1Tables(table, h, fileSize, file.path);
  return table;
}

/** The entries as `img info` shows them. */
export function snapshotInfos(entries: SnapshotEntry[]): SnapshotInfo[] {
  return entries.map((e) => ({
    id: e.id,
    name: e.name,
    vmStateSize: e.vmStateSize,
    dateSec: e.dateSec,
    dateNsec: e.dateNsec,
    vmClockNsec: e.vmClockNsec,
    ...(e.icount !== undefined ? { icount: e.icount } : {}),
    ...(e.diskSize !== undefined ? { diskSize: e.diskSize } : {}),
  }));
}

/**
 * Finds a snapshot as qemu's `-l` does: an exact id match first, then a name match.
 * Throws NOT_FOUND naming the snapshot when neither matches.
 */
export function findSnapshot(entries: SnapshotEntry[], idOrName: string, file: string): SnapshotEntry {
  const hit = entries.find((e) => e.id === idOrName) ?? entries.find((e) => e.name === idOrName);
  if (!hit) throw new ImageError('NOT_FOUND', `snapshot '${idOrName}' not found`, { file, field: 'snapshot', value: idOrName });
  return hit;
}
