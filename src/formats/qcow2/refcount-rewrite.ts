/**
 * Writing a whole new refcount structure (refcount table and blocks) from an in-memory
 * refcount array: what check's rebuild and amend's refcount_bits change both need.
 *
 * The new structure goes past everything in use, so nothing live is overwritten; it is made
 * durable before the header switches to it with one small write, so a crash leaves either the
 * old structure or the new one in effect (at worst the other is leaked).
 */
import { ImageError } from '../../block/errors';
import { divCeil, setBe32, setBe64 } from '../../io/bytes';
import { HostFile } from '../../io/host-file';
import * as C from './constants';
import { RefcountArray, setRefcountEntry } from './refcount-array';

const REFTABLE_ENTRY_SIZE = 8;
/** Header offsets of refcount_table_offset (u64), refcount_table_clusters (u32), refcount_order (u32). */
export const HEADER_REFCOUNT_TABLE_OFFSET = 48;
export const HEADER_REFCOUNT_ORDER = 96;

export interface NewRefcountTable {
  offset: number;
  clusters: number;
}

/**
 * Writes refcount blocks of 2^order-bit entries holding `imrt`'s counts, and a refcount table
 * for them, starting at cluster `firstFree` (past every cluster in use). The clusters the new
 * structure occupies are counted in `imrt` too. Flushes before returning.
 */
export async function writeRefcountStructure(
  file: HostFile,
  clusterBits: number,
  order: number,
  imrt: RefcountArray,
  firstFree: number,
): Promise<NewRefcountTable> {
  const clusterSize = 2 ** clusterBits;
  const perBlock = 2 ** (clusterBits + 3 - order);
  const usedBlocks = new Set<number>();
  for (let k = 0; k < Math.min(imrt.length, firstFree); k++) {
    if (imrt.get(k) !== 0) {
      usedBlocks.add(Math.floor(k / perBlock));
      k = (Math.floor(k / perBlock) + 1) * perBlock - 1; // this block is needed; skip to the next
    }
  }
  // Fixed point: the structure's own clusters must be covered by it too.
  let tableClusters = 0;
  let blocks: number[] = [];
  for (;;) {
    const end = firstFree + tableClusters + blocks.length;
    const needed = new Set(usedBlocks);
    for (let b = Math.floor(firstFree / perBlock); b <= Math.floor((end - 1) / perBlock); b++) needed.add(b);
    const next = [...needed].sort((a, b) => a - b);
    const nextTable = divCeil((next[next.length - 1] + 1) * REFTABLE_ENTRY_SIZE, clusterSize);
    if (next.length === blocks.length && nextTable === tableClusters) break;
    blocks = next;
    tableClusters = nextTable;
  }
  if (tableClusters * clusterSize > C.MAX_REFTABLE_BYTES) {
    throw new ImageError('UNSUPPORTED', `the refcount table would grow beyond ${C.MAX_REFTABLE_BYTES} bytes`, { file: file.path });
  }

  const tableCluster = firstFree;
  const end = firstFree + tableClusters + blocks.length;
  for (let k = firstFree; k < end; k++) imrt.set(k, 1);

  const table = new Uint8Array(tableClusters * clusterSize);
  const block = new Uint8Array(clusterSize);
  for (let j = 0; j < blocks.length; j++) {
    const index = blocks[j];
    const at = (tableCluster + tableClusters + j) * clusterSize;
    block.fill(0);
    const base = index * perBlock;
    const last = Math.min(perBlock, imrt.length - base);
    for (let e = 0; e < last; e++) {
      const n = imrt.get(base + e);
      if (n !== 0) setRefcountEntry(block, e, order, n);
    }
    await file.write(at, block);
    setBe64(table, index * REFTABLE_ENTRY_SIZE, at);
  }
  await file.write(tableCluster * clusterSize, table);
  await file.flush();
  return { offset: tableCluster * clusterSize, clusters: tableClusters };
}

/** Points the header at a refcount table (one 12-byte write, then flush). */
export async function switchRefcountTable(file: HostFile, t: NewRefcountTable): Promise<void> {
  const field = new Uint8Array(12);
  setBe64(field, 0, t.offset);
  setBe32(field, 8, t.clusters);
  await file.write(HEADER_REFCOUNT_TABLE_OFFSET, field);
  await file.flush();
}
