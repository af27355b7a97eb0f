/**
 * Internal snapshots on the open engine (qemu's block/qcow2-snapshot.c): create, apply and
 * delete, and emptying the active layer (what `commit` does to the image it committed).
 *
 * A snapshot is a copy of the active L1 table: every L2 table and cluster it reaches gains a
 * reference, so the refcount of a cluster is the number of (L1 table, L2 entry) paths that
 * reach it, and COPIED is set in the active tables exactly where a refcount is 1 (the engine
 * then copies on write everything else). Every operation walks a whole L1 tree twice: first
 * to collect and check every reference it would change (nothing is written when a table is
 * corrupt or a count would overflow or go below zero), then to change the counts and
 * recompute COPIED (qemu's qcow2_update_snapshot_refcount).
 *
 * Crash safety — at every point the file is consistent, or leaks clusters, or lacks COPIED
 * on clusters whose refcount is 1 (a needless copy on the next write; check -r fixes both):
 *  - create: COPIED is cleared in the active tables first, then the L1 copy and the
 *    increments are made durable, and only then does the snapshot table (header switch)
 *    name the copy (qemu clears COPIED after the increments, which briefly leaves it set
 *    on shared clusters);
 *  - delete: the snapshot leaves the table first, then its references are dropped, then
 *    COPIED is set where the active layer is the only user left;
 *  - apply: the snapshot's tree gains its references, a new active L1 table is written to
 *    fresh clusters and the header switches size and L1 table in one sector write; only
 *    then does the old active tree lose its references.
 * test/snapshot/crash.test.ts cuts each operation after every one of its writes.
 * Clusters freed along the way are punched out of the file, and free clusters at its end are
 * cut off, so create/delete cycles do not grow the file.
 *
 * The caller (Qcow2Image) holds the engine's gate exclusively with nothing pending, and
 * starts a fresh engine afterwards: these functions leave caches that are only good for them.
 */
import { ImageError } from '../../block/errors';
import { SnapshotSelector } from '../../block/image';
import { be64n, divCeil, setBe32, setBe64 } from '../../io/bytes';
import * as C from './constants';
import { Qcow2Core } from './core';
import { l1EntriesFor } from './header';
import { decodeCompressed, scanEntry, setCopied } from './l2';
import { Release } from './refcount';
import { loadSnapshots, MAX_SNAPSHOT_TABLE_BYTES, serializeSnapshotTable, SnapshotEntry, SnapshotTable } from './snapshot-table';

export type { SnapshotSelector };

/** qemu's QEMUSnapshotInfo.name is 256 bytes with its NUL: longer names do not survive qemu. */
export const MAX_SNAPSHOT_NAME_BYTES = 255;

/** Header offsets: size (u64) … l1_table_offset (u64) span bytes 24..48; nb_snapshots (u32) and snapshots_offset (u64) 60..72. */
const HDR_SIZE = 24;
const HDR_SIZE_TO_L1_END = 24;
const HDR_NB_SNAPSHOTS = 60;
const L1_ENTRY_SIZE = 8;
const U64 = 2n ** 64n;

// ---- finding snapshots and naming new ones -----------------------------------------------

/**
 * The snapshot a selector names. A string is matched as qemu-img matches it: `apply` and
 * `convert -l` try the ids first, then the names (find_snapshot_by_id_or_name); `delete`
 * only the names (bdrv_snapshot_find). An object matches every field it gives.
 */
