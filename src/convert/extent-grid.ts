/**
 * Block status quantized to the target's allocation grid. The target can only allocate, zero
 * or skip whole grid blocks (qcow2 clusters, -S runs), so each block of the grid gets the
 * strongest kind any byte of it has: data > zero > unallocated. Runs of blocks of one kind
 * come out merged, in order, covering the input exactly.
 */
import { Extent, ExtentKind } from '../block/device';

export interface Run {
  offset: number;
  length: number;
  kind: ExtentKind;
}

const RANK: Record<ExtentKind, number> = { unallocated: 0, zero: 1, data: 2 };
const KINDS: ExtentKind[] = ['unallocated', 'zero', 'data'];

/** Quantizes extents that cover [start, end) exactly; `start` must lie on the grid. */
export function gridRuns(extents: Extent[], grid: number, end: number): Run[] {
  const runs: Run[] = [];
  const emit = (offset: number, length: number, kind: ExtentKind) => {
    const last = runs[runs.length - 1];
    if (last && last.kind === kind && last.offset + last.length === offset) last.length += length;
    else runs.push({ offset, length, kind });
  };
  // The block being assembled from extents that each cover only part of it.
  let partial: { offset: number; rank: number } | null = null;
  for (const e of extents) {
    let off = e.offset;
    const stop = e.offset + e.length;
    while (off < stop) {
      const blockStart = Math.floor(off / grid) * grid;
      const blockEnd = Math.min(blockStart + grid, end);
      if (off === blockStart && stop >= blockEnd) {
        // Whole blocks: as many as the extent covers.
        const wholeEnd = stop >= end ? end : Math.floor(stop / grid) * grid;
        emit(off, wholeEnd - off, e.kind);
        off = wholeEnd;
        continue;
      }
      const rank = Math.max(partial?.rank ?? 0, RANK[e.kind]);
      const upTo = Math.min(stop, blockEnd);
      if (upTo === blockEnd) {
        emit(blockStart, blockEnd - blockStart, KINDS[rank]);
        partial = null;
      } else partial = { offset: blockStart, rank };
      off = upTo;
    }
  }
  if (partial) emit(partial.offset, end - partial.offset, KINDS[partial.rank]);
  return runs;
}
