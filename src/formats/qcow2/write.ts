/**
 * The write side of the qcow2 engine: in-place writes, cluster allocation with copy-on-write,
 * zeroing and discard, compressed clusters, preallocation.
 *
 * Order on disk for a new cluster: its refcount (written through by allocate), then its data,
 * then the L2 entry (cached, written at flush or eviction). A cluster that loses a reference
 * is handed to deferRelease, applied after the L2 change is on disk.
 */
import { CompressorPool } from '../../block/compress';
import { ImageError } from '../../block/errors';
import { alignDown, alignUp } from '../../io/bytes';
import { Piece, Qcow2Core } from './core';
import {
  ALL_SUBCLUSTERS,
  decodeCompressed,
  encodeCompressed,
  getL2,
  hasZeroFlag,
  hostOffset,
  isCompressed,
  isCopied,
  L2Entry,
  setL2,
  standardEntry,
  subclusterMask,
} from './l2';

interface HostWrite {
  host: number;
  data: Uint8Array;
}

/** Appends a host write, merging it into the previous one when both host and buffer continue it. */
function addWrite(list: HostWrite[], host: number, data: Uint8Array): void {
  const last = list[list.length - 1];
  if (last && last.host + last.data.byteLength === host && last.data.buffer === data.buffer && last.data.byteOffset + last.data.byteLength === data.byteOffset) {
    last.data = new Uint8Array(data.buffer, last.data.byteOffset, last.data.byteLength + data.byteLength);
  } else list.push({ host, data });
}

async function runWrites(core: Qcow2Core, list: HostWrite[]): Promise<void> {
  if (list.length === 0) return;
  await Promise.all(list.map((w) => core.dataFile.write(w.host, w.data)));
  core.unsynced = true;
}

/** References an entry holds on host clusters (none with an external data file). */
export function releaseOld(core: Qcow2Core, e: L2Entry): void {
  if (core.hasDataFile) return;
  const cs = core.g.clusterSize;
  if (isCompressed(e)) {
    const d = decodeCompressed(e, core.g.clusterBits);
    core.deferRelease({ cluster: d.firstCluster, count: d.lastCluster - d.firstCluster + 1 });
  } else if (hostOffset(e) !== 0) core.deferRelease({ cluster: hostOffset(e) / cs, count: 1 });
}

/** Subclusters [first, last] that bytes [a, b) of a cluster touch. */
function subclusters(core: Qcow2Core, a: number, b: number): [number, number] {
  const sc = core.g.subclusterSize;
  return [Math.floor(a / sc), Math.floor((b - 1) / sc)];
}

/** The host offset to write bytes [a, b) of a cluster in place, or -1 when the write must allocate. */
function inPlace(core: Qcow2Core, start: number, e: L2Entry, a: number, b: number): number {
  const host = hostOffset(e);
  if (!core.allocated(e) || !isCopied(e)) return -1;
  core.checkHost(start, host);
  core.checkOverlap(start, host);
  if (!core.g.extendedL2) return hasZeroFlag(e) ? -1 : host;
  const [s0, s1] = subclusters(core, a, b);
  const m = subclusterMask(s0, s1);
  return (e.alloc & m) === m ? host : -1;
}

/** Writes guest bytes; the range must lie inside the device. */
export async function writeData(core: Qcow2Core, offset: number, data: Uint8Array): Promise<void> {
  const span = core.tables.tableSpan;
  const jobs: Promise<void>[] = [];
  for (let pos = offset, end = offset + data.byteLength; pos < end; ) {
    const tEnd = Math.min(end, (Math.floor(pos / span) + 1) * span);
    jobs.push(writeInTable(core, pos, data.subarray(pos - offset, tEnd - offset)));
    pos = tEnd;
  }
  await Promise.all(jobs);
}

/** A write inside one L2 table's range: in place where it can, allocating runs elsewhere. */
async function writeInTable(core: Qcow2Core, offset: number, data: Uint8Array): Promise<void> {
  const { g } = core;
  const cs = g.clusterSize;
  const l1i = Math.floor(offset / core.tables.tableSpan);
  const end = offset + data.byteLength;
  const table = await core.tables.l2Read(l1i);
  const fast: HostWrite[] = [];
  const runs: [number, number][] = [];
  for (let c = Math.floor(offset / cs); c * cs < end; c++) {
    const a = Math.max(offset, c * cs) - c * cs;
    const b = Math.min(end, (c + 1) * cs) - c * cs;
    const host = table ? inPlace(core, c * cs, getL2(table, c % g.l2Entries, g), a, b) : -1;
    if (host >= 0) addWrite(fast, host + a, data.subarray(c * cs + a - offset, c * cs + b - offset));
    else if (runs.length && runs[runs.length - 1][1] === c) runs[runs.length - 1][1] = c + 1;
    else runs.push([c, c + 1]);
  }
  await Promise.all([runWrites(core, fast), ...runs.map(([c0, c1]) => allocateAndWrite(core, l1i, c0, c1, offset, data))]);
}

