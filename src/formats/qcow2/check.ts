/**
 * `img check` for qcow2: qemu's qcow2_co_check_locked on a file not otherwise in use.
 * Reads the snapshot table as qemu's check mode does, computes every cluster's references,
 * compares them with the stored refcounts, checks COPIED flags, and repairs on request.
 */
import { CheckReport, RepairMode } from '../../block/image';
import { be32, be64, setBe64 } from '../../io/bytes';
import { HostFile } from '../../io/host-file';
import { CheckContext, CheckCounts, FixMode } from './check-context';
import { checkOflagCopied, compareRefcounts, rebuildRefcountStructure } from './check-repair';
import { calculateRefcounts } from './check-walk';
import * as C from './constants';
import { geometry, parseHeader, Qcow2Header } from './header';
import { RefcountArray } from './refcount-array';
import { FileSpace } from './file-space';
import { MAX_SNAPSHOT_EXTRA_DATA, readSnapshotTable, replaceSnapshotTable, SnapshotEntry, V3_MIN_SNAPSHOT_EXTRA } from './snapshot-table';
import { StoredRefcounts } from './stored-refcounts';

/** Offsets of nb_snapshots (u32) and snapshots_offset (u64), and of incompatible_features (u64). */
const HEADER_NB_SNAPSHOTS = 60;
const HEADER_SNAPSHOTS_OFFSET = 64;
const HEADER_INCOMPATIBLE = 72;
const MAX_CLUSTER_SIZE = 2 ** C.MAX_CLUSTER_BITS;

interface Pass {
  counts: CheckCounts;
  messages: string[];
  imageEndOffset: number;
}

/**
 * One check (and, with `repair`, repair) pass over a qcow2 file that nothing else has open.
 * Like qemu's bdrv_check, a repairing pass reports what it fixed and what it could not;
 * `qemu-img check -r` (and img check) then run a plain pass to report the final state.
 */
export async function checkQcow2File(file: HostFile, opts: { repair?: RepairMode } = {}): Promise<CheckReport> {
  const { counts: c, messages, imageEndOffset } = await checkPass(file, opts.repair ?? 'none');
  return {
    filename: file.path,
    format: 'qcow2',
    checkErrors: c.checkErrors,
    corruptions: c.corruptions,
    leaks: c.leaks,
    corruptionsFixed: c.corruptionsFixed,
    leaksFixed: c.leaksFixed,
    imageEndOffset,
    totalClusters: c.totalClusters,
    allocatedClusters: c.allocatedClusters,
    fragmentedClusters: c.fragmentedClusters,
    compressedClusters: c.compressedClusters,
    messages,
  };
}

/**
 * Checks a qcow2 file by name without opening it as an image, so images too broken to open
 * (as qemu-img check's lenient open allows) can still be checked and repaired.
 */
export async function checkQcow2Path(filename: string, opts: { repair?: RepairMode } = {}): Promise<CheckReport> {
  const file = await HostFile.open(filename, { readOnly: !opts.repair });
  try {
    return await checkQcow2File(file, opts);
  } finally {
    await file.close();
  }
}

/**
 * Parses the header as qemu's check mode opens it: the snapshot table pointer is left out of
 * validation, so a broken table is reported by the check instead of refusing the image.
 */
async function readCheckHeader(file: HostFile, fileSize: number): Promise<Qcow2Header> {
  const head = new Uint8Array(Math.min(fileSize, MAX_CLUSTER_SIZE));
  await file.read(0, head);
  const masked = head.slice();
  masked.fill(0, HEADER_NB_SNAPSHOTS, HEADER_SNAPSHOTS_OFFSET + 8);
  const h = parseHeader(masked, fileSize, file.path);
  h.nbSnapshots = be32(head, HEADER_NB_SNAPSHOTS);
  h.snapshotsOffset = be64(head, HEADER_SNAPSHOTS_OFFSET);
  return h;
}

/**
 * qcow2_check_read_snapshot_table. Returns false when the table cannot be used: the check
 * stops there, as qemu's does, rather than take the snapshots' clusters for leaks.
 */
async function readCheckSnapshots(ctx: CheckContext): Promise<boolean> {
  const { h, counts } = ctx;
  ctx.snapshots = [];
  ctx.snapshotsSize = 0;
  if (h.nbSnapshots === 0) return true;
  if (h.nbSnapshots > C.MAX_SNAPSHOTS) {
    ctx.say(`ERROR The image contains ${h.nbSnapshots} snapshots, but only ${C.MAX_SNAPSHOTS} are allowed.`);
    counts.corruptions++;
    return false;
  }
  try {
    const table = await readSnapshotTable(ctx.file, h, ctx.fileSize, { dropExcessExtra: ctx.fixErrors });
    ctx.snapshots = table.entries;
    ctx.snapshotsSize = table.size;
    for (const i of table.truncated) {
      ctx.say(`Discarding too much extra metadata in snapshot table entry ${i} (more than ${MAX_SNAPSHOT_EXTRA_DATA} bytes)`);
      counts.corruptions++;
    }
  } catch (err) {
    counts.checkErrors++;
    ctx.say(`ERROR failed to read the snapshot table: ${(err as Error).message}`);
    return false;
  }
  if (h.version === 3) {
    ctx.snapshots.forEach((sn: SnapshotEntry, i) => {
      if (sn.extraDataSize < V3_MIN_SNAPSHOT_EXTRA) {
        counts.corruptions++;
        ctx.say(`${ctx.errorPrefix} snapshot table entry ${i} is incomplete`);
      }
    });
  }
  return true;
}

