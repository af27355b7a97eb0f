/**
 * VMDK constants, named as in VMware's "Virtual Disk Format 1.1" (hosted sparse extents,
 * stream-optimized compressed extents) and qemu's block/vmdk.c.
 */
export const SECTOR = 512;

/** "KDMV" read as a big-endian u32 at offset 0 of a hosted sparse extent (spec §"Header"). */
export const SPARSE_MAGIC = 0x4b444d56;
/** "COWD": ESX vmfsSparse extents (not read by img). */
export const COWD_MAGIC = 0x434f5744;
export const DESCRIPTOR_SIGNATURE = '# Disk DescriptorFile';

/** SparseExtentHeader.flags bits. */
export const FLAG_VALID_NEWLINE_TEST = 1 << 0;
export const FLAG_REDUNDANT_GT = 1 << 1;
export const FLAG_ZERO_GRAIN = 1 << 2;
export const FLAG_COMPRESSED = 1 << 16;
export const FLAG_MARKERS = 1 << 17;

export const COMPRESSION_NONE = 0;
export const COMPRESSION_DEFLATE = 1;

/** gdOffset of a stream-optimized header: the grain directory's place is in the footer. */
export const GD_AT_END = 0xffffffffffffffffn;

/** Grain table entry meaning "reads as zeroes" when FLAG_ZERO_GRAIN is set. */
export const GTE_ZEROED = 1;

/** Marker types of stream-optimized extents (spec §"Stream-Optimized Compressed Sparse Extents"). */
export const MARKER_EOS = 0;
export const MARKER_GT = 1;
export const MARKER_GD = 2;
export const MARKER_FOOTER = 3;
/** A grain marker: lba (u64), size (u32), then the compressed bytes. */
export const GRAIN_MARKER_SIZE = 12;

/** What qemu-img creates: 64 KiB grains, 512 entries per grain table. */
export const DEFAULT_GRAIN_SECTORS = 128;
export const DEFAULT_GTES_PER_GT = 512;
/** Embedded descriptor of a created sparse extent: sector 1, 20 sectors (as qemu-img). */
export const EMBEDDED_DESC_OFFSET = 1;
export const EMBEDDED_DESC_SECTORS = 20;

/** Limits on untrusted headers (qemu refuses the same): grains up to 1 GiB, tables up to 512 entries. */
export const MAX_GRAIN_SECTORS = 0x200000;
export const MAX_GTES_PER_GT = 512;
/** Largest grain directory img loads (entries); qemu's limit too. */
export const MAX_GD_ENTRIES = 32 * 1024 * 1024;
/** A sparse extent addresses at most 2^32 sectors (32-bit grain table entries). */
export const MAX_EXTENT_SECTORS = 2 ** 32;
/** Descriptors longer than this are refused (qemu reads at most 1 MiB). */
export const MAX_DESCRIPTOR_BYTES = (1 << 20) - 1;
/** twoGbMaxExtent* split size. */
export const SPLIT_EXTENT_BYTES = 0x80000000;
/** Highest header version img reads (3: stream-optimized, or changed block tracking). */
export const MAX_VERSION = 3;
