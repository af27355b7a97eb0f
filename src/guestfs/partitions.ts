/**
 * Partition tables inside a disk image: MBR (with the extended partition's chain of EBRs)
 * and GPT (UEFI spec, chapter 5). Partitions are numbered as Linux numbers them: MBR slots
 * 1–4 (an empty slot keeps its number), logical partitions from 5 in chain order, GPT
 * entries by their index + 1. Tables are untrusted: every LBA is checked against the disk,
 * every count is capped and the EBR chain may not loop.
 */
import * as zlib from 'node:zlib';
import { BlockDevice } from '../block/device';
import { ImageError } from '../block/errors';
import { cstring, le16, le32, le64, u8 } from '../io/bytes';

export interface Partition {
  number: number;
  /** Bytes from the start of the disk. */
  start: number;
  size: number;
  /** MBR: the system id as '0x83'; GPT: the partition type GUID in lowercase. */
  type: string;
  /** GPT partition name. */
  name?: string;
  /** MBR status 0x80. */
  bootable?: boolean;
}

export interface PartitionTable {
  scheme: 'mbr' | 'gpt' | 'none';
  partitions: Partition[];
}

const SECTOR = 512;
const MBR_SIGNATURE = 0xaa55;
const MBR_ENTRIES = 446;
const GPT_PROTECTIVE = 0xee;
const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);
/** Linux stops at this many logical partitions; a longer chain is hostile or broken. */
const MAX_LOGICAL = 256;
const GPT_SIGNATURE = 'EFI PART';
const GPT_MAX_ENTRIES = 4096;

export async function readPartitions(dev: BlockDevice): Promise<PartitionTable> {
  if (dev.size < 2 * SECTOR) return { scheme: 'none', partitions: [] };
  const mbr = await readAt(dev, 0, SECTOR);
  if (le16(mbr, 510) !== MBR_SIGNATURE) return { scheme: 'none', partitions: [] };
  const slots = [0, 1, 2, 3].map((i) => mbrEntry(mbr, MBR_ENTRIES + i * 16));
  if (slots.some((e) => e.type === GPT_PROTECTIVE)) return { scheme: 'gpt', partitions: await readGpt(dev) };
  if (!looksLikeMbr(mbr, slots)) return { scheme: 'none', partitions: [] };

  const partitions: Partition[] = [];
  let extended: MbrEntry | undefined;
  for (const [i, e] of slots.entries()) {
    if (e.type === 0 || e.sectors === 0) continue;
    if (EXTENDED_TYPES.has(e.type)) {
      extended ??= e;
      continue;
    }
    partitions.push(toPartition(dev, i + 1, e, 0));
  }
  if (extended) partitions.push(...(await readLogical(dev, extended)));
  return { scheme: 'mbr', partitions };
}

interface MbrEntry {
  status: number;
  type: number;
  lba: number;
  sectors: number;
}

function mbrEntry(b: Uint8Array, o: number): MbrEntry {
  return { status: u8(b, o), type: u8(b, o + 4), lba: le32(b, o + 8), sectors: le32(b, o + 12) };
}

/**
 * A FAT or NTFS boot sector also ends in 0x55aa: a real MBR has status bytes 0x00 or 0x80
 * and at least one non-empty entry.
 */
function looksLikeMbr(b: Uint8Array, slots: MbrEntry[]): boolean {
  if (slots.some((e) => e.status !== 0 && e.status !== 0x80)) return false;
  if (!slots.some((e) => e.type !== 0 && e.sectors !== 0)) return false;
  // A filesystem boot sector names its file system where an MBR has boot code.
  const oem = cstring(b, 3, 8);
  return !/^(NTFS|MSDOS|MSWIN|mkfs\.fat|EXFAT)/.test(oem);
}

function toPartition(dev: BlockDevice, number: number, e: MbrEntry, base: number): Partition {
  const start = (base + e.lba) * SECTOR;
  const size = e.sectors * SECTOR;
  if (start + size > dev.size || e.lba === 0) {
    throw new ImageError('CORRUPT', `MBR partition ${number} (sectors ${base + e.lba}+${e.sectors}) lies outside the disk (${dev.size / SECTOR} sectors)`);
  }
  return { number, start, size, type: `0x${e.type.toString(16).padStart(2, '0')}`, bootable: e.status === 0x80 };
}

/**
 * Logical partitions: each EBR's first entry is a partition relative to that EBR, its
 * second entry the next EBR relative to the start of the extended partition.
 */
