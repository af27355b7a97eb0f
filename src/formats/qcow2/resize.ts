/**
 * Resizing a qcow2 image: growth (with L1 table growth and optional preallocation) and
 * shrinking (refused while the tail holds data unless asked to discard it, as qemu-img
 * resize --shrink does).
 */
import { ImageError } from '../../block/errors';
import { alignUp, divCeil, setBe32, setBe64 } from '../../io/bytes';
import { parsePreallocation } from '../options';
import * as C from './constants';
import { Qcow2Core } from './core';
import { l1EntriesFor } from './header';
import { getL2, hostOffset, isCompressed, SECTOR } from './l2';
import { preallocate, releaseOld } from './write';
import { zeroRange } from './zero';

/** Header offsets: size (u64), l1_size (u32) followed by l1_table_offset (u64). */
const HDR_SIZE = 24;
const HDR_L1_SIZE = 36;

export async function resizeQcow2(core: Qcow2Core, size: number, opts: { shrink?: boolean; preallocation?: string }): Promise<void> {
  const file = core.file.path;
  if (!Number.isSafeInteger(size) || size < 0) throw new ImageError('INVALID_ARGUMENT', `invalid size ${size}`, { file });
  if (size % SECTOR !== 0) throw new ImageError('INVALID_ARGUMENT', `the new size ${size} must be a multiple of ${SECTOR}`, { file, field: 'size', value: size });
  const prealloc = parsePreallocation(opts.preallocation ?? 'off');
  const old = core.size;
  if (size === old) return;
  await core.flush();
  if (size < old) {
    if (core.header.nbSnapshots > 0) throw new ImageError('UNSUPPORTED', 'cannot shrink an image with internal snapshots', { file });
    await core.gate.exclusive(() => shrink(core, size, !!opts.shrink));
    await core.flush();
    await writeSize(core, size);
    return;
  }
  await core.gate.exclusive(async () => {
    const needed = l1EntriesFor(size, core.g);
    if (needed > core.tables.l1Size) await growL1(core, needed);
    await writeSize(core, size);
  });
  // Bytes past the old end read as zeroes: neither stale bytes of the old last cluster nor
  // the backing file may show through.
  const tailEnd = core.namesBacking ? size : Math.min(size, alignUp(old, core.g.clusterSize));
  const backingEnd = core.backing ? Math.min(tailEnd, Math.max(old, core.backing.size)) : tailEnd;
  if (backingEnd > old) await zeroRange(core, old, backingEnd - old, 'zeroes');
  if (prealloc !== 'off') await preallocate(core, old, size, prealloc);
  await core.flush();
}

async function writeSize(core: Qcow2Core, size: number): Promise<void> {
  const b = new Uint8Array(8);
  setBe64(b, 0, size);
  await core.file.write(HDR_SIZE, b);
  await core.file.flush();
  core.header.size = size;
}

/** A bigger L1 table in fresh clusters; the header switches to it, then the old one is freed. */
async function growL1(core: Qcow2Core, entries: number): Promise<void> {
  const cs = core.g.clusterSize;
  if (entries * 8 > C.MAX_L1_BYTES) {
    throw new ImageError('UNSUPPORTED', `the image would need an L1 table larger than ${C.MAX_L1_BYTES} bytes`, { file: core.file.path });
  }
  const h = core.header;
  const bytes = new Uint8Array(entries * 8);
  bytes.set(core.tables.l1);
  const at = await core.refcounts.allocateContiguous(divCeil(bytes.byteLength, cs));
  await core.file.write(at, bytes);
  await core.sync(); // the new table and its refcounts, before the header names it
  const hdr = new Uint8Array(12);
  setBe32(hdr, 0, entries);
  setBe64(hdr, 4, at);
  await core.file.write(HDR_L1_SIZE, hdr);
  await core.file.flush();
  const oldAt = h.l1TableOffset;
  const oldClusters = divCeil(h.l1Size * 8, cs);
  h.l1Size = entries;
  h.l1TableOffset = at;
  core.tables.replaceL1(bytes);
  if (oldClusters > 0) await core.refcounts.release([{ cluster: oldAt / cs, count: oldClusters }]);
}

/**
 * Drops every mapping past the new end (whole clusters). Without `discard`, any mapping
 * there (data or zero clusters) makes it refuse instead.
 */
async function shrink(core: Qcow2Core, size: number, discard: boolean): Promise<void> {
  const { g } = core;
  const cs = g.clusterSize;
  const span = core.tables.tableSpan;
  const firstGone = alignUp(size, cs) / cs;
  for (let l1i = Math.floor((firstGone * cs) / span); l1i < core.tables.l1Size; l1i++) {
    const table = await core.tables.l2Read(l1i);
    if (!table) continue;
    const from = Math.max(firstGone, l1i * g.l2Entries) % g.l2Entries;
    const whole = from === 0 && l1i * g.l2Entries >= firstGone;
    let used = false;
    for (let i = from; i < g.l2Entries && !used; i++) {
      const e = getL2(table, i, g);
      used = e.hi !== 0 || e.lo !== 0 || e.alloc !== 0 || e.zero !== 0;
    }
    if (used && !discard) {
      throw new ImageError('INVALID_ARGUMENT', `the part past the new size ${size} holds data: shrinking would lose it (use --shrink)`, { file: core.file.path });
    }
    if (!used && !whole) continue;
    const tOff = whole ? 0 : await core.tables.l2Write(l1i);
    const t = whole ? table.slice() : await core.tables.l2.get(tOff);
    for (let i = from; i < g.l2Entries; i++) {
      const e = getL2(t, i, g);
      if (isCompressed(e) || hostOffset(e) !== 0) releaseOld(core, e);
      if (!whole) t.fill(0, i * g.l2EntrySize, (i + 1) * g.l2EntrySize);
    }
    if (whole) {
      // The L2 table itself goes: its L1 entry is cleared and the table freed after flush.
      const off = Number(core.tables.l1Entry(l1i) & C.L1E_OFFSET_MASK);
      core.tables.setL1(l1i, 0n);
      core.deferRelease({ cluster: off / cs, count: 1 });
    } else core.tables.l2.markDirty(tOff);
  }
}