export function selectSnapshot(entries: SnapshotEntry[], sel: SnapshotSelector, order: 'id-first' | 'name-only', file: string): SnapshotEntry {
  let hit: SnapshotEntry | undefined;
  let shown: string;
  if (typeof sel === 'string') {
    const byId = entries.find((e) => e.id === sel);
    const byName = entries.find((e) => e.name === sel);
    hit = order === 'id-first' ? (byId ?? byName) : byName;
    shown = sel;
  } else {
    if (sel.id === undefined && sel.name === undefined) throw new ImageError('INVALID_ARGUMENT', 'a snapshot is selected by its id, its name or both', { file });
    hit = entries.find((e) => (sel.id === undefined || e.id === sel.id) && (sel.name === undefined || e.name === sel.name));
    shown = [sel.id !== undefined ? `id ${sel.id}` : '', sel.name !== undefined ? `name ${sel.name}` : ''].filter(Boolean).join(', ');
  }
  if (!hit) throw new ImageError('NOT_FOUND', `snapshot '${shown}' not found`, { file, field: 'snapshot', value: shown });
  return hit;
}

/** C's strtoul(s, NULL, 10) on 64-bit Linux: leading space, a sign, digits; saturating. */
function strtoul(s: string): bigint {
  const m = /^[ \t\n\v\f\r]*([+-]?)(\d*)/.exec(s)!;
  if (m[2] === '') return 0n;
  let v = BigInt(m[2]);
  if (v >= U64) return U64 - 1n;
  if (m[1] === '-') v = (U64 - v) % U64;
  return v;
}

/** qemu's find_new_snapshot_id: one more than the largest id read as a number. */
export function nextSnapshotId(entries: SnapshotEntry[]): string {
  let max = 0n;
  for (const e of entries) {
    const id = strtoul(e.id);
    if (id > max) max = id;
  }
  return ((max + 1n) % U64).toString();
}

// ---- walking an L1 tree --------------------------------------------------------------------

/** A growable list of host cluster indexes. */
class ClusterList {
  private buf = new Float64Array(1024);
  length = 0;

  push(c: number): void {
    if (this.length === this.buf.length) {
      const next = new Float64Array(this.buf.length * 2);
      next.set(this.buf);
      this.buf = next;
    }
    this.buf[this.length++] = c;
  }

  sorted(): Float64Array {
    return this.buf.slice(0, this.length).sort();
  }
}

/** Calls fn(cluster, count) for each distinct cluster of a sorted list (awaiting it only when it returns a promise). */
async function eachDistinct(refs: Float64Array, fn: (cluster: number, count: number) => Promise<void> | void): Promise<void> {
  for (let i = 0; i < refs.length; ) {
    let k = 1;
    while (i + k < refs.length && refs[i + k] === refs[i]) k++;
    const pending = fn(refs[i], k);
    if (pending) await pending;
    i += k;
  }
}

/**
 * Refcounts read a whole refcount block at a time (walks visit clusters mostly in order).
 * Only good until the next refcount change: make a new one after each.
 */
class Counts {
  private block = -1;
  private counts: Float64Array = new Float64Array(0);
  private readonly perBlock: number;

  constructor(private readonly core: Qcow2Core) {
    this.perBlock = core.g.refcountBlockEntries;
  }

  /** The count when its block is at hand, else undefined (then get() it). */
  peek(cluster: number): number | undefined {
    return Math.floor(cluster / this.perBlock) === this.block ? this.counts[cluster % this.perBlock] : undefined;
  }

  async get(cluster: number): Promise<number> {
    const b = Math.floor(cluster / this.perBlock);
    if (b !== this.block) {
      this.counts = await this.core.refcounts.blockCounts(b);
      this.block = b;
    }
    return this.counts[cluster % this.perBlock];
  }
}

function corrupt(core: Qcow2Core, what: string): ImageError {
  return new ImageError('CORRUPT', what, { file: core.file.path });
}

/** The L2 table offset of an L1 entry (0: none), checked to be aligned and inside the file. */
function l2OffsetOf(core: Qcow2Core, entry: bigint, i: number, where: string): number {
  const off = Number(entry & C.L1E_OFFSET_MASK);
  if (off === 0) return 0;
  if (off % core.g.clusterSize !== 0 || off >= core.end) {
    throw corrupt(core, `${where}: entry ${i} points to an L2 table at 0x${off.toString(16)}, ${off % core.g.clusterSize ? 'not cluster-aligned' : 'past the end of the file'}`);
  }
  return off;
}

