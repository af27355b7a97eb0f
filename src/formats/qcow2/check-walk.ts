/**
 * The first half of a qcow2 check: computing how often every host cluster is referenced
 * (qemu's calculate_refcounts). It walks the header, the active and every snapshot's L1 and
 * L2 tables, the snapshot table, the refcount table and blocks, and the bitmaps, checking
 * each entry on the way as qemu's check_refcounts_l1/l2 and check_refblocks do.
 */
import { be64n } from '../../io/bytes';
import { activeBitmapsExtension, BITMAP_TABLE_ENTRY_SIZE, BME_FLAG_ALL_ONES, BME_OFFSET_MASK, BME_RESERVED_MASK, readBitmapDirectory } from './bitmaps';
import { CheckContext } from './check-context';
import * as C from './constants';
import { ALL_SUBCLUSTERS, decodeCompressed, entryHex, scanEntry, setL2, standardEntry } from './l2';
import { RefcountArray } from './refcount-array';
import { offsetOf, readClamped } from './stored-refcounts';

const L1_ENTRY_SIZE = 8;
const REFT_RESERVED_MASK = 0x1ffn;

const hex = (v: bigint | number) => v.toString(16);

/**
 * Fills `imrt` with every reference the image makes. Returns true when the refcount
 * structure itself is broken and must be rebuilt.
 */
export async function calculateRefcounts(ctx: CheckContext, imrt: RefcountArray, reftable: bigint[]): Promise<boolean> {
  const { h } = ctx;
  ctx.incRefs(imrt, 0, ctx.clusterSize);
  await checkL1(ctx, imrt, h.l1TableOffset, h.l1Size, true);

  if (ctx.hasDataFile && ctx.snapshots.length > 0) {
    ctx.say(`ERROR ${ctx.snapshots.length} snapshots in image with data file`);
    ctx.counts.corruptions++;
  }
  for (const sn of ctx.snapshots) {
    if (sn.l1TableOffset % ctx.clusterSize !== 0) {
      ctx.say(`ERROR snapshot ${sn.id} (${sn.name}) l1_offset=0x${hex(sn.l1TableOffset)}: L1 table is not cluster aligned; snapshot table entry corrupted`);
      ctx.counts.corruptions++;
      continue;
    }
    if (sn.l1Size * L1_ENTRY_SIZE > C.MAX_L1_BYTES) {
      ctx.say(`ERROR snapshot ${sn.id} (${sn.name}) l1_size=0x${hex(sn.l1Size)}: L1 table is too large; snapshot table entry corrupted`);
      ctx.counts.corruptions++;
      continue;
    }
    await checkL1(ctx, imrt, sn.l1TableOffset, sn.l1Size, false);
  }
  ctx.incRefs(imrt, h.snapshotsOffset, ctx.snapshotsSize);
  ctx.incRefs(imrt, h.refcountTableOffset, h.refcountTableClusters * ctx.clusterSize);
  await checkBitmaps(ctx, imrt);
  return checkRefblocks(ctx, imrt, reftable);
}

/** References an L1 table, its L2 tables and their clusters (check_refcounts_l1). */
async function checkL1(ctx: CheckContext, imrt: RefcountArray, l1Offset: number, l1Size: number, active: boolean): Promise<void> {
  if (l1Size === 0) return;
  ctx.incRefs(imrt, l1Offset, l1Size * L1_ENTRY_SIZE);
  const l1 = new Uint8Array(l1Size * L1_ENTRY_SIZE);
  await readClamped(ctx.file, ctx.fileSize, l1Offset, l1);
  const l2 = new Uint8Array(ctx.clusterSize);
  for (let i = 0; i < l1Size; i++) {
    const entry = be64n(l1, i * L1_ENTRY_SIZE);
    if (entry === 0n) continue;
    if (entry & C.L1E_RESERVED_MASK) {
      ctx.say(`ERROR found L1 entry with reserved bits set: ${hex(entry)}`);
      ctx.counts.corruptions++;
    }
    const l2Offset = offsetOf(entry, C.L1E_OFFSET_MASK);
    ctx.incRefs(imrt, l2Offset, ctx.clusterSize);
    if (l2Offset % ctx.clusterSize !== 0) {
      ctx.say(`ERROR l2_offset=${hex(l2Offset)}: Table is not cluster aligned; L1 entry corrupted`);
      ctx.counts.corruptions++;
    }
    await readClamped(ctx.file, ctx.fileSize, l2Offset, l2);
    await checkL2(ctx, imrt, l2Offset, l2, active);
  }
}

