/**
 * `img amend -o …` for qcow2 (qemu's qcow2_amend_options), on a file nothing else has open:
 * compat 0.10 ↔ 1.1, refcount_bits, lazy_refcounts, backing_file/backing_fmt, data_file and
 * data_file_raw. Steps run in qemu's order — upgrade first, downgrade last — so that a
 * downgrade sees the other changes. The open image re-reads its metadata afterwards.
 *
 * `size` is not handled here: the open image resizes itself (Image.resize).
 */
import { ImageError } from '../../block/errors';
import { HostFile } from '../../io/host-file';
import { parseBool } from '../options';
import { checkRefcountsFit, FileSpace } from './file-space';
import { expandZeroClusters, hasCompressedClusters, l1Tables } from './amend-zero';
import { activeBitmapsExtension } from './bitmaps';
import { checkQcow2File } from './check';
import * as C from './constants';
import { parseHeader, Qcow2Header, readBackingName, serializeHeader } from './header';
import { readSnapshotTable, replaceSnapshotTable, V3_MIN_SNAPSHOT_EXTRA } from './snapshot-table';

/** Options amend understands, as `qemu-img amend -o help` lists them (encryption aside). */
export const AMEND_OPTIONS = ['compat', 'backing_file', 'backing_fmt', 'lazy_refcounts', 'refcount_bits', 'data_file', 'data_file_raw', 'size'];
const CREATE_ONLY = ['cluster_size', 'preallocation', 'extended_l2', 'compression_type', 'encryption', 'encrypt.format', 'nocow'];
const MAX_HEADER_READ = 2 ** C.MAX_CLUSTER_BITS;
const U32_MAX = 0xffffffff;

const invalid = (file: string, message: string, field?: string) => new ImageError('INVALID_ARGUMENT', message, { file, field });

async function readHeader(file: HostFile): Promise<Qcow2Header> {
  const fileSize = await file.size();
  const head = new Uint8Array(Math.min(fileSize, MAX_HEADER_READ));
  await file.read(0, head);
  const h = parseHeader(head, fileSize, file.path);
  h.backingFile = readBackingName(head, h, file.path);
  return h;
}

async function writeHeader(file: HostFile, h: Qcow2Header): Promise<void> {
  await file.flush();
  await file.write(0, serializeHeader(h, file.path));
  await file.flush();
}

interface Wanted {
  version?: 2 | 3;
  refcountBits?: number;
  lazyRefcounts?: boolean;
  backingFile?: string;
  backingFormat?: string;
  dataFile?: string;
  dataFileRaw?: boolean;
}

function parseOptions(options: Record<string, string>, file: string): Wanted {
  const w: Wanted = {};
  for (const [key, value] of Object.entries(options)) {
    if (key.startsWith('encrypt.')) throw new ImageError('UNSUPPORTED', 'encrypted qcow2 images are not supported', { file, field: key });
    if (CREATE_ONLY.includes(key)) throw invalid(file, `Invalid parameter '${key}': this option is only supported for image creation`, key);
    if (!AMEND_OPTIONS.includes(key)) throw invalid(file, `Invalid parameter '${key}'`, key);
    switch (key) {
      case 'compat':
        if (value === '0.10' || value === 'v2') w.version = 2;
        else if (value === '1.1' || value === 'v3') w.version = 3;
        else throw invalid(file, `Unknown compatibility level ${value}`, key);
        break;
      case 'refcount_bits': {
        const bits = Number(value);
        if (!Number.isInteger(bits) || bits <= 0 || bits > 64 || (bits & (bits - 1)) !== 0) {
          throw invalid(file, 'Refcount width must be a power of two and may not exceed 64 bits', key);
        }
        w.refcountBits = bits;
        break;
      }
      case 'lazy_refcounts':
        w.lazyRefcounts = parseBool(value, 'lazy_refcounts');
        break;
      case 'backing_file':
        w.backingFile = value;
        break;
      case 'backing_fmt':
        w.backingFormat = value;
        break;
      case 'data_file':
        w.dataFile = value;
        break;
      case 'data_file_raw':
        w.dataFileRaw = parseBool(value, 'data_file_raw');
        break;
      case 'size':
        throw invalid(file, 'size is changed by resizing the open image, not by amending the file', key);
    }
  }
  return w;
}

