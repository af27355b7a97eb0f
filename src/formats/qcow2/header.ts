/**
 * The qcow2 header (cluster 0): parsing with every field bounds-checked against the spec's
 * limits and the file's size, and serialization with header extensions and the backing name.
 * Field names follow docs/interop/qcow2.rst.
 */
import { badField, ImageError } from '../../block/errors';
import { be16, be32, be64, be64n, cstring, divCeil, setBe32, setBe64, setU8, u8 } from '../../io/bytes';
import * as C from './constants';

export interface FeatureName {
  type: 'incompatible' | 'compatible' | 'autoclear';
  bit: number;
  name: string;
}

export interface HeaderExtension {
  type: number;
  data: Uint8Array;
}

export interface Qcow2Header {
  version: 2 | 3;
  backingFileOffset: number;
  backingFileSize: number;
  clusterBits: number;
  size: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
  refcountOrder: number;
  headerLength: number;
  compressionType: number;
  /** From the backing file name field (not an extension). */
  backingFile?: string;
  backingFormat?: string;
  /** External data file name extension. */
  dataFile?: string;
  featureNames: FeatureName[];
  /** Bitmaps directory extension, kept verbatim (img preserves but does not maintain bitmaps). */
  bitmapsExtension?: Uint8Array;
  /** Extensions img does not know: preserved as qemu does. */
  unknownExtensions: HeaderExtension[];
}

/** Derived geometry every part of the qcow2 code needs. */
export interface Geometry {
  clusterBits: number;
  clusterSize: number;
  extendedL2: boolean;
  /** Bytes per L2 entry: 8, or 16 with extended L2. */
  l2EntrySize: number;
  l2Entries: number;
  subclusterSize: number;
  refcountBits: number;
  refcountBlockEntries: number;
}

export function geometry(h: Pick<Qcow2Header, 'clusterBits' | 'incompatibleFeatures' | 'refcountOrder'>): Geometry {
  const clusterSize = 2 ** h.clusterBits;
  const extendedL2 = (h.incompatibleFeatures & C.INCOMPAT_EXTL2) !== 0n;
  const l2EntrySize = extendedL2 ? 16 : 8;
  const refcountBits = 2 ** h.refcountOrder;
  return {
    clusterBits: h.clusterBits,
    clusterSize,
    extendedL2,
    l2EntrySize,
    l2Entries: clusterSize / l2EntrySize,
    subclusterSize: extendedL2 ? clusterSize / C.SUBCLUSTERS_PER_CLUSTER : clusterSize,
    refcountBits,
    refcountBlockEntries: (clusterSize * 8) / refcountBits,
  };
}

/** L1 entries needed to map `size` bytes. */
export function l1EntriesFor(size: number, g: Geometry): number {
  return divCeil(size, g.clusterSize * g.l2Entries);
}

const FEATURE_TYPES: FeatureName['type'][] = ['incompatible', 'compatible', 'autoclear'];

/**
 * Parses and validates the header. `head` holds at least the first cluster (or the whole file
 * when shorter); `fileSize` bounds every table offset.
 */
export function parseHeader(head: Uint8Array, fileSize: number, file: string): Qcow2Header {
  try {
    return parseUnchecked(head, fileSize, file);
  } catch (err) {
    if (err instanceof RangeError) throw new ImageError('BAD_HEADER', `truncated or malformed qcow2 header (${err.message})`, { file });
    throw err;
  }
}