/** References the clusters one L2 table maps, checking each entry (check_refcounts_l2). */
async function checkL2(ctx: CheckContext, imrt: RefcountArray, l2Offset: number, l2: Uint8Array, active: boolean): Promise<void> {
  const { g, counts } = ctx;
  let nextContiguous = 0;
  for (let i = 0; i < g.l2Entries; i++) {
    const e = scanEntry(l2, i, g, ctx.hasDataFile);
    if (e.type === 'unallocated' && !e.alloc && !e.reserved) continue; // the common case, fast
    if (e.type !== 'compressed' && e.reserved) {
      ctx.say(`ERROR found l2 entry with reserved bits set: ${entryHex(e)}`);
      counts.corruptions++;
    }
    switch (e.type) {
      case 'compressed': {
        const { offset, length } = decodeCompressed(e, g.clusterBits);
        if (e.copied) {
          ctx.say(`ERROR: coffset=0x${hex(offset)}: copied flag must never be set for compressed clusters`);
          counts.corruptions++;
        }
        if (ctx.hasDataFile) {
          ctx.say(`ERROR compressed cluster ${i} with data file, entry=0x${entryHex(e)}`);
          counts.corruptions++;
          break;
        }
        if (e.alloc || e.zero) {
          ctx.say(`ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${entryHex(e)}`);
          counts.corruptions++;
          break;
        }
        ctx.incRefs(imrt, offset, length);
        if (active) {
          counts.allocatedClusters++;
          counts.compressedClusters++;
          counts.fragmentedClusters++; // compressed clusters are fragmented by nature
        }
        break;
      }
      case 'zero-alloc':
      case 'normal': {
        const { offset } = e;
        if ((e.zero & e.alloc) !== 0) {
          counts.corruptions++;
          ctx.say(`ERROR offset=${hex(offset)}: Allocated cluster has corrupted subcluster allocation bitmap`);
        }
        if (offset % ctx.clusterSize !== 0) {
          counts.corruptions++;
          const hasData = g.extendedL2 ? e.alloc !== 0 : e.type === 'normal';
          if (hasData) {
            ctx.say(`ERROR offset=${hex(offset)}: Data cluster is not properly aligned; L2 entry corrupted.`);
          } else {
            ctx.say(`${ctx.errorPrefix} offset=${hex(offset)}: Preallocated cluster is not properly aligned; L2 entry corrupted.`);
            if (ctx.fixErrors) {
              await zeroL2Entry(ctx, l2, l2Offset, i);
              continue; // the cluster is no longer used
            }
          }
        }
        if (active) {
          counts.allocatedClusters++;
          if (nextContiguous && offset !== nextContiguous) counts.fragmentedClusters++;
          nextContiguous = offset + ctx.clusterSize;
        }
        if (!ctx.hasDataFile) ctx.incRefs(imrt, offset, ctx.clusterSize);
        break;
      }
      case 'zero-plain':
        break;
      case 'unallocated':
        if (e.alloc) {
          counts.corruptions++;
          ctx.say('ERROR: Unallocated cluster has non-zero subcluster allocation map');
        }
        break;
    }
  }
}

/** Turns a misaligned preallocated zero cluster into a plain zero entry (fix_l2_entry_by_zero). */
async function zeroL2Entry(ctx: CheckContext, l2: Uint8Array, l2Offset: number, i: number): Promise<void> {
  const { g } = ctx;
  const at = i * g.l2EntrySize;
  setL2(l2, i, g, g.extendedL2 ? standardEntry(0, {}, 0, ALL_SUBCLUSTERS) : standardEntry(0, { zero: true }));
  await ctx.file.write(l2Offset + at, l2.subarray(at, at + g.l2EntrySize));
  await ctx.file.flush();
  ctx.counts.corruptions--;
  ctx.counts.corruptionsFixed++;
}