export async function readL1(core: Qcow2Core, offset: number, entries: number): Promise<bigint[]> {
  const bytes = new Uint8Array(entries * L1_ENTRY_SIZE);
  if (entries > 0) await core.file.read(offset, bytes);
  const out: bigint[] = new Array(entries);
  for (let i = 0; i < entries; i++) out[i] = be64n(bytes, i * L1_ENTRY_SIZE);
  return out;
}

function activeL1(core: Qcow2Core): bigint[] {
  const out: bigint[] = new Array(core.tables.l1Size);
  for (let i = 0; i < out.length; i++) out[i] = core.tables.l1Entry(i);
  return out;
}

/**
 * Every reference an L1 tree makes — its L2 tables and each cluster they map (compressed
 * clusters: every host cluster the data touches) — as a sorted list of cluster indexes.
 * Throws CORRUPT, before anything is changed, when an entry points somewhere impossible.
 */
async function collectRefs(core: Qcow2Core, l1: bigint[], where: string): Promise<Float64Array> {
  const { g } = core;
  const cs = g.clusterSize;
  const refs = new ClusterList();
  for (let i = 0; i < l1.length; i++) {
    const l2 = l2OffsetOf(core, l1[i], i, where);
    if (l2 === 0) continue;
    refs.push(l2 / cs);
    await core.tables.l2.with(l2, (table) => {
      for (let j = 0; j < g.l2Entries; j++) {
        const e = scanEntry(table, j, g, core.hasDataFile);
        if (e.type === 'normal' || e.type === 'zero-alloc') {
          if (core.hasDataFile) continue; // clusters of an external data file have no refcounts
          if (e.offset % cs !== 0 || e.offset >= core.end) {
            throw corrupt(core, `${where}: L2 table at 0x${l2.toString(16)} entry ${j} points to 0x${e.offset.toString(16)}, ${e.offset % cs ? 'not cluster-aligned' : 'past the end of the file'}`);
          }
          refs.push(e.offset / cs);
        } else if (e.type === 'compressed') {
          const d = decodeCompressed(e, g.clusterBits);
          if (core.hasDataFile || d.offset === 0 || d.offset >= core.end) {
            throw corrupt(core, `${where}: L2 table at 0x${l2.toString(16)} entry ${j} is a compressed cluster at 0x${d.offset.toString(16)}, past the end of the file`);
          }
          for (let c = d.firstCluster; c <= d.lastCluster; c++) refs.push(c);
        }
      }
    });
  }
  return refs.sorted();
}

/** Refuses, before anything is written, a change that would take a refcount below 0 or past the width's maximum. */
async function checkCounts(core: Qcow2Core, refs: Float64Array, addend: 1 | -1): Promise<void> {
  const max = core.refcounts.maxRefcount;
  const cs = core.g.clusterSize;
  const counts = new Counts(core);
  const check = (c: number, k: number, now: number): void => {
    if (now === 0) {
      throw corrupt(core, `host cluster 0x${(c * cs).toString(16)} is in use but has refcount 0 (repair the image with check -r all)`);
    }
    if (now + addend * k < 0) {
      throw corrupt(core, `host cluster 0x${(c * cs).toString(16)} has refcount ${now} but ${k} references to it would be dropped (repair the image with check -r all)`);
    }
    if (now + addend * k > max) {
      throw new ImageError(
        'UNSUPPORTED',
        `the refcount of host cluster 0x${(c * cs).toString(16)} would exceed ${max}, the most refcount_bits=${core.g.refcountBits} holds (raise it with amend -o refcount_bits=16)`,
        { file: core.file.path, field: 'refcount_bits', value: core.g.refcountBits },
      );
    }
  };
  await eachDistinct(refs, (c, k) => {
    const now = counts.peek(c);
    if (now === undefined) return counts.get(c).then((n) => check(c, k, n));
    check(c, k, now);
  });
}

