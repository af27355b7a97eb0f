/**
 * The second half of a qcow2 check: comparing computed references with stored refcounts
 * (qemu's compare_refcounts), the COPIED flags (check_oflag_copied), and rebuilding the
 * refcount structure when it is beyond fixing in place (rebuild_refcount_structure).
 *
 * Repairs write in a safe order: refcounts are made durable before any L1/L2 entry whose
 * COPIED flag depends on them, and a rebuilt structure before the header points at it.
 */
import { be64n, setBe64 } from '../../io/bytes';
import { CheckContext } from './check-context';
import { entryHex, scanEntry, setCopied } from './l2';
import * as C from './constants';
import { RefcountArray } from './refcount-array';
import { switchRefcountTable, writeRefcountStructure } from './refcount-rewrite';
import { offsetOf, readClamped, StoredRefcounts } from './stored-refcounts';

const L1_ENTRY_SIZE = 8;

export interface CompareResult {
  /** A referenced cluster has no refcount at all: only a rebuild fixes that. */
  rebuild: boolean;
  /** Last cluster with a stored refcount or a reference. */
  highestCluster: number;
}

/**
 * Compares every cluster's stored refcount with its references. With repair, leaks
 * (refcount too high) and, in 'all' mode, corruptions (too low) are fixed in place; freed
 * clusters are punched out of the file.
 */
export async function compareRefcounts(
  ctx: CheckContext,
  imrt: RefcountArray,
  stored: StoredRefcounts,
  fix: 'none' | 'leaks' | 'all',
): Promise<CompareResult> {
  let rebuild = false;
  let highestCluster = 0;
  const freed: number[] = [];
  for (let i = 0; i < imrt.length; i++) {
    let stored1: number;
    try {
      stored1 = stored.cached(i) ?? (await stored.get(i));
    } catch (err) {
      ctx.say(`Can't get refcount for cluster ${i}: ${(err as Error).message}`);
      ctx.counts.checkErrors++;
      continue;
    }
    const refs = imrt.get(i);
    if (stored1 > 0 || refs > 0) highestCluster = i;
    if (stored1 === refs) continue;
    let fixed: 'leaksFixed' | 'corruptionsFixed' | undefined;
    if (stored1 === 0) rebuild = true;
    else if (stored1 > refs && fix !== 'none') fixed = 'leaksFixed';
    else if (stored1 < refs && fix === 'all') fixed = 'corruptionsFixed';
    const what = fixed ? 'Repairing' : stored1 < refs ? 'ERROR' : 'Leaked';
    ctx.say(`${what} cluster ${i} refcount=${stored1} reference=${refs}`);
    if (fixed) {
      await stored.set(i, refs);
      if (refs === 0) freed.push(i);
      ctx.counts[fixed]++;
    } else if (stored1 < refs) ctx.counts.corruptions++;
    else ctx.counts.leaks++;
  }
  if (fix !== 'none') {
    await stored.flush();
    for (const k of freed) await ctx.file.punchHole(k * ctx.clusterSize, ctx.clusterSize);
  }
  return { rebuild, highestCluster };
}

/**
 * Checks that COPIED is set exactly on active L1/L2 entries whose cluster has refcount 1
 * (check_oflag_copied). Repairs in 'all' mode, and in 'leaks' mode only when the refcounts
 * are known good.
 */
export async function checkOflagCopied(ctx: CheckContext, stored: StoredRefcounts): Promise<void> {
  const { h, g, counts } = ctx;
  const repair = ctx.fix === 'all' || (ctx.fix === 'leaks' && !counts.checkErrors && !counts.corruptions && !counts.leaks);
  const prefix = repair ? 'Repairing' : 'ERROR';
  const l1 = new Uint8Array(h.l1Size * L1_ENTRY_SIZE);
  await readClamped(ctx.file, ctx.fileSize, h.l1TableOffset, l1);
  const l2 = new Uint8Array(ctx.clusterSize);
  // Errors were already reported by compareRefcounts: such entries are skipped silently.
  const refcountOf = async (offset: number): Promise<number | undefined> => stored.get(ctx.clusterOf(offset)).catch(() => undefined);
  const cachedRefcountOf = (offset: number): number | undefined => {
    try {
      return stored.cached(ctx.clusterOf(offset));
    } catch {
      return undefined;
    }
  };
  for (let i = 0; i < h.l1Size; i++) {
    const l1Entry = be64n(l1, i * L1_ENTRY_SIZE);
    const l2Offset = offsetOf(l1Entry, C.L1E_OFFSET_MASK);
    if (l2Offset === 0) continue;
    const l2Refcount = await refcountOf(l2Offset);
    if (l2Refcount === undefined) continue;
    if ((l2Refcount === 1) !== ((l1Entry & C.OFLAG_COPIED) !== 0n)) {
      counts.corruptions++;
      ctx.say(`${prefix} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${l1Entry.toString(16)} refcount=${l2Refcount}`);
      if (repair) {
        const fixedEntry = l2Refcount === 1 ? l1Entry | C.OFLAG_COPIED : l1Entry & ~C.OFLAG_COPIED;
        setBe64(l1, i * L1_ENTRY_SIZE, fixedEntry);
        await ctx.file.write(h.l1TableOffset + i * L1_ENTRY_SIZE, l1.subarray(i * L1_ENTRY_SIZE, (i + 1) * L1_ENTRY_SIZE));
        await ctx.file.flush();
        counts.corruptions--;
        counts.corruptionsFixed++;
      }
    }

    await readClamped(ctx.file, ctx.fileSize, l2Offset, l2);
    let dirty = 0;
    for (let j = 0; j < g.l2Entries; j++) {
      const e = scanEntry(l2, j, g, ctx.hasDataFile);
      if (e.type !== 'normal' && e.type !== 'zero-alloc') continue;
      const refcount = ctx.hasDataFile ? 1 : (cachedRefcountOf(e.offset) ?? (await refcountOf(e.offset)));
      if (refcount === undefined) continue;
      if ((refcount === 1) !== e.copied) {
        counts.corruptions++;
        ctx.say(`${prefix} OFLAG_COPIED data cluster: l2_entry=${entryHex(e)} refcount=${refcount}`);
        if (repair) {
          setCopied(l2, j, g, refcount === 1);
          dirty++;
        }
      }
    }
    if (dirty > 0) {
      await ctx.file.write(l2Offset, l2);
      await ctx.file.flush();
      counts.corruptions -= dirty;
      counts.corruptionsFixed += dirty;
    }
  }
}

/**
 * Replaces the refcount structure with one built from `imrt`, placed past the end of the
 * file. The old structure's clusters are then unreferenced: the caller recomputes and frees
 * them as leaks. Updates ctx.h and ctx.fileSize; returns the new stored refcounts.
 */
export async function rebuildRefcountStructure(ctx: CheckContext, imrt: RefcountArray): Promise<StoredRefcounts> {
  const firstFree = Math.max(imrt.length, Math.ceil(ctx.fileSize / ctx.clusterSize));
  const table = await writeRefcountStructure(ctx.file, ctx.h.clusterBits, ctx.h.refcountOrder, imrt, firstFree);
  await switchRefcountTable(ctx.file, table);
  ctx.h.refcountTableOffset = table.offset;
  ctx.h.refcountTableClusters = table.clusters;
  ctx.fileSize = await ctx.file.size();
  return StoredRefcounts.load(ctx.file, ctx.h, ctx.fileSize);
}
