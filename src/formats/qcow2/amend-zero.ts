/**
 * Turning zero clusters into something a version 2 reader understands, for amend's downgrade
 * to compat=0.10 (qemu's qcow2_expand_zero_clusters): v2 has no zero flag, so
 *  - a plain zero cluster with no backing file becomes unallocated (which reads as zeroes),
 *  - a plain zero cluster over a backing file gets a new cluster of zeroes,
 *  - a preallocated zero cluster has its cluster zeroed and becomes a normal cluster.
 * Every L2 table is visited once, whether the active L1 table or snapshots reach it.
 *
 * Order: new clusters are allocated and their refcounts made durable first (plan), then each
 * L2 table is rewritten after the data it now points at reads as zeroes (apply).
 */
import { ImageError } from '../../block/errors';
import { be64n } from '../../io/bytes';
import { HostFile } from '../../io/host-file';
import { FileSpace } from './file-space';
import * as C from './constants';
import { ScannedEntry, scanEntry, setL2, standardEntry, UNALLOCATED } from './l2';
import { geometry, Qcow2Header } from './header';
import { SnapshotEntry } from './snapshot-table';
import { offsetOf } from './stored-refcounts';

const L1_ENTRY_SIZE = 8;

interface L1Ref {
  offset: number;
  size: number;
}

/** Visits each distinct L2 table reachable from the given L1 tables. */
async function forEachL2(file: HostFile, h: Qcow2Header, l1s: L1Ref[], visit: (l2Offset: number) => Promise<void>): Promise<void> {
  const seen = new Set<number>();
  const cs = 2 ** h.clusterBits;
  for (const l1 of l1s) {
    const table = new Uint8Array(l1.size * L1_ENTRY_SIZE);
    await file.read(l1.offset, table);
    for (let i = 0; i < l1.size; i++) {
      const l2Offset = offsetOf(be64n(table, i * L1_ENTRY_SIZE), C.L1E_OFFSET_MASK);
      if (l2Offset === 0 || seen.has(l2Offset)) continue;
      if (l2Offset % cs !== 0) {
        throw new ImageError('CORRUPT', `L2 table offset 0x${l2Offset.toString(16)} unaligned (L1 index ${i})`, { file: file.path, field: 'L1 entry' });
      }
      seen.add(l2Offset);
      await visit(l2Offset);
    }
  }
}

export function l1Tables(h: Qcow2Header, snapshots: SnapshotEntry[]): L1Ref[] {
  return [{ offset: h.l1TableOffset, size: h.l1Size }, ...snapshots.map((s) => ({ offset: s.l1TableOffset, size: s.l1Size }))];
}

/** True when any L2 entry reachable from `l1s` is a compressed cluster. */
export async function hasCompressedClusters(file: HostFile, h: Qcow2Header, l1s: L1Ref[]): Promise<boolean> {
  const g = geometry(h);
  const l2 = new Uint8Array(g.clusterSize);
  let found = false;
  await forEachL2(file, h, l1s, async (l2Offset) => {
    if (found) return;
    await file.read(l2Offset, l2);
    for (let j = 0; j < g.l2Entries && !found; j++) found = scanEntry(l2, j, g, false).type === 'compressed';
  });
  return found;
}

export async function expandZeroClusters(space: FileSpace, l1s: L1Ref[]): Promise<void> {
  const { file, h } = space;
  const g = geometry(h);
  const backed = h.backingFile !== undefined;
  const l2 = new Uint8Array(g.clusterSize);
  const refcount = (offset: number) => space.imrt.get(offset / g.clusterSize);
  /**
   * What becomes of entry j of an L2 table referenced `l2rc` times: 'keep', 'zero-in-place'
   * (a preallocated cluster no other table uses), 'unallocate' or 'fresh' (a new cluster).
   */
  const action = (e: ScannedEntry, l2rc: number) => {
    if (e.type !== 'zero-plain' && e.type !== 'zero-alloc') return 'keep';
    if (e.type === 'zero-alloc') {
      const { offset } = e;
      if (offset % g.clusterSize !== 0) {
        throw new ImageError('CORRUPT', `cluster offset 0x${offset.toString(16)} unaligned in a zero cluster`, { file: file.path, field: 'L2 entry' });
      }
      if (refcount(offset) === l2rc) return 'zero-in-place';
    }
    return backed ? 'fresh' : 'unallocate';
  };

  // Plan: allocate the new clusters (each counted once per reference to its L2 table) and
  // make their refcounts durable before any L2 entry points at them.
  const fresh: number[] = [];
  await forEachL2(file, h, l1s, async (l2Offset) => {
    await file.read(l2Offset, l2);
    const l2rc = refcount(l2Offset);
    for (let j = 0; j < g.l2Entries; j++) if (action(scanEntry(l2, j, g, false), l2rc) === 'fresh') fresh.push(space.allocate(l2rc));
  });
  await space.commit();

  // Apply, table by table: data reads as zeroes before the entry points at it; references
  // dropped from shared preallocated clusters are released after the tables are written.
  let next = 0;
  const released: { cluster: number; by: number }[] = [];
  await forEachL2(file, h, l1s, async (l2Offset) => {
    await file.read(l2Offset, l2);
    const l2rc = refcount(l2Offset);
    let dirty = false;
    for (let j = 0; j < g.l2Entries; j++) {
      const e = scanEntry(l2, j, g, false);
      const what = action(e, l2rc);
      if (what === 'keep') continue;
      const old = e.offset;
      if (old !== 0 && what !== 'zero-in-place') released.push({ cluster: old / g.clusterSize, by: l2rc });
      let offset = 0;
      if (what === 'zero-in-place') {
        await file.writeZeroBytes(old, g.clusterSize);
        offset = old;
      } else if (what === 'fresh') offset = fresh[next++];
      setL2(l2, j, g, offset === 0 ? UNALLOCATED : standardEntry(offset, { copied: refcount(offset) === 1 }));
      dirty = true;
    }
    if (!dirty) return;
    await file.flush();
    await file.write(l2Offset, l2);
    await file.flush();
  });
  for (const r of released) space.setCount(r.cluster, Math.max(0, space.imrt.get(r.cluster) - r.by));
  await space.commit();
}