/** Adds `addend` to the refcount of every listed reference (a cluster listed k times changes by k). */
async function applyCounts(core: Qcow2Core, refs: Float64Array, addend: 1 | -1): Promise<void> {
  for (let layer = 0; ; layer++) {
    const runs: Release[] = [];
    await eachDistinct(refs, (c, k) => {
      if (k <= layer) return;
      const last = runs[runs.length - 1];
      if (last && last.cluster + last.count === c) last.count++;
      else runs.push({ cluster: c, count: 1 });
    });
    if (runs.length === 0) return;
    if (addend > 0) await core.refcounts.retain(runs);
    else await core.refcounts.release(runs);
  }
}

/**
 * Recomputes COPIED in every L2 table of the tree that is still in use (set exactly on
 * entries whose cluster has refcount 1; never on compressed ones) and returns the L1 entries
 * with COPIED recomputed the same way. Tables whose refcount reached 0 leave the cache.
 */
async function refreshCopied(core: Qcow2Core, l1: bigint[]): Promise<bigint[]> {
  const { g } = core;
  const cs = g.clusterSize;
  const out = l1.slice();
  const counts = new Counts(core);
  for (let i = 0; i < l1.length; i++) {
    const off = Number(l1[i] & C.L1E_OFFSET_MASK);
    if (off === 0) continue;
    const rc = await counts.get(off / cs);
    out[i] = (l1[i] & ~C.OFLAG_COPIED) | (rc === 1 ? C.OFLAG_COPIED : 0n);
    if (rc === 0) {
      core.tables.l2.forget(off);
      continue;
    }
    // With an external data file, COPIED on offset 0 marks an allocated cluster: left alone.
    if (core.hasDataFile) continue;
    await core.tables.l2.with(off, async (table) => {
      let dirty = false;
      for (let j = 0; j < g.l2Entries; j++) {
        const e = scanEntry(table, j, g, false);
        if (e.type === 'unallocated' && !e.copied) continue;
        const want = (e.type === 'normal' || e.type === 'zero-alloc') && (counts.peek(e.offset / cs) ?? (await counts.get(e.offset / cs))) === 1;
        if (e.copied !== want) {
          setCopied(table, j, g, want);
          dirty = true;
        }
      }
      if (dirty) core.tables.l2.markDirty(off);
    });
  }
  return out;
}

/** Clears COPIED in every L2 entry of the tree and returns its L1 entries without COPIED. */
async function clearCopied(core: Qcow2Core, l1: bigint[]): Promise<bigint[]> {
  const { g } = core;
  for (const e of l1) {
    const off = Number(e & C.L1E_OFFSET_MASK);
    if (off === 0 || core.hasDataFile) continue;
    await core.tables.l2.with(off, (table) => {
      let dirty = false;
      for (let j = 0; j < g.l2Entries; j++) {
        if (scanEntry(table, j, g, false).copied) {
          setCopied(table, j, g, false);
          dirty = true;
        }
      }
      if (dirty) core.tables.l2.markDirty(off);
    });
  }
  return l1.map((e) => e & ~C.OFLAG_COPIED);
}

// ---- durable steps -----------------------------------------------------------------------

/** Writes every dirty L2 table (after the refcounts), then the dirty active L1 entries, durably. */
async function settle(core: Qcow2Core): Promise<void> {
  await core.tables.l2.flush();
  const l1 = core.tables.snapshotL1();
  if (l1.size > 0) {
    await core.syncIfNeeded();
    await core.tables.writeL1(l1);
  }
  await core.sync();
}

function l1Bytes(entries: bigint[], size: number): Uint8Array {
  const bytes = new Uint8Array(size * L1_ENTRY_SIZE);
  entries.forEach((e, i) => setBe64(bytes, i * L1_ENTRY_SIZE, e));
  return bytes;
}

/** Writes an L1 table into freshly allocated clusters; returns its offset (0 for an empty table). */
async function writeNewL1(core: Qcow2Core, bytes: Uint8Array): Promise<number> {
  if (bytes.byteLength === 0) return 0;
  const at = await core.refcounts.allocateContiguous(divCeil(bytes.byteLength, core.g.clusterSize));
  await core.file.write(at, bytes);
  return at;
}

