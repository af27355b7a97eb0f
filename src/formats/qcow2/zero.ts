/**
 * Zeroing and discard (qcow2.rst "Standard Cluster Descriptor" zero flag, "Extended L2
 * Entries" zero bits): whole clusters become zero clusters or unallocated, subcluster-aligned
 * parts of an extended L2 cluster get their zero bits, and what remains gets zero bytes.
 */
import { alignDown, alignUp } from '../../io/bytes';
import { Qcow2Core } from './core';
import { ALL_SUBCLUSTERS, getL2, hostOffset, isCompressed, isCopied, L2Entry, setL2, standardEntry, subclusterMask, UNALLOCATED } from './l2';
import { releaseOld, writeData } from './write';

export type ZeroMode = 'zeroes' | 'unmap' | 'discard';

const ZERO_CHUNK = new Uint8Array(1 << 20);

/** Writes explicit zero bytes through the normal write path. */
async function writeZeroBytes(core: Qcow2Core, offset: number, length: number): Promise<void> {
  for (let done = 0; done < length; done += ZERO_CHUNK.byteLength) {
    await writeData(core, offset + done, ZERO_CHUNK.subarray(0, Math.min(ZERO_CHUNK.byteLength, length - done)));
  }
}

/**
 * Zeroes or discards a range. Whole clusters become zero clusters (v3), or unallocated when
 * nothing lies beneath; partial clusters get zero bytes (or, for discard, are left alone).
 * A v2 image over a backing file has no zero clusters: zeroes are written, discard does nothing.
 */
export async function zeroRange(core: Qcow2Core, offset: number, length: number, mode: ZeroMode): Promise<void> {
  const cs = core.g.clusterSize;
  const end = offset + length;
  const noZeroClusters = !core.zeroFlags && core.namesBacking;
  if (noZeroClusters) {
    if (mode !== 'discard') await writeZeroBytes(core, offset, length);
    return;
  }
  const first = alignUp(offset, cs);
  // The last cluster counts as whole when the range runs to the end of the device.
  const last = end === core.size ? alignUp(end, cs) : alignDown(end, cs);
  if (first >= last) {
    if (mode !== 'discard') await zeroPartial(core, offset, end);
    return;
  }
  const jobs: Promise<void>[] = [];
  if (mode !== 'discard' && offset < first) jobs.push(zeroPartial(core, offset, first));
  if (mode !== 'discard' && last < end) jobs.push(zeroPartial(core, last, end));
  const span = core.tables.tableSpan;
  for (let pos = first; pos < last; ) {
    const tEnd = Math.min(last, (Math.floor(pos / span) + 1) * span);
    jobs.push(zeroClusters(core, pos / cs, tEnd / cs, mode));
    pos = tEnd;
  }
  await Promise.all(jobs);
}

async function zeroClusters(core: Qcow2Core, c0: number, c1: number, mode: ZeroMode): Promise<void> {
  const { g } = core;
  const cs = g.clusterSize;
  const l1i = Math.floor((c0 * cs) / core.tables.tableSpan);
  // Nothing allocated and nothing beneath: it already reads as zeroes.
  if (!core.namesBacking && core.tables.l1Entry(l1i) === 0n) return;
  const keys: number[] = [];
  for (let c = c0; c < c1; c++) keys.push(c);
  const unlock = await core.clusterLocks.acquire(keys);
  try {
    const tOff = await core.tables.l2Write(l1i);
    const t = await core.tables.l2.get(tOff);
    const punches: number[] = [];
    for (const c of keys) {
      const old = getL2(t, c % g.l2Entries, g);
      const host = hostOffset(old);
      const allocated = core.allocated(old);
      const keep = core.zeroFlags && mode === 'zeroes' && allocated && isCopied(old);
      // Reads as zero: the zero flag, or with extended L2 every subcluster's zero bit.
      const zeroBits = g.extendedL2 ? ALL_SUBCLUSTERS : 0;
      let next: L2Entry;
      if (keep) next = standardEntry(host, { copied: true, zero: !g.extendedL2 }, 0, zeroBits);
      else if (!core.namesBacking) next = UNALLOCATED;
      else next = standardEntry(0, { zero: !g.extendedL2 }, 0, zeroBits);
      setL2(t, c % g.l2Entries, g, next);
      if (!keep) releaseOld(core, old);
      // An external data file must read as the guest sees it (data_file_raw), so zero it too.
      if (core.hasDataFile && allocated) punches.push(host);
    }
    core.tables.l2.markDirty(tOff);
    await Promise.all(punches.map((h) => core.dataFile.punchHole(h, cs)));
  } finally {
    unlock();
  }
}


/**
 * Zeroes [from, to), which holds no whole cluster: with extended L2 the subcluster-aligned
 * middle of each cluster gets zero bits (no allocation, no copy); other bytes are written.
 */
async function zeroPartial(core: Qcow2Core, from: number, to: number): Promise<void> {
  if (!core.g.extendedL2) return writeZeroBytes(core, from, to - from);
  const cs = core.g.clusterSize;
  const sc = core.g.subclusterSize;
  const jobs: Promise<void>[] = [];
  for (let pos = from; pos < to; ) {
    const start = alignDown(pos, cs);
    const stop = Math.min(to, start + cs);
    const a = alignUp(pos, sc);
    // The device's last subcluster counts as whole when the range runs to the end.
    const b = stop === core.size ? alignUp(stop, sc) : alignDown(stop, sc);
    if (a < b) {
      jobs.push(
        zeroSubclusters(core, start / cs, (a - start) / sc, (b - start) / sc - 1).then((done) =>
          done ? undefined : writeZeroBytes(core, a, Math.min(b, stop) - a),
        ),
      );
      if (pos < a) jobs.push(writeZeroBytes(core, pos, a - pos));
      if (b < stop) jobs.push(writeZeroBytes(core, b, stop - b));
    } else jobs.push(writeZeroBytes(core, pos, stop - pos));
    pos = stop;
  }
  await Promise.all(jobs);
}

/** Sets the zero bits of subclusters [s0, s1] of guest cluster c; false when it cannot (compressed). */
async function zeroSubclusters(core: Qcow2Core, c: number, s0: number, s1: number): Promise<boolean> {
  const { g } = core;
  const cs = g.clusterSize;
  const l1i = Math.floor((c * cs) / core.tables.tableSpan);
  const m = subclusterMask(s0, s1);
  if (!core.namesBacking && core.tables.l1Entry(l1i) === 0n) return true; // reads as zeroes already
  const unlock = await core.clusterLocks.acquire([c]);
  try {
    const peek = await core.tables.l2Read(l1i);
    const before = peek ? getL2(peek, c % g.l2Entries, g) : UNALLOCATED;
    if (isCompressed(before)) return false;
    if (!core.namesBacking && (before.alloc & m) === 0) return true; // nothing allocated, nothing beneath
    const tOff = await core.tables.l2Write(l1i);
    const t = await core.tables.l2.get(tOff);
    const old = getL2(t, c % g.l2Entries, g);
    setL2(t, c % g.l2Entries, g, { ...old, alloc: old.alloc & ~m, zero: old.zero | m });
    core.tables.l2.markDirty(tOff);
    if (core.hasDataFile && core.allocated(old)) {
      const sc = g.subclusterSize;
      await core.dataFile.punchHole(hostOffset(old) + s0 * sc, (s1 - s0 + 1) * sc);
    }
    return true;
  } finally {
    unlock();
  }
}