async function readLogical(dev: BlockDevice, extended: MbrEntry): Promise<Partition[]> {
  const out: Partition[] = [];
  const seen = new Set<number>();
  const extStart = extended.lba;
  const extEnd = extended.lba + extended.sectors;
  let ebr = extStart;
  while (true) {
    if (seen.has(ebr)) throw new ImageError('CORRUPT', `the extended partition's EBR chain loops at sector ${ebr}`);
    if (out.length >= MAX_LOGICAL) throw new ImageError('CORRUPT', `more than ${MAX_LOGICAL} logical partitions`);
    if (ebr < extStart || ebr >= extEnd || (ebr + 1) * SECTOR > dev.size) {
      throw new ImageError('CORRUPT', `EBR at sector ${ebr} lies outside the extended partition (sectors ${extStart}–${extEnd - 1})`);
    }
    seen.add(ebr);
    const b = await readAt(dev, ebr * SECTOR, SECTOR);
    if (le16(b, 510) !== MBR_SIGNATURE) throw new ImageError('CORRUPT', `EBR at sector ${ebr} has no 0x55aa signature`);
    const part = mbrEntry(b, MBR_ENTRIES);
    const next = mbrEntry(b, MBR_ENTRIES + 16);
    if (part.type !== 0 && part.sectors !== 0) {
      const p = toPartition(dev, 5 + out.length, part, ebr);
      if (ebr + part.lba + part.sectors > extEnd) throw new ImageError('CORRUPT', `logical partition ${p.number} ends past the extended partition`);
      out.push(p);
    }
    if (next.type === 0 || next.sectors === 0 || next.lba === 0) return out;
    ebr = extStart + next.lba;
  }
}

async function readGpt(dev: BlockDevice): Promise<Partition[]> {
  const lastLba = Math.floor(dev.size / SECTOR) - 1;
  let firstErr: ImageError | undefined;
  // The primary header at LBA 1; if it is damaged, the backup at the last LBA (5.3.2).
  for (const lba of [1, lastLba]) {
    try {
      return await readGptAt(dev, lba, lastLba);
    } catch (err) {
      if (!(err instanceof ImageError)) throw err;
      firstErr ??= err;
    }
  }
  throw firstErr!;
}

async function readGptAt(dev: BlockDevice, lba: number, lastLba: number): Promise<Partition[]> {
  const h = await readAt(dev, lba * SECTOR, SECTOR);
  const where = `GPT header at LBA ${lba}`;
  if (Buffer.from(h.subarray(0, 8)).toString('latin1') !== GPT_SIGNATURE) throw new ImageError('CORRUPT', `${where}: no "EFI PART" signature`);
  const headerSize = le32(h, 12);
  if (headerSize < 92 || headerSize > SECTOR) throw new ImageError('CORRUPT', `${where}: header size ${headerSize} is not 92–512`);
  const crc = le32(h, 16);
  const copy = Buffer.from(h.subarray(0, headerSize));
  copy.writeUInt32LE(0, 16);
  if (zlib.crc32(copy) !== crc) throw new ImageError('CORRUPT', `${where}: header CRC32 mismatch`);
  const firstUsable = le64(h, 40);
  const lastUsable = le64(h, 48);
  const entriesLba = le64(h, 72);
  const count = le32(h, 80);
  const entrySize = le32(h, 84);
  const entriesCrc = le32(h, 88);
  if (count > GPT_MAX_ENTRIES) throw new ImageError('CORRUPT', `${where}: ${count} partition entries (more than ${GPT_MAX_ENTRIES})`);
  if (entrySize < 128 || entrySize > 4096 || entrySize % 8) throw new ImageError('CORRUPT', `${where}: partition entry size ${entrySize}`);
  const tableBytes = count * entrySize;
  if (entriesLba < 2 || entriesLba * SECTOR + tableBytes > dev.size) throw new ImageError('CORRUPT', `${where}: partition entries at LBA ${entriesLba} lie outside the disk`);
  if (firstUsable > lastUsable || lastUsable > lastLba) throw new ImageError('CORRUPT', `${where}: usable LBAs ${firstUsable}–${lastUsable} outside the disk`);
  const table = await readAt(dev, entriesLba * SECTOR, tableBytes);
  if (zlib.crc32(table) !== entriesCrc) throw new ImageError('CORRUPT', `${where}: partition entry array CRC32 mismatch`);

  const out: Partition[] = [];
  for (let i = 0; i < count; i++) {
    const o = i * entrySize;
    const type = guid(table, o);
    if (type === '00000000-0000-0000-0000-000000000000') continue;
    const first = le64(table, o + 32);
    const last = le64(table, o + 40);
    if (first < firstUsable || last > lastUsable || first > last) {
      throw new ImageError('CORRUPT', `GPT partition ${i + 1} (LBA ${first}–${last}) lies outside the usable LBAs ${firstUsable}–${lastUsable}`);
    }
    const name = Buffer.from(table.subarray(o + 56, o + 128)).toString('utf16le').replace(/\0.*$/s, '');
    out.push({ number: i + 1, start: first * SECTOR, size: (last - first + 1) * SECTOR, type, ...(name ? { name } : {}) });
  }
  return out;
}

/** GUIDs are stored with their first three fields little-endian. */
function guid(b: Uint8Array, o: number): string {
  const hex = (from: number, to: number, reverse: boolean): string => {
    const bytes = Array.from(b.subarray(o + from, o + to));
    if (reverse) bytes.reverse();
    return bytes.map((x) => x.toString(16).padStart(2, '0')).join('');
  };
  return [hex(0, 4, true), hex(4, 6, true), hex(6, 8, true), hex(8, 10, false), hex(10, 16, false)].join('-');
}

async function readAt(dev: BlockDevice, offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  await dev.read(offset, buf);
  return buf;
}