/** References the bitmap directory, tables and data (qcow2_check_bitmaps_refcounts). */
async function checkBitmaps(ctx: CheckContext, imrt: RefcountArray): Promise<void> {
  const ext = activeBitmapsExtension(ctx.h);
  if (!ext || ext.nbBitmaps === 0) return;
  ctx.incRefs(imrt, ext.directoryOffset, ext.directorySize);
  let bitmaps;
  try {
    bitmaps = await readBitmapDirectory(ctx.file, ext, ctx.fileSize);
  } catch (err) {
    ctx.say(`ERROR ${(err as Error).message}`);
    ctx.counts.corruptions++;
    return;
  }
  for (const bm of bitmaps) {
    const bytes = bm.tableSize * BITMAP_TABLE_ENTRY_SIZE;
    ctx.incRefs(imrt, bm.tableOffset, bytes);
    if (bm.tableOffset % ctx.clusterSize !== 0 || bm.tableOffset + bytes > ctx.fileSize) {
      ctx.say(`ERROR bitmap '${bm.name}': table at 0x${hex(bm.tableOffset)} is misaligned or past the end of the file`);
      ctx.counts.corruptions++;
      continue;
    }
    const table = new Uint8Array(bytes);
    await readClamped(ctx.file, ctx.fileSize, bm.tableOffset, table);
    for (let i = 0; i < bm.tableSize; i++) {
      const entry = be64n(table, i * BITMAP_TABLE_ENTRY_SIZE);
      const offset = offsetOf(entry, BME_OFFSET_MASK);
      if (entry & BME_RESERVED_MASK || (offset !== 0 && (entry & BME_FLAG_ALL_ONES || offset % ctx.clusterSize !== 0))) {
        ctx.say(`ERROR bitmap '${bm.name}': invalid bitmap table entry ${i}: ${hex(entry)}`);
        ctx.counts.corruptions++;
        continue;
      }
      if (offset !== 0) ctx.incRefs(imrt, offset, ctx.clusterSize);
    }
  }
}

/**
 * References the refcount blocks and checks each is referenced exactly once (check_refblocks).
 * With repair, a refcount block past the end of the file is brought inside by growing the file.
 */
async function checkRefblocks(ctx: CheckContext, imrt: RefcountArray, reftable: bigint[]): Promise<boolean> {
  let rebuild = false;
  for (let i = 0; i < reftable.length; i++) {
    const offset = offsetOf(reftable[i], C.REFT_OFFSET_MASK);
    const cluster = ctx.clusterOf(offset);
    if (reftable[i] & REFT_RESERVED_MASK) {
      ctx.say(`ERROR refcount table entry ${i} has reserved bits set`);
      ctx.counts.corruptions++;
      rebuild = true;
      continue;
    }
    if (offset % ctx.clusterSize !== 0) {
      ctx.say(`ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`);
      ctx.counts.corruptions++;
      rebuild = true;
      continue;
    }
    if (cluster >= imrt.length) {
      ctx.counts.corruptions++;
      ctx.say(`${ctx.errorPrefix} refcount block ${i} is outside image`);
      if (ctx.fixErrors) {
        try {
          imrt.grow(cluster + 1);
          await ctx.file.truncate(offset + ctx.clusterSize);
          ctx.fileSize = offset + ctx.clusterSize;
        } catch (err) {
          rebuild = true;
          ctx.say(`ERROR could not resize image: ${(err as Error).message}`);
          continue;
        }
        ctx.counts.corruptions--;
        ctx.counts.corruptionsFixed++;
        ctx.incRefs(imrt, offset, ctx.clusterSize);
      }
      continue;
    }
    if (offset !== 0) {
      ctx.incRefs(imrt, offset, ctx.clusterSize);
      const n = imrt.get(cluster);
      if (n !== 1) {
        ctx.say(`ERROR refcount block ${i} refcount=${n}`);
        ctx.counts.corruptions++;
        rebuild = true;
      }
    }
  }
  return rebuild;
}