interface Plan {
  c: number;
  old: L2Entry;
  /** Host cluster (set once allocated when `fresh`). */
  host: number;
  fresh: boolean;
  /** Bytes of the cluster to write [from, to), and of the request [a, b) inside them. */
  from: number;
  to: number;
  a: number;
  b: number;
  /** The subcluster bitmap halves the new entry gets. */
  alloc: number;
  zero: number;
}

/** Guest clusters [c0, c1) that need allocation or copy-on-write, under their cluster locks. */
async function allocateAndWrite(core: Qcow2Core, l1i: number, c0: number, c1: number, offset: number, data: Uint8Array): Promise<void> {
  const { g } = core;
  const cs = g.clusterSize;
  const end = offset + data.byteLength;
  const keys: number[] = [];
  for (let c = c0; c < c1; c++) keys.push(c);
  const unlock = await core.clusterLocks.acquire(keys);
  try {
    const tOff = await core.tables.l2Write(l1i);
    const table = await core.tables.l2.get(tOff);
    const plans: Plan[] = keys.map((c) => {
      const old = getL2(table, c % g.l2Entries, g);
      const a = Math.max(offset, c * cs) - c * cs;
      const b = Math.min(end, (c + 1) * cs) - c * cs;
      return planCluster(core, c, old, a, b);
    });
    const fresh = plans.filter((p) => p.fresh);
    if (fresh.length > 0) {
      const hosts = core.hasDataFile ? fresh.map((p) => p.c * cs) : await core.refcounts.allocate(fresh.length);
      fresh.forEach((p, i) => (p.host = hosts[i]));
    }
    const writes: HostWrite[] = [];
    const fills: Promise<void>[] = [];
    for (const p of plans) {
      const piece = data.subarray(p.c * cs + p.a - offset, p.c * cs + p.b - offset);
      if (p.from === p.a && p.to === p.b) {
        addWrite(writes, p.host + p.a, piece);
        continue;
      }
      const buf = new Uint8Array(p.to - p.from);
      addWrite(writes, p.host + p.from, buf);
      fills.push(readOld(core, p.c * cs, p.old, p.from, buf).then(() => buf.set(piece, p.a - p.from)));
    }
    await Promise.all(fills);
    await runWrites(core, writes);
    const t = await core.tables.l2.get(await core.tables.l2Write(l1i));
    for (const p of plans) {
      setL2(t, p.c % g.l2Entries, g, standardEntry(p.host, { copied: true }, p.alloc, p.zero));
      if (p.fresh) releaseOld(core, p.old);
    }
    core.tables.l2.markDirty(tOff);
  } finally {
    unlock();
  }
}

/** What a write of bytes [a, b) does to a cluster now mapped by `old`. */
function planCluster(core: Qcow2Core, c: number, old: L2Entry, a: number, b: number): Plan {
  const cs = core.g.clusterSize;
  const host = inPlace(core, c * cs, old, a, b);
  const p: Plan = { c, old, host, fresh: false, from: a, to: b, a, b, alloc: old.alloc, zero: old.zero };
  if (host >= 0) return p;
  const oldHost = hostOffset(old);
  const allocated = core.allocated(old);
  const reusable = allocated && isCopied(old);
  if (reusable) {
    core.checkHost(c * cs, oldHost);
    core.checkOverlap(c * cs, oldHost);
  }
  p.host = reusable ? oldHost : 0;
  p.fresh = !reusable;
  if (!core.g.extendedL2) {
    // The whole cluster is written: old contents (backing, zeroes, compressed, shared) around the request.
    p.from = 0;
    p.to = cs;
    return p;
  }
  const hadData = isCompressed(old) || (allocated && old.alloc !== 0);
  if (p.fresh && hadData) {
    // Copying a compressed or shared cluster: take all of it.
    p.from = 0;
    p.to = cs;
    p.alloc = ALL_SUBCLUSTERS;
    p.zero = 0;
    return p;
  }
  // Only the touched subclusters are written; the others keep reading as before. A boundary
  // subcluster already allocated in place is not refilled (a concurrent in-place write may own it).
  const [s0, s1] = subclusters(core, a, b);
  const m = subclusterMask(s0, s1);
  const has = (i: number) => reusable && ((old.alloc >>> i) & 1) === 1;
  p.from = has(s0) ? a : s0 * core.g.subclusterSize;
  p.to = has(s1) ? b : (s1 + 1) * core.g.subclusterSize;
  p.alloc = old.alloc | m;
  p.zero = old.zero & ~m;
  return p;
}