function parseUnchecked(b: Uint8Array, fileSize: number, file: string): Qcow2Header {
  if (b.byteLength < C.V2_HEADER_LENGTH) throw new ImageError('BAD_HEADER', `file is too short for a qcow2 header (${b.byteLength} bytes)`, { file });
  if (be32(b, 0) !== C.QCOW2_MAGIC) throw badField(file, 'magic', be32(b, 0), 'not a qcow2 image');
  const version = be32(b, 4);
  if (version !== 2 && version !== 3) {
    throw new ImageError('UNSUPPORTED', `qcow2 version ${version} is not supported (only 2 and 3)`, { file, field: 'version', value: version });
  }
  const clusterBits = be32(b, 20);
  if (clusterBits < C.MIN_CLUSTER_BITS || clusterBits > C.MAX_CLUSTER_BITS) {
    throw badField(file, 'cluster_bits', clusterBits, `must be ${C.MIN_CLUSTER_BITS}..${C.MAX_CLUSTER_BITS}`);
  }
  const clusterSize = 2 ** clusterBits;
  const h: Qcow2Header = {
    version,
    backingFileOffset: be64(b, 8),
    backingFileSize: be32(b, 16),
    clusterBits,
    size: be64(b, 24),
    cryptMethod: be32(b, 32),
    l1Size: be32(b, 36),
    l1TableOffset: be64(b, 40),
    refcountTableOffset: be64(b, 48),
    refcountTableClusters: be32(b, 56),
    nbSnapshots: be32(b, 60),
    snapshotsOffset: be64(b, 64),
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    refcountOrder: 4,
    headerLength: C.V2_HEADER_LENGTH,
    compressionType: C.COMPRESSION_DEFLATE,
    featureNames: [],
    unknownExtensions: [],
  };
  if (version === 3) {
    h.incompatibleFeatures = be64n(b, 72);
    h.compatibleFeatures = be64n(b, 80);
    h.autoclearFeatures = be64n(b, 88);
    h.refcountOrder = be32(b, 96);
    h.headerLength = be32(b, 100);
    if (h.headerLength < C.V3_MIN_HEADER_LENGTH || h.headerLength > clusterSize || h.headerLength % 8 !== 0) {
      throw badField(file, 'header_length', h.headerLength, `must be a multiple of 8 between ${C.V3_MIN_HEADER_LENGTH} and the cluster size`);
    }
    if (h.headerLength > C.V3_MIN_HEADER_LENGTH) h.compressionType = u8(b, 104);
  }
  // Extensions (and the names in the feature table) are needed to word the errors below.
  parseExtensions(b, h, clusterSize, file);
  validate(h, fileSize, file);
  return h;
}

function parseExtensions(b: Uint8Array, h: Qcow2Header, clusterSize: number, file: string): void {
  const limit = Math.min(b.byteLength, clusterSize);
  let off = h.headerLength;
  const end = h.backingFileOffset > 0 ? Math.min(limit, h.backingFileOffset) : limit;
  while (off + 8 <= end) {
    const type = be32(b, off);
    const len = be32(b, off + 4);
    if (type === C.EXT_END) return;
    if (off + 8 + len > end) throw badField(file, 'header extension length', len, `extension 0x${type.toString(16)} runs past the header cluster`);
    const data = b.slice(off + 8, off + 8 + len);
    switch (type) {
      case C.EXT_BACKING_FORMAT:
        h.backingFormat = cstring(data, 0, len);
        break;
      case C.EXT_DATA_FILE:
        h.dataFile = cstring(data, 0, len);
        break;
      case C.EXT_FEATURE_TABLE:
        for (let i = 0; i + C.FEATURE_NAME_ENTRY <= len; i += C.FEATURE_NAME_ENTRY) {
          const t = FEATURE_TYPES[data[i]];
          if (t) h.featureNames.push({ type: t, bit: data[i + 1], name: cstring(data, i + 2, 46) });
        }
        break;
      case C.EXT_BITMAPS:
        h.bitmapsExtension = data;
        break;
      case C.EXT_CRYPTO:
        throw new ImageError('UNSUPPORTED', 'encrypted qcow2 images are not supported', { file, field: 'crypto header' });
      default:
        h.unknownExtensions.push({ type, data });
    }
    off += 8 + Math.ceil(len / 8) * 8;
  }
}

