/** Numbers from qemu's docs/interop/qcow2.rst ("QCOW2 Image Format"). */

export const QCOW2_MAGIC = 0x514649fb; // "QFI\xfb"
export const V2_HEADER_LENGTH = 72;
/** v3 header up to and including refcount_order and header_length. */
export const V3_MIN_HEADER_LENGTH = 104;
/** v3 header with the compression_type byte, padded to a multiple of 8 (what qemu writes). */
export const V3_HEADER_LENGTH = 112;

export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
export const DEFAULT_CLUSTER_BITS = 16;
export const MAX_REFCOUNT_ORDER = 6;
export const MAX_BACKING_FILE_NAME = 1023;

// Limits qemu enforces on open; anything larger is refused before it sizes an allocation.
export const MAX_L1_BYTES = 32 << 20;
export const MAX_REFTABLE_BYTES = 8 << 20;
export const MAX_SNAPSHOTS = 65536;
/** Extended L2 entries need clusters of at least 16 KiB (32 subclusters of ≥ 512 bytes). */
export const MIN_EXTL2_CLUSTER_BITS = 14;
export const SUBCLUSTERS_PER_CLUSTER = 32;

// Header extension types.
export const EXT_END = 0x00000000;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_CRYPTO = 0x0537be77;
export const EXT_DATA_FILE = 0x44415441;

// Incompatible feature bits.
export const INCOMPAT_DIRTY = 1n << 0n;
export const INCOMPAT_CORRUPT = 1n << 1n;
export const INCOMPAT_DATA_FILE = 1n << 2n;
export const INCOMPAT_COMPRESSION = 1n << 3n;
export const INCOMPAT_EXTL2 = 1n << 4n;
export const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

// Compatible feature bits.
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;

// Autoclear feature bits.
export const AUTOCLEAR_BITMAPS = 1n << 0n;
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;
export const AUTOCLEAR_KNOWN = AUTOCLEAR_BITMAPS | AUTOCLEAR_DATA_FILE_RAW;

export const COMPRESSION_DEFLATE = 0;
export const COMPRESSION_ZSTD = 1;

// L1 entry bits (L2 entries are decoded in l2.ts).
export const L1E_OFFSET_MASK = 0x00fffffffffffe00n;
export const OFLAG_COPIED = 1n << 63n;
/** Bits of an L1 entry that must be zero (besides the offset and COPIED). */
export const L1E_RESERVED_MASK = 0x7f000000000001ffn;

// Refcount table entries: bits 0-8 reserved, 9-63 the refcount block offset.
export const REFT_OFFSET_MASK = 0xfffffffffffffe00n;

// Snapshot table.
export const SNAPSHOT_HEADER_SIZE = 40;
export const SNAPSHOT_EXTRA_V3 = 24; // vm_state_size_large, disk_size, icount

export const FEATURE_NAME_ENTRY = 48;
