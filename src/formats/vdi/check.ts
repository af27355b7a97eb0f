/**
 * `img check` for VDI: qemu's vdi_co_check (entries past the map's range, two entries on one
 * data block, cBlocksAllocated not matching the entries) plus data blocks past the end of
 * the file, and leaks: data blocks below the highest one in use that no entry uses. qemu and
 * VirtualBox both append the next block at index cBlocksAllocated, so a leak is also a trap:
 * once the count is fixed, the next allocation lands on a block in use.
 *
 * Repairs are the safe ones, each keeping what every block reads:
 * - an entry whose data block lies wholly past the end of the file (it read as zeroes): a
 *   zero block;
 * - a data block the end of the file cuts: the file is extended with zeroes;
 * - two entries on one data block: the later one gets its own copy of the data, in an unused
 *   data block (up to MAX_COPIES of them);
 * - leaks (also with -r leaks): the last data blocks move into the holes, the file shrinks;
 * - cBlocksAllocated: rewritten to the count of entries in use.
 * An out-of-range entry inside the file is left alone: which data it means is unknowable.
 */
import { CheckReport, RepairMode } from '../../block/image';
import { HostFile } from '../../io/host-file';
import { BlockMap, describeProblems, MapScan, PROBLEM_EOF, PROBLEM_SHARED, scanBlockMap, unusedBlocks } from './block-map';
import { allocatedField, BLOCK_ZERO, F, VdiHeader } from './header';

/** Lines reported per kind of finding; a hostile map could otherwise produce millions. */
const MAX_MESSAGES = 1000;
/** Shared data blocks repaired by copying, at most. */
const MAX_COPIES = 4096;

export async function checkVdi(file: HostFile, h: VdiHeader, map: BlockMap, repair?: RepairMode): Promise<CheckReport> {
  const report: CheckReport = {
    filename: file.path,
    format: 'vdi',
    checkErrors: 0,
    corruptions: 0,
    leaks: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    messages: [],
  };
  let fileSize = await file.size();
  const scan = scanBlockMap(map.entries, h, fileSize);
  reportScan(scan, map, h, fileSize, report);
  if (!repair) return report;

  if (repair === 'all' && scan.problems > 0) fileSize = await repairProblems(file, h, map, scan, fileSize, report);
  const after = scanBlockMap(map.entries, h, fileSize);
  if (after.problems === 0 && after.unused > 0) await compact(file, h, map, after);
  await writeMap(file, map);
  const final = scanBlockMap(map.entries, h, await file.size());
  // Leaks go by compaction, or by a repair copying data into them.
  report.leaksFixed = Math.max(0, scan.unused - final.unused);
  if (repair === 'all' && final.allocated !== h.blocksAllocated) {
    await file.write(F.cBlocksAllocated, allocatedField(final.allocated));
    if (scan.allocated !== h.blocksAllocated) report.corruptionsFixed++;
    h.blocksAllocated = final.allocated;
  }
  await file.flush();
  return report;
}

function reportScan(scan: MapScan, map: BlockMap, h: VdiHeader, fileSize: number, report: CheckReport): void {
  const lines: string[] = [];
  for (let block = 0; block < scan.problem.length && lines.length < MAX_MESSAGES; block++) {
    if (scan.problem[block]) lines.push(...describeProblems(scan, block, map.get(block), h, fileSize).map((l) => `ERROR: ${l}`));
  }
  report.messages.push(...lines.slice(0, MAX_MESSAGES));
  if (scan.problems > MAX_MESSAGES) report.messages.push(`ERROR: … and ${scan.problems - MAX_MESSAGES} more block map entries like these`);
  report.corruptions += scan.problems;
  if (scan.allocated !== h.blocksAllocated) {
    report.messages.push(`ERROR: allocated blocks mismatch: cBlocksAllocated is ${h.blocksAllocated}, the block map uses ${scan.allocated}`);
    report.corruptions++;
  }
  let shown = 0;
  for (const i of unusedBlocks(scan)) {
    if (shown++ === MAX_MESSAGES) break;
    report.messages.push(`Leaked data block ${i}: no block map entry uses it`);
  }
  if (scan.unused > MAX_MESSAGES) report.messages.push(`… and ${scan.unused - MAX_MESSAGES} more leaked data blocks`);
  report.leaks = scan.unused;
}

async function repairProblems(file: HostFile, h: VdiHeader, map: BlockMap, scan: MapScan, fileSize: number, report: CheckReport): Promise<number> {
  const bs = h.blockSize;
  const start = (entry: number) => h.offsetData + entry * bs;
  // Entries whose data block lies wholly past the end of the file read as zeroes: they become
  // zero blocks. A block the end of the file cuts is completed with zeroes.
  let end = fileSize;
  for (let block = 0; block < scan.problem.length; block++) {
    const bits = scan.problem[block];
    if (!bits) continue;
    const entry = map.get(block);
    if (start(entry) >= fileSize) {
      map.set(block, BLOCK_ZERO);
      report.corruptionsFixed += popcount(bits);
      scan.problem[block] = 0;
    } else if (bits & PROBLEM_EOF) {
      end = Math.max(end, start(entry) + bs);
      report.corruptionsFixed++;
    }
  }
  if (end > fileSize) await file.truncate(end);
  // Shared data blocks: the later entries get a copy each, in a data block no entry uses
  // (below cBlocks there always is one). Too many copies would be an attack, not a repair.
  let shared = 0;
  for (const bits of scan.problem) if (bits & PROBLEM_SHARED) shared++;
  if (shared > MAX_COPIES) {
    report.messages.push(`ERROR: ${shared} shared block map entries are too many to repair by copying (at most ${MAX_COPIES})`);
    return end;
  }
  const free = unusedBlocks(scan);
  let next = scan.nextFree;
  const data = new Uint8Array(bs);
  for (let block = 0; block < scan.problem.length; block++) {
    if (!(scan.problem[block] & PROBLEM_SHARED)) continue;
    const r = free.next();
    const to = r.done ? next++ : r.value;
    await file.read(start(map.get(block)), data);
    await file.write(start(to), data);
    map.set(block, to);
    report.corruptionsFixed++;
  }
  await file.flush();
  return file.size();
}

function popcount(bits: number): number {
  return (bits & 1) + ((bits >> 1) & 1) + ((bits >> 2) & 1);
}

/** Moves the highest data blocks into the unused slots, then cuts the file after the last one. */
async function compact(file: HostFile, h: VdiHeader, map: BlockMap, scan: MapScan): Promise<void> {
  const bs = h.blockSize;
  const owner = scan.owner;
  let last = scan.nextFree - 1;
  const data = new Uint8Array(bs);
  for (const hole of unusedBlocks(scan)) {
    while (last > hole && owner[last] < 0) last--;
    if (last <= hole) break;
    await file.read(h.offsetData + last * bs, data);
    await file.write(h.offsetData + hole * bs, data);
    map.set(owner[last], hole);
    owner[hole] = owner[last];
    owner[last] = -1;
    last--;
  }
  // Data first, then the map; only then may the old copies go.
  await file.flush();
  await writeMap(file, map);
  await file.flush();
  await file.truncate(h.offsetData + (scan.nextFree - scan.unused) * bs);
}

async function writeMap(file: HostFile, map: BlockMap): Promise<void> {
  for (const s of map.takeDirty()) await file.write(s.offset, s.bytes);
}