async function checkPass(file: HostFile, fix: FixMode): Promise<Pass> {
  const fileSize = await file.size();
  const h = await readCheckHeader(file, fileSize);
  const g = geometry(h);
  const ctx = new CheckContext(file, h, g, fileSize, [], 0, fix);
  if (!(await readCheckSnapshots(ctx))) return { counts: ctx.counts, messages: ctx.messages, imageEndOffset: 0 };
  const snapshotCounts = ctx.counts;
  ctx.counts = { ...snapshotCounts, corruptions: 0, checkErrors: 0 };

  const highest = await checkRefcounts(ctx);
  if (fix === 'all' && snapshotCounts.corruptions > 0 && ctx.snapshots.length > 0) {
    // qcow2_check_fix_snapshot_table: rewriting the table completes every entry.
    const space = await FileSpace.load(file, h);
    await replaceSnapshotTable(space, h, ctx.snapshotsSize, ctx.snapshots);
    ctx.counts.corruptionsFixed += snapshotCounts.corruptions;
    snapshotCounts.corruptions = 0;
  }
  const c = ctx.counts;
  c.corruptions += snapshotCounts.corruptions;
  c.checkErrors += snapshotCounts.checkErrors;
  if (highest !== undefined && fix !== 'none' && c.checkErrors === 0 && c.corruptions === 0) await markCleanAndConsistent(ctx);
  return { counts: c, messages: ctx.messages, imageEndOffset: highest === undefined ? 0 : (highest + 1) * ctx.clusterSize };
}

/** qcow2_check_refcounts; returns the highest cluster in use, or undefined when the check had to stop. */
async function checkRefcounts(ctx: CheckContext): Promise<number | undefined> {
  const { h, g } = ctx;
  ctx.counts.totalClusters = Math.ceil(h.size / g.clusterSize);
  let stored = await StoredRefcounts.load(ctx.file, h, ctx.fileSize);
  const imrt = new RefcountArray(h.refcountOrder, Math.ceil(ctx.fileSize / g.clusterSize), ctx.file.path);
  let rebuild = await calculateRefcounts(ctx, imrt, stored.reftable);

  const preCounts = { ...ctx.counts };
  const preMessages = ctx.messages.length;
  let cmp = await compareRefcounts(ctx, imrt, stored, 'none');
  rebuild ||= cmp.rebuild;

  if (rebuild && ctx.fixErrors) {
    const old = { ...ctx.counts };
    ctx.say('Rebuilding refcount structure');
    stored = await rebuildRefcountStructure(ctx, imrt);
    // The old structure is now unreferenced: recompute, and free it as leaks.
    Object.assign(ctx.counts, { corruptions: 0, leaks: 0, allocatedClusters: 0, fragmentedClusters: 0, compressedClusters: 0 });
    imrt.clear();
    const fix = ctx.fix;
    ctx.fix = 'none'; // qemu recomputes without fixing
    await calculateRefcounts(ctx, imrt, stored.reftable);
    ctx.fix = fix;
    const saved = { ...ctx.counts };
    ctx.counts = { ...saved, corruptions: 0, leaks: 0, checkErrors: 0 };
    cmp = await compareRefcounts(ctx, imrt, stored, 'leaks');
    if (cmp.rebuild) ctx.say('ERROR rebuilt refcount structure is still broken');
    const freshLeaks = ctx.counts.leaks;
    ctx.counts = saved;
    if (ctx.counts.corruptions < old.corruptions) ctx.counts.corruptionsFixed += old.corruptions - ctx.counts.corruptions;
    if (ctx.counts.leaks < old.leaks) ctx.counts.leaksFixed += old.leaks - ctx.counts.leaks;
    ctx.counts.leaks += freshLeaks;
  } else if (ctx.fix !== 'none') {
    if (rebuild) {
      ctx.say('ERROR need to rebuild refcount structures');
      ctx.counts.checkErrors++;
      return undefined;
    }
    if (ctx.counts.leaks || ctx.counts.corruptions) {
      // Redo the comparison, this time fixing; its messages replace the first ones.
      ctx.counts = preCounts;
      ctx.messages.length = preMessages;
      cmp = await compareRefcounts(ctx, imrt, stored, ctx.fix);
    }
  }

  await checkOflagCopied(ctx, stored);
  return cmp.highestCluster;
}

/** After a successful repair: clear the dirty and corrupt bits (qcow2_mark_clean/consistent). */
async function markCleanAndConsistent(ctx: CheckContext): Promise<void> {
  const { h } = ctx;
  const bits = C.INCOMPAT_DIRTY | C.INCOMPAT_CORRUPT;
  if (h.version < 3 || (h.incompatibleFeatures & bits) === 0n) return;
  await ctx.file.flush();
  const field = new Uint8Array(8);
  setBe64(field, 0, h.incompatibleFeatures & ~bits);
  await ctx.file.write(HEADER_INCOMPATIBLE, field);
  await ctx.file.flush();
}
