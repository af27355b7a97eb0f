/**
 * The block map: one 32-bit little-endian entry per virtual block, the index of its data
 * block in the data area (offData + index × cbBlock), or BLOCK_FREE / BLOCK_ZERO.
 * Both writers keep the data area compact: data blocks 0 … cBlocksAllocated-1 are all in
 * use, and a new block goes at index cBlocksAllocated (qemu's vdi_co_pwritev, VirtualBox's
 * vdiBlockAllocUpdate). The whole map lives in memory (4 bytes per block); changed sectors
 * are written back on flush.
 */
import { HostFile } from '../../io/host-file';
import { isAllocated, SECTOR, VdiHeader } from './header';

const ENTRY = 4;
const ENTRIES_PER_SECTOR = SECTOR / ENTRY;
/** The map is read in pieces of this size. */
const LOAD_CHUNK = 1 << 20;

/** What can be wrong with an entry, as bits (one entry may share a data block that is also cut off). */
export const PROBLEM_RANGE = 1; // a data block index past the map's range (qemu's rule)
export const PROBLEM_EOF = 2; // a data block past the end of the file
export const PROBLEM_SHARED = 4; // a data block an earlier entry uses too

/**
 * What the block map implies, in flat typed arrays: a hostile map of millions of bad entries
 * costs a byte and a word per block, not an object per problem.
 */
export interface MapScan {
  /** Per block: 0, or PROBLEM_* bits. */
  problem: Uint8Array;
  /** Problem bits set in all. */
  problems: number;
  /** Per data block below cBlocks: the first block using it, or -1. */
  owner: Int32Array;
  /** Entries that point at a data block inside the map's range (what qemu counts). */
  allocated: number;
  /** One past the highest data block index in range: where the next block goes. */
  nextFree: number;
  /** Data blocks below nextFree that no entry uses (space lost, and a trap for writers that append at cBlocksAllocated). */
  unused: number;
}

export class BlockMap {
  private readonly dirty = new Set<number>();

  private constructor(
    readonly entries: Uint32Array,
    private readonly offset: number,
  ) {}

  static async load(file: HostFile, h: VdiHeader): Promise<BlockMap> {
    const entries = new Uint32Array(h.blocks);
    const chunk = Buffer.alloc(Math.min(h.blocks * ENTRY, LOAD_CHUNK));
    for (let first = 0; first < h.blocks; first += chunk.length / ENTRY) {
      const n = Math.min(h.blocks - first, chunk.length / ENTRY);
      await file.read(h.offsetBlocks + first * ENTRY, chunk.subarray(0, n * ENTRY));
      for (let i = 0; i < n; i++) entries[first + i] = chunk.readUInt32LE(i * ENTRY);
    }
    return new BlockMap(entries, h.offsetBlocks);
  }

  get(block: number): number {
    return this.entries[block];
  }

  set(block: number, entry: number): void {
    this.entries[block] = entry;
    this.dirty.add(Math.floor(block / ENTRIES_PER_SECTOR));
  }

  /**
   * The changed sectors of the map, as (file offset, bytes) in adjacent runs, taken now so
   * the caller can make the data they point to durable before writing them.
   */
  takeDirty(): { offset: number; bytes: Uint8Array }[] {
    const sectors = [...this.dirty].sort((a, b) => a - b);
    this.dirty.clear();
    const out: { offset: number; bytes: Uint8Array }[] = [];
    for (let i = 0; i < sectors.length; ) {
      let j = i + 1;
      while (j < sectors.length && sectors[j] === sectors[j - 1] + 1) j++;
      const first = sectors[i] * ENTRIES_PER_SECTOR;
      const end = Math.min(this.entries.length, (sectors[j - 1] + 1) * ENTRIES_PER_SECTOR);
      const bytes = Buffer.alloc((end - first) * ENTRY);
      for (let b = first; b < end; b++) bytes.writeUInt32LE(this.entries[b], (b - first) * ENTRY);
      out.push({ offset: this.offset + first * ENTRY, bytes });
      i = j;
    }
    return out;
  }
}

/** Finds every entry that cannot be trusted (see PROBLEM_*), and what the next allocation may use. */
export function scanBlockMap(entries: Uint32Array, h: VdiHeader, fileSize: number): MapScan {
  const problem = new Uint8Array(entries.length);
  const owner = new Int32Array(h.blocks).fill(-1);
  let problems = 0;
  let allocated = 0;
  let nextFree = 0;
  const flag = (block: number, bit: number) => {
    problem[block] |= bit;
    problems++;
  };
  for (let block = 0; block < entries.length; block++) {
    const entry = entries[block];
    if (!isAllocated(entry)) continue;
    if (entry >= h.blocks) {
      flag(block, PROBLEM_RANGE);
      continue;
    }
    allocated++;
    nextFree = Math.max(nextFree, entry + 1);
    if (owner[entry] >= 0) flag(block, PROBLEM_SHARED);
    else owner[entry] = block;
    if (h.offsetData + (entry + 1) * h.blockSize > fileSize) flag(block, PROBLEM_EOF);
  }
  let unused = 0;
  for (let i = 0; i < nextFree; i++) if (owner[i] < 0) unused++;
  return { problem, problems, owner, allocated, nextFree, unused };
}

/** The data blocks below scan.nextFree that no entry uses, in order. */
export function* unusedBlocks(scan: MapScan): Generator<number> {
  for (let i = 0; i < scan.nextFree; i++) if (scan.owner[i] < 0) yield i;
}

/** One line per problem of `block`'s entry, naming the block, its entry and what is wrong. */
export function describeProblems(scan: MapScan, block: number, entry: number, h: VdiHeader, fileSize: number): string[] {
  const bits = scan.problem[block];
  const out: string[] = [];
  if (bits & PROBLEM_RANGE) out.push(`block map entry ${block} points to data block ${entry}, past the ${h.blocks} blocks of the image`);
  if (bits & PROBLEM_SHARED) out.push(`block map entry ${block} points to data block ${entry}, which entry ${scan.owner[entry]} uses too`);
  if (bits & PROBLEM_EOF) {
    out.push(`block map entry ${block} points to data block ${entry} at offset ${h.offsetData + entry * h.blockSize}, past the end of the file (${fileSize} bytes)`);
  }
  return out;
}