/** Reads bytes [from, from+into.length) of the guest cluster at `start` as mapped by `e`. */
async function readOld(core: Qcow2Core, start: number, e: L2Entry, from: number, into: Uint8Array): Promise<void> {
  const pieces: Piece[] = [];
  core.entryPieces(start, e, from, from + into.byteLength, pieces);
  await core.readPieces(pieces, into, start + from);
}

/**
 * Writes whole clusters compressed; clusters that do not shrink below the cluster size are
 * written normally. The last cluster may be short when it ends the device.
 */
export async function writeCompressed(core: Qcow2Core, pool: CompressorPool, offset: number, data: Uint8Array): Promise<void> {
  const cs = core.g.clusterSize;
  if (core.hasDataFile) throw new ImageError('UNSUPPORTED', 'compression is not supported with an external data file', { file: core.file.path });
  if (offset % cs !== 0 || (data.byteLength % cs !== 0 && offset + data.byteLength !== core.size)) {
    throw new ImageError('INVALID_ARGUMENT', `compressed writes must cover whole ${cs}-byte clusters (offset ${offset}, length ${data.byteLength})`, {
      file: core.file.path,
    });
  }
  const jobs: Promise<void>[] = [];
  for (let pos = 0; pos < data.byteLength; pos += cs) {
    const chunk = data.subarray(pos, Math.min(data.byteLength, pos + cs));
    const whole = chunk.byteLength === cs ? chunk : padded(chunk, cs);
    jobs.push(
      pool.compress(core.compression, whole, cs).then((packed) =>
        packed ? storeCompressed(core, (offset + pos) / cs, packed) : writeData(core, offset + pos, chunk),
      ),
    );
  }
  await Promise.all(jobs);
}

function padded(chunk: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(size);
  out.set(chunk);
  return out;
}

async function storeCompressed(core: Qcow2Core, c: number, packed: Uint8Array): Promise<void> {
  const { g } = core;
  const l1i = Math.floor((c * g.clusterSize) / core.tables.tableSpan);
  const unlock = await core.clusterLocks.acquire([c]);
  try {
    const tOff = await core.tables.l2Write(l1i);
    const at = await core.refcounts.allocateBytes(packed.byteLength);
    await core.file.write(at, packed);
    core.unsynced = true;
    const t = await core.tables.l2.get(await core.tables.l2Write(l1i));
    const old = getL2(t, c % g.l2Entries, g);
    setL2(t, c % g.l2Entries, g, encodeCompressed(at, packed.byteLength, g.clusterBits));
    core.tables.l2.markDirty(tOff);
    releaseOld(core, old);
  } finally {
    unlock();
  }
}

export type PreallocMode = 'metadata' | 'falloc' | 'full';

/**
 * Gives every cluster of [start, end) a host cluster (and its L2 table), then reserves or
 * zeroes the data as the mode asks. Clusters that may hold old bytes are zeroed.
 */
export async function preallocate(core: Qcow2Core, start: number, end: number, mode: PreallocMode): Promise<void> {
  const { g } = core;
  const cs = g.clusterSize;
  const oldEnd = core.end;
  const span = core.tables.tableSpan;
  const ranges: { host: number; length: number }[] = [];
  for (let pos = alignDown(start, cs); pos < end; ) {
    const l1i = Math.floor(pos / span);
    const tEnd = Math.min(alignUp(end, cs), (l1i + 1) * span);
    const tOff = await core.tables.l2Write(l1i);
    let t = await core.tables.l2.get(tOff);
    const need: number[] = [];
    for (let c = pos / cs; c < tEnd / cs; c++) {
      const e = getL2(t, c % g.l2Entries, g);
      if (!isCompressed(e) && !core.allocated(e)) need.push(c);
    }
    if (need.length > 0) {
      const hosts = core.hasDataFile ? need.map((c) => c * cs) : await core.refcounts.allocate(need.length);
      t = await core.tables.l2.get(tOff);
      need.forEach((c, i) => {
        const host = hosts[i];
        const alloc = g.extendedL2 && !core.namesBacking ? ALL_SUBCLUSTERS : 0;
        setL2(t, c % g.l2Entries, g, standardEntry(host, { copied: true }, alloc));
        const last = ranges[ranges.length - 1];
        if (last && last.host + last.length === host) last.length += cs;
        else ranges.push({ host, length: cs });
      });
      core.tables.l2.markDirty(tOff);
    }
    pos = tEnd;
  }
  for (const r of ranges) {
    const len = r.length;
    const reused = core.hasDataFile ? 0 : Math.max(0, Math.min(r.host + len, oldEnd) - r.host);
    if (mode === 'full') await core.dataFile.writeZeroBytes(r.host, len);
    else {
      if (reused > 0) await core.dataFile.writeZeroBytes(r.host, reused);
      if (mode === 'falloc') await core.dataFile.allocate(r.host + reused, len - reused);
    }
  }
  core.unsynced = true;
}