function clustersOf(core: Qcow2Core, offset: number, bytes: number): Release[] {
  const cs = core.g.clusterSize;
  return bytes > 0 && offset > 0 ? [{ cluster: Math.floor(offset / cs), count: divCeil(offset % cs + bytes, cs) }] : [];
}

/**
 * Writes `entries` as the new snapshot table in fresh clusters, switches the header to it
 * (nb_snapshots and snapshots_offset, one 12-byte write) once it is durable, then frees the
 * old table. Returns the freed clusters.
 */
async function writeSnapshotTable(core: Qcow2Core, entries: SnapshotEntry[], old: SnapshotTable): Promise<Release[]> {
  const h = core.header;
  const cs = core.g.clusterSize;
  const bytes = serializeSnapshotTable(entries, h.size);
  if (bytes.byteLength > MAX_SNAPSHOT_TABLE_BYTES) {
    throw new ImageError('UNSUPPORTED', `the snapshot table would take ${bytes.byteLength} bytes, more than the ${MAX_SNAPSHOT_TABLE_BYTES} qemu accepts`, {
      file: core.file.path,
    });
  }
  let offset = 0;
  if (entries.length > 0) {
    const clusters = divCeil(bytes.byteLength, cs);
    offset = await core.refcounts.allocateContiguous(clusters);
    const padded = new Uint8Array(clusters * cs);
    padded.set(bytes);
    await core.file.write(offset, padded);
  }
  await core.sync();
  const pointer = new Uint8Array(12);
  setBe32(pointer, 0, entries.length);
  setBe64(pointer, 4, offset);
  await core.file.write(HDR_NB_SNAPSHOTS, pointer);
  await core.sync();
  const freed = h.nbSnapshots > 0 ? clustersOf(core, h.snapshotsOffset, old.size) : [];
  h.nbSnapshots = entries.length;
  h.snapshotsOffset = offset;
  if (freed.length > 0) await core.refcounts.release(freed);
  return freed;
}

/** Punches out of the file every listed cluster that is free now (qemu discards what snapshots free). */
async function punchFree(core: Qcow2Core, candidates: Float64Array): Promise<void> {
  const cs = core.g.clusterSize;
  const runs: Release[] = [];
  const counts = new Counts(core);
  await eachDistinct(candidates, async (c) => {
    if ((await counts.get(c)) !== 0) return;
    const last = runs[runs.length - 1];
    if (last && last.cluster + last.count === c) last.count++;
    else runs.push({ cluster: c, count: 1 });
  });
  for (const r of runs) await core.file.punchHole(r.cluster * cs, r.count * cs);
}

/** Cuts free clusters off the end of the file. */
async function trimFile(core: Qcow2Core): Promise<void> {
  const cs = core.g.clusterSize;
  const size = await core.file.size();
  const counts = new Counts(core);
  let k = divCeil(size, cs) - 1;
  while (k > 0 && (await counts.get(k)) === 0) k--;
  const end = (k + 1) * cs;
  if (end < size) {
    await core.file.truncate(end);
    await core.file.flush();
    core.end = Math.min(core.end, end);
  }
}

function mergeRefs(...lists: (Float64Array | Release[])[]): Float64Array {
  const all = new ClusterList();
  for (const l of lists) {
    if (l instanceof Float64Array) l.forEach((c) => all.push(c));
    else for (const r of l) for (let c = r.cluster; c < r.cluster + r.count; c++) all.push(c);
  }
  return all.sorted();
}

function refuseDataFile(core: Qcow2Core): void {
  if (core.hasDataFile) {
    throw new ImageError('UNSUPPORTED', 'internal snapshots are not supported in images with an external data file', { file: core.file.path });
  }
}

// ---- the operations ------------------------------------------------------------------------

export interface NewSnapshot {
  name: string;
  /** When the snapshot was taken (default now). */
  date?: Date;
}