function validate(h: Qcow2Header, fileSize: number, file: string): void {
  const g = geometry(h);
  const { clusterSize } = g;
  const unknownIncompat = h.incompatibleFeatures & ~C.INCOMPAT_KNOWN;
  if (unknownIncompat !== 0n) {
    const names: string[] = [];
    for (let bit = 0; bit < 64; bit++) {
      if (!(unknownIncompat & (1n << BigInt(bit)))) continue;
      const named = h.featureNames.find((f) => f.type === 'incompatible' && f.bit === bit);
      names.push(named ? `${named.name} (bit ${bit})` : `bit ${bit}`);
    }
    throw new ImageError('UNSUPPORTED', `unsupported qcow2 incompatible features: ${names.join(', ')}`, {
      file,
      field: 'incompatible_features',
      value: h.incompatibleFeatures,
    });
  }
  if (h.version === 2 && h.refcountOrder !== 4) throw badField(file, 'refcount_order', h.refcountOrder, 'must be 4 in a version 2 image');
  if (h.refcountOrder > C.MAX_REFCOUNT_ORDER) throw badField(file, 'refcount_order', h.refcountOrder, `must be 0..${C.MAX_REFCOUNT_ORDER}`);
  if (h.cryptMethod !== 0) {
    throw new ImageError('UNSUPPORTED', `encrypted qcow2 images are not supported (crypt_method ${h.cryptMethod})`, { file, field: 'crypt_method', value: h.cryptMethod });
  }
  const compressionBit = (h.incompatibleFeatures & C.INCOMPAT_COMPRESSION) !== 0n;
  if (h.compressionType !== C.COMPRESSION_DEFLATE && h.compressionType !== C.COMPRESSION_ZSTD) {
    throw new ImageError('UNSUPPORTED', `unknown compression_type ${h.compressionType}`, { file, field: 'compression_type', value: h.compressionType });
  }
  if ((h.compressionType !== C.COMPRESSION_DEFLATE) !== compressionBit) {
    throw badField(file, 'compression_type', h.compressionType, 'does not agree with the compression type incompatible bit');
  }
  if (g.extendedL2 && h.clusterBits < C.MIN_EXTL2_CLUSTER_BITS) {
    throw badField(file, 'cluster_bits', h.clusterBits, 'extended L2 entries need clusters of at least 16 KiB');
  }
  if ((h.incompatibleFeatures & C.INCOMPAT_DATA_FILE) !== 0n && h.dataFile === undefined) {
    throw new ImageError('UNSUPPORTED', 'image uses an external data file but does not name it', { file, field: 'data file' });
  }

  // Tables: aligned, capped, and inside the file.
  const inFile = (field: string, offset: number, bytes: number) => {
    if (offset % clusterSize !== 0) throw badField(file, field, offset, `not aligned to the ${clusterSize}-byte cluster size`);
    if (offset + bytes > fileSize) throw badField(file, field, offset, `table of ${bytes} bytes ends past the end of the file (${fileSize} bytes)`);
  };
  const l1Needed = l1EntriesFor(h.size, g);
  if (h.l1Size * 8 > C.MAX_L1_BYTES) throw badField(file, 'l1_size', h.l1Size, `L1 table larger than ${C.MAX_L1_BYTES} bytes`);
  if (h.l1Size < l1Needed) throw badField(file, 'l1_size', h.l1Size, `too small for the virtual size ${h.size} (needs ${l1Needed})`);
  if (h.l1Size > 0) inFile('l1_table_offset', h.l1TableOffset, h.l1Size * 8);
  if (h.refcountTableClusters === 0) throw badField(file, 'refcount_table_clusters', 0, 'an image needs a refcount table');
  if (h.refcountTableClusters * clusterSize > C.MAX_REFTABLE_BYTES) {
    throw badField(file, 'refcount_table_clusters', h.refcountTableClusters, `refcount table larger than ${C.MAX_REFTABLE_BYTES} bytes`);
  }
  inFile('refcount_table_offset', h.refcountTableOffset, h.refcountTableClusters * clusterSize);
  if (h.refcountTableOffset === 0) throw badField(file, 'refcount_table_offset', 0, 'the refcount table cannot overlap the header');
  if (h.l1Size > 0 && h.l1TableOffset === 0) throw badField(file, 'l1_table_offset', 0, 'the L1 table cannot overlap the header');
  if (h.nbSnapshots > C.MAX_SNAPSHOTS) throw badField(file, 'nb_snapshots', h.nbSnapshots, `more than ${C.MAX_SNAPSHOTS} snapshots`);
  if (h.nbSnapshots > 0) inFile('snapshots_offset', h.snapshotsOffset, h.nbSnapshots * C.SNAPSHOT_HEADER_SIZE);

  if (h.backingFileOffset !== 0) {
    if (h.backingFileSize === 0 || h.backingFileSize > C.MAX_BACKING_FILE_NAME) {
      throw badField(file, 'backing_file_size', h.backingFileSize, `must be 1..${C.MAX_BACKING_FILE_NAME}`);
    }
    if (h.backingFileOffset + h.backingFileSize > clusterSize) {
      throw badField(file, 'backing_file_offset', h.backingFileOffset, 'the backing file name must lie in the first cluster');
    }
  }
}

