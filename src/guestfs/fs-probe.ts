/**
 * Which filesystem a partition (or a whole disk) holds, from the magic numbers in its
 * superblock, as blkid finds them. Only what img needs: the type (to load the right kernel
 * module in the boot appliance), the label and the UUID (to show the user).
 */
import { BlockDevice } from '../block/device';
import { cstring, le16, le32 } from '../io/bytes';

export type FsType = 'ext2' | 'ext3' | 'ext4' | 'xfs' | 'btrfs' | 'vfat' | 'ntfs' | 'iso9660' | 'swap';

export interface FsInfo {
  type: FsType;
  label?: string;
  uuid?: string;
}

/** The bytes of the region every probe below reads from: the first 68 KiB (btrfs's superblock at 64 KiB). */
const PROBE_BYTES = 65536 + 4096;

// ext2/3/4 superblock at 1024 (Documentation/filesystems/ext4/super.rst)
const EXT_SUPER = 1024;
const EXT_MAGIC = 0xef53;
const EXT3_FEATURE_COMPAT_HAS_JOURNAL = 0x4;
/** Incompat/ro_compat features only ext4 has: extents, 64bit, flex_bg, huge_file, metadata_csum, … */
const EXT4_INCOMPAT = 0x40 | 0x80 | 0x200 | 0x400 | 0x8000 | 0x10000;
const EXT4_RO_COMPAT = 0x8 | 0x10 | 0x20 | 0x40 | 0x400;

/** Probes `dev` from byte `start` (a partition's offset); null when nothing is recognised. */
export async function probeFilesystem(dev: BlockDevice, start = 0): Promise<FsInfo | null> {
  const length = Math.min(PROBE_BYTES, dev.size - start);
  if (length < 2048) return null;
  const b = new Uint8Array(length);
  await dev.read(start, b);
  const has = (end: number): boolean => end <= b.length;
  const text = (o: number, n: number): string => Buffer.from(b.subarray(o, o + n)).toString('latin1');

  if (has(32768 + 2048) && text(32769, 5) === 'CD001') return { type: 'iso9660', label: trimmed(text(32768 + 40, 32)) };
  if (has(65536 + 4096) && text(65536 + 64, 8) === '_BHRfS_M') {
    return { type: 'btrfs', uuid: uuid(b, 65536 + 32), label: cstring(b, 65536 + 299, 256) || undefined };
  }
  if (text(0, 4) === 'XFSB') return { type: 'xfs', uuid: uuid(b, 32), label: cstring(b, 108, 12) || undefined };
  if (le16(b, EXT_SUPER + 56) === EXT_MAGIC) {
    const compat = le32(b, EXT_SUPER + 92);
    const incompat = le32(b, EXT_SUPER + 96);
    const roCompat = le32(b, EXT_SUPER + 100);
    const type = incompat & EXT4_INCOMPAT || roCompat & EXT4_RO_COMPAT ? 'ext4' : compat & EXT3_FEATURE_COMPAT_HAS_JOURNAL ? 'ext3' : 'ext2';
    return { type, uuid: uuid(b, EXT_SUPER + 104), label: cstring(b, EXT_SUPER + 120, 16) || undefined };
  }
  if (text(3, 8) === 'NTFS    ') return { type: 'ntfs' };
  if (le16(b, 510) === 0xaa55) {
    // FAT12/16 name their type at 54, FAT32 at 82; the label and serial precede it.
    if (text(82, 5) === 'FAT32') return { type: 'vfat', label: fatLabel(text(71, 11)), uuid: fatSerial(b, 67) };
    if (text(54, 3) === 'FAT') return { type: 'vfat', label: fatLabel(text(43, 11)), uuid: fatSerial(b, 39) };
  }
  if (has(4096) && /^SWAP(SPACE2|-SPACE)$/.test(text(4096 - 10, 10))) return { type: 'swap', uuid: uuid(b, 1024 + 12) };
  return null;
}

function trimmed(s: string): string | undefined {
  return s.trim() || undefined;
}

function fatLabel(s: string): string | undefined {
  const t = s.trim();
  return t && t !== 'NO NAME' ? t : undefined;
}

function fatSerial(b: Uint8Array, o: number): string {
  const v = le32(b, o).toString(16).toUpperCase().padStart(8, '0');
  return `${v.slice(0, 4)}-${v.slice(4)}`;
}

/** Filesystem UUIDs are stored as 16 bytes in order (unlike GPT's mixed-endian GUIDs). */
function uuid(b: Uint8Array, o: number): string {
  const h = Array.from(b.subarray(o, o + 16), (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