/** qcow2_snapshot_create: the active disk as it is now, under a new id. */
export async function createSnapshot(core: Qcow2Core, req: NewSnapshot): Promise<SnapshotEntry> {
  refuseDataFile(core);
  if (Buffer.byteLength(req.name, 'utf8') > MAX_SNAPSHOT_NAME_BYTES) {
    throw new ImageError('INVALID_ARGUMENT', `snapshot name is longer than ${MAX_SNAPSHOT_NAME_BYTES} bytes`, { file: core.file.path, field: 'name' });
  }
  await settle(core);
  const table = await loadSnapshots(core.file, core.header, await core.file.size());
  if (table.entries.length >= C.MAX_SNAPSHOTS) {
    throw new ImageError('UNSUPPORTED', `an image holds at most ${C.MAX_SNAPSHOTS} snapshots`, { file: core.file.path, field: 'nb_snapshots' });
  }
  const l1 = activeL1(core);
  const refs = await collectRefs(core, l1, 'the active L1 table');
  await checkCounts(core, refs, 1);

  // Everything the active tree reaches is about to be shared: COPIED goes first, so a crash
  // before the increments leaves only flags missing (a needless copy), never a flag on a
  // shared cluster.
  const shared = await clearCopied(core, l1);
  shared.forEach((e, i) => {
    if (e !== l1[i]) core.tables.setL1(i, e);
  });
  await settle(core);
  // The snapshot's own L1 table, then the references it adds.
  const l1Offset = await writeNewL1(core, l1Bytes(shared, l1.length));
  await applyCounts(core, refs, 1);
  await core.sync();

  const ms = (req.date ?? new Date()).getTime();
  const entry: SnapshotEntry = {
    id: nextSnapshotId(table.entries),
    name: req.name,
    l1TableOffset: l1Offset,
    l1Size: l1.length,
    dateSec: Math.floor(ms / 1000),
    dateNsec: (ms % 1000) * 1e6,
    vmClockNsec: 0,
    vmStateSize: 0,
    diskSize: core.size,
    icount: 0,
    extraDataSize: C.SNAPSHOT_EXTRA_V3,
    unknownExtra: new Uint8Array(0),
  };
  const freed = await writeSnapshotTable(core, [...table.entries, entry], table);
  await punchFree(core, mergeRefs(freed));
  return entry;
}

/** qcow2_snapshot_delete: the snapshot leaves the table, then what only it held is freed. */
export async function deleteSnapshot(core: Qcow2Core, sel: SnapshotSelector): Promise<SnapshotEntry> {
  refuseDataFile(core);
  await settle(core);
  const table = await loadSnapshots(core.file, core.header, await core.file.size());
  const snap = selectSnapshot(table.entries, sel, 'name-only', core.file.path);
  const where = `the L1 table of snapshot ${snap.id} (${snap.name})`;
  const snapL1 = await readL1(core, snap.l1TableOffset, snap.l1Size);
  const refs = await collectRefs(core, snapL1, where);
  await checkCounts(core, refs, -1);

  const freedTable = await writeSnapshotTable(
    core,
    table.entries.filter((e) => e !== snap),
    table,
  );
  await applyCounts(core, refs, -1);
  const snapL1Clusters = clustersOf(core, snap.l1TableOffset, snap.l1Size * L1_ENTRY_SIZE);
  if (snapL1Clusters.length > 0) await core.refcounts.release(snapL1Clusters);
  await refreshCopied(core, snapL1);
  // Clusters the active layer shared only with this snapshot are its own again.
  const l1 = activeL1(core);
  const fresh = await refreshCopied(core, l1);
  fresh.forEach((e, i) => {
    if (e !== l1[i]) core.tables.setL1(i, e);
  });
  await settle(core);
  await punchFree(core, mergeRefs(refs, freedTable, snapL1Clusters));
  await trimFile(core);
  return snap;
}