/** Reads the backing file name once the caller has the first cluster in `head`. */
export function readBackingName(head: Uint8Array, h: Qcow2Header, file: string): string | undefined {
  if (h.backingFileOffset === 0) return undefined;
  if (h.backingFileOffset + h.backingFileSize > head.byteLength) {
    throw badField(file, 'backing_file_offset', h.backingFileOffset, 'backing file name lies past the end of the file');
  }
  return Buffer.from(head.subarray(h.backingFileOffset, h.backingFileOffset + h.backingFileSize)).toString('utf8');
}

/** The feature-name table img writes into v3 images: every feature it knows, as qemu does. */
export const KNOWN_FEATURE_NAMES: FeatureName[] = [
  { type: 'incompatible', bit: 0, name: 'dirty bit' },
  { type: 'incompatible', bit: 1, name: 'corrupt bit' },
  { type: 'incompatible', bit: 2, name: 'external data file' },
  { type: 'incompatible', bit: 3, name: 'compression type' },
  { type: 'incompatible', bit: 4, name: 'extended L2 entries' },
  { type: 'compatible', bit: 0, name: 'lazy refcounts' },
  { type: 'autoclear', bit: 0, name: 'bitmaps' },
  { type: 'autoclear', bit: 1, name: 'raw external data' },
];

/** Bytes the bitmaps and unknown extensions take (they follow the feature table). */
function extraBytes(h: Qcow2Header): number {
  const all = [...(h.bitmapsExtension ? [h.bitmapsExtension] : []), ...h.unknownExtensions.map((e) => e.data)];
  return all.reduce((n, d) => n + 8 + Math.ceil(d.byteLength / 8) * 8, 0);
}

/**
 * Serializes the header, its extensions and the backing name into one cluster-sized buffer.
 * Sets backingFileOffset/Size on `h` to where the name landed. Throws if it does not fit.
 */