/** Applies `options` (as given with -o, unparsed) to the qcow2 file. */
export async function amendQcow2File(file: HostFile, options: Record<string, string>): Promise<void> {
  const w = parseOptions(options, file.path);
  let h = await readHeader(file);
  if (h.incompatibleFeatures & C.INCOMPAT_CORRUPT) {
    throw new ImageError('CORRUPT', 'image is marked corrupt: repair it with check -r all first', { file: file.path, field: 'incompatible_features' });
  }
  const oldVersion = h.version;
  const newVersion = w.version ?? oldVersion;
  const hasDataFile = (h.incompatibleFeatures & C.INCOMPAT_DATA_FILE) !== 0n;
  if (w.dataFile !== undefined && !hasDataFile) throw invalid(file.path, 'data-file can only be set for images that use an external data file', 'data_file');
  if (w.dataFileRaw && (h.autoclearFeatures & C.AUTOCLEAR_DATA_FILE_RAW) === 0n) {
    throw invalid(file.path, 'data-file-raw cannot be set on existing images', 'data_file_raw');
  }
  if (w.refcountBits !== undefined && w.refcountBits !== 16 && newVersion < 3) {
    throw invalid(file.path, 'Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)', 'refcount_bits');
  }
  if (w.lazyRefcounts && newVersion < 3) {
    throw invalid(file.path, 'Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)', 'lazy_refcounts');
  }
  if (w.backingFormat !== undefined && w.backingFormat !== '' && !(w.backingFile ?? h.backingFile)) {
    throw invalid(file.path, 'backing_fmt needs a backing file', 'backing_fmt');
  }

  // Stale refcounts (a dirty lazy-refcounts image) are repaired before anything allocates.
  if (h.incompatibleFeatures & C.INCOMPAT_DIRTY) {
    await checkQcow2File(file, { repair: 'all' });
    h = await readHeader(file);
  }

  if (newVersion > oldVersion) {
    await completeSnapshotEntries(file, h);
    h.version = 3;
    h.refcountOrder = 4;
    await writeHeader(file, h);
  }

  if (w.refcountBits !== undefined && w.refcountBits !== 2 ** h.refcountOrder) {
    const space = await FileSpace.load(file, h);
    checkRefcountsFit(space, w.refcountBits, file.path);
    await space.rewrite(Math.log2(w.refcountBits));
  }

  let changed = false;
  if (w.backingFile !== undefined) {
    h.backingFile = w.backingFile === '' ? undefined : w.backingFile;
    if (h.backingFile === undefined) h.backingFormat = undefined;
    changed = true;
  }
  if (w.backingFormat !== undefined) {
    h.backingFormat = w.backingFormat === '' ? undefined : w.backingFormat;
    changed = true;
  }
  if (w.dataFile !== undefined) {
    h.dataFile = w.dataFile;
    changed = true;
  }
  if (w.dataFileRaw === false && h.autoclearFeatures & C.AUTOCLEAR_DATA_FILE_RAW) {
    h.autoclearFeatures &= ~C.AUTOCLEAR_DATA_FILE_RAW;
    changed = true;
  }
  if (w.lazyRefcounts !== undefined && w.lazyRefcounts !== ((h.compatibleFeatures & C.COMPAT_LAZY_REFCOUNTS) !== 0n)) {
    h.compatibleFeatures = w.lazyRefcounts ? h.compatibleFeatures | C.COMPAT_LAZY_REFCOUNTS : h.compatibleFeatures & ~C.COMPAT_LAZY_REFCOUNTS;
    changed = true;
  }
  if (changed) await writeHeader(file, h);

  if (newVersion < oldVersion) await downgrade(file, h);
}

/** v3 wants every snapshot entry to carry disk_size: older entries are rewritten (qcow2_upgrade). */
async function completeSnapshotEntries(file: HostFile, h: Qcow2Header): Promise<void> {
  const table = await readSnapshotTable(file, h, await file.size());
  if (table.entries.every((e) => e.extraDataSize >= V3_MIN_SNAPSHOT_EXTRA)) return;
  await replaceSnapshotTable(await FileSpace.load(file, h), h, table.size, table.entries);
}

/** qcow2_downgrade: to compat=0.10, refusing what version 2 cannot express. */
async function downgrade(file: HostFile, h: Qcow2Header): Promise<void> {
  const refuse = (message: string) => new ImageError('UNSUPPORTED', message, { file: file.path, field: 'compat' });
  if (h.refcountOrder !== 4) throw refuse('compat=0.10 requires refcount_bits=16');
  if (h.incompatibleFeatures & C.INCOMPAT_DATA_FILE) throw refuse('Cannot downgrade an image with a data file');
  const { entries } = await readSnapshotTable(file, h, await file.size());
  if (entries.some((e) => e.vmStateSize > U32_MAX || (e.diskSize !== undefined && e.diskSize !== h.size))) {
    throw refuse('Internal snapshots prevent downgrade of image');
  }
  const blocking = h.incompatibleFeatures & ~C.INCOMPAT_COMPRESSION;
  if (blocking) throw refuse(`Cannot downgrade an image with incompatible features 0x${blocking.toString(16)} set`);
  if (activeBitmapsExtension(h)) throw refuse('Cannot downgrade an image with persistent bitmaps (remove them first)');
  const l1s = l1Tables(h, entries);
  if (h.compressionType !== C.COMPRESSION_DEFLATE && (await hasCompressedClusters(file, h, l1s))) {
    throw refuse('Cannot downgrade an image with zstd compression type and existing compressed clusters');
  }

  await expandZeroClusters(await FileSpace.load(file, h), l1s);

  h.version = 2;
  h.incompatibleFeatures = 0n;
  h.compatibleFeatures = 0n;
  h.autoclearFeatures = 0n;
  h.compressionType = C.COMPRESSION_DEFLATE;
  h.bitmapsExtension = undefined;
  h.headerLength = C.V2_HEADER_LENGTH;
  await writeHeader(file, h);
}