/**
 * qcow2_snapshot_goto: the active disk becomes the snapshot's (its virtual size too); what
 * only the old active disk held is freed. The snapshot stays.
 */
export async function applySnapshot(core: Qcow2Core, sel: SnapshotSelector): Promise<SnapshotEntry> {
  refuseDataFile(core);
  await settle(core);
  const h = core.header;
  const table = await loadSnapshots(core.file, h, await core.file.size());
  const snap = selectSnapshot(table.entries, sel, 'id-first', core.file.path);
  const size = snap.diskSize ?? h.size;
  if (size !== h.size && h.version === 2) {
    throw new ImageError('UNSUPPORTED', "Can't resize a v2 image which has snapshots (the snapshot's disk size differs)", { file: core.file.path });
  }
  const l1Size = Math.max(core.tables.l1Size, snap.l1Size, l1EntriesFor(size, core.g));
  if (l1Size * L1_ENTRY_SIZE > C.MAX_L1_BYTES) {
    throw new ImageError('UNSUPPORTED', `the image would need an L1 table larger than ${C.MAX_L1_BYTES} bytes`, { file: core.file.path });
  }
  const snapL1 = await readL1(core, snap.l1TableOffset, snap.l1Size);
  const oldL1 = activeL1(core);
  const snapRefs = await collectRefs(core, snapL1, `the L1 table of snapshot ${snap.id} (${snap.name})`);
  const oldRefs = await collectRefs(core, oldL1, 'the active L1 table');
  // Increments come first and decrements after, so checking each against today's counts suffices.
  await checkCounts(core, snapRefs, 1);
  await checkCounts(core, oldRefs, -1);

  await applyCounts(core, snapRefs, 1);
  await core.sync();
  const shared = await refreshCopied(core, snapL1);
  await settle(core);

  // The new active L1 table, in fresh clusters; the header switches size and table at once.
  const bytes = l1Bytes(shared, l1Size);
  const at = await writeNewL1(core, bytes);
  await core.sync();
  const hdr = new Uint8Array(HDR_SIZE_TO_L1_END);
  setBe64(hdr, 0, size);
  setBe32(hdr, 8, h.cryptMethod);
  setBe32(hdr, 12, l1Size);
  setBe64(hdr, 16, at);
  await core.file.write(HDR_SIZE, hdr);
  await core.sync();
  const oldL1Clusters = clustersOf(core, h.l1TableOffset, h.l1Size * L1_ENTRY_SIZE);
  h.size = size;
  h.l1Size = l1Size;
  h.l1TableOffset = at;
  core.tables.replaceL1(bytes);

  await applyCounts(core, oldRefs, -1);
  if (oldL1Clusters.length > 0) await core.refcounts.release(oldL1Clusters);
  await refreshCopied(core, oldL1);
  const active = activeL1(core);
  const fresh = await refreshCopied(core, active);
  fresh.forEach((e, i) => {
    if (e !== active[i]) core.tables.setL1(i, e);
  });
  await settle(core);
  await punchFree(core, mergeRefs(oldRefs, oldL1Clusters));
  await trimFile(core);
  return snap;
}

/**
 * Drops every mapping of the active layer, so it reads through to its backing file (qemu's
 * bdrv_make_empty, which `commit` does to the image it committed). The L1 table is cleared
 * on disk first; its references are dropped after. Snapshots keep their clusters.
 */
export async function makeEmpty(core: Qcow2Core): Promise<void> {
  await settle(core);
  const l1 = activeL1(core);
  const refs = await collectRefs(core, l1, 'the active L1 table');
  await checkCounts(core, refs, -1);
  const zeros = new Uint8Array(l1.length * L1_ENTRY_SIZE);
  if (zeros.byteLength > 0) await core.file.write(core.header.l1TableOffset, zeros);
  await core.sync();
  core.tables.replaceL1(zeros);
  await applyCounts(core, refs, -1);
  await refreshCopied(core, l1);
  await settle(core);
  await punchFree(core, refs);
  await trimFile(core);
}