export function serializeHeader(h: Qcow2Header, file: string): Uint8Array {
  const clusterSize = 2 ** h.clusterBits;
  const out = new Uint8Array(clusterSize);
  const headerLength = h.version === 3 ? Math.max(h.headerLength, C.V3_HEADER_LENGTH) : C.V2_HEADER_LENGTH;
  h.headerLength = headerLength;

  const exts: HeaderExtension[] = [];
  const text = (s: string) => new Uint8Array(Buffer.from(s, 'utf8'));
  if (h.backingFormat !== undefined && h.backingFile !== undefined) exts.push({ type: C.EXT_BACKING_FORMAT, data: text(h.backingFormat) });
  if (h.dataFile !== undefined) exts.push({ type: C.EXT_DATA_FILE, data: text(h.dataFile) });
  // The feature-name table is optional: like qemu, leave it out when the cluster has no room.
  const nameBytes = h.backingFile ? Buffer.byteLength(h.backingFile, 'utf8') : 0;
  const used = exts.reduce((n, e) => n + 8 + Math.ceil(e.data.byteLength / 8) * 8, headerLength + 8) + nameBytes;
  const tableBytes = 8 + KNOWN_FEATURE_NAMES.length * C.FEATURE_NAME_ENTRY;
  if (h.version === 3 && used + tableBytes + extraBytes(h) <= clusterSize) {
    const table = new Uint8Array(KNOWN_FEATURE_NAMES.length * C.FEATURE_NAME_ENTRY);
    KNOWN_FEATURE_NAMES.forEach((f, i) => {
      const o = i * C.FEATURE_NAME_ENTRY;
      table[o] = FEATURE_TYPES.indexOf(f.type);
      table[o + 1] = f.bit;
      table.set(text(f.name).subarray(0, 46), o + 2);
    });
    exts.push({ type: C.EXT_FEATURE_TABLE, data: table });
  }
  if (h.bitmapsExtension) exts.push({ type: C.EXT_BITMAPS, data: h.bitmapsExtension });
  exts.push(...h.unknownExtensions);

  let off = headerLength;
  const need = (n: number) => {
    if (off + n > clusterSize) {
      throw new ImageError('INVALID_ARGUMENT', `header extensions and backing file name do not fit in one ${clusterSize}-byte cluster`, { file });
    }
  };
  for (const e of exts) {
    const padded = Math.ceil(e.data.byteLength / 8) * 8;
    need(8 + padded);
    setBe32(out, off, e.type);
    setBe32(out, off + 4, e.data.byteLength);
    out.set(e.data, off + 8);
    off += 8 + padded;
  }
  need(8);
  off += 8; // end-of-extensions marker: type 0, length 0 (already zero)

  if (h.backingFile !== undefined && h.backingFile !== '') {
    const name = text(h.backingFile);
    if (name.byteLength > C.MAX_BACKING_FILE_NAME) {
      throw new ImageError('INVALID_ARGUMENT', `backing file name is longer than ${C.MAX_BACKING_FILE_NAME} bytes`, { file });
    }
    need(name.byteLength);
    out.set(name, off);
    h.backingFileOffset = off;
    h.backingFileSize = name.byteLength;
  } else {
    h.backingFileOffset = 0;
    h.backingFileSize = 0;
  }

  setBe32(out, 0, C.QCOW2_MAGIC);
  setBe32(out, 4, h.version);
  setBe64(out, 8, h.backingFileOffset);
  setBe32(out, 16, h.backingFileSize);
  setBe32(out, 20, h.clusterBits);
  setBe64(out, 24, h.size);
  setBe32(out, 32, h.cryptMethod);
  setBe32(out, 36, h.l1Size);
  setBe64(out, 40, h.l1TableOffset);
  setBe64(out, 48, h.refcountTableOffset);
  setBe32(out, 56, h.refcountTableClusters);
  setBe32(out, 60, h.nbSnapshots);
  setBe64(out, 64, h.snapshotsOffset);
  if (h.version === 3) {
    setBe64(out, 72, h.incompatibleFeatures);
    setBe64(out, 80, h.compatibleFeatures);
    setBe64(out, 88, h.autoclearFeatures);
    setBe32(out, 96, h.refcountOrder);
    setBe32(out, 100, headerLength);
    setU8(out, 104, h.compressionType);
  }
  return out;
}

/** Used by probing: the first bytes are qcow2's magic. */
export function isQcow2(head: Uint8Array): boolean {
  return head.byteLength >= 8 && be32(head, 0) === C.QCOW2_MAGIC && be16(head, 4) === 0;
}
