/**
 * Opening a vmdk's layout: a sparse file with its descriptor embedded (monolithicSparse,
 * streamOptimized), or a text descriptor naming extent files beside it (monolithicFlat,
 * twoGbMaxExtent*, vmfs, delta disks). Every extent is checked against its file as it opens.
 */
import * as path from 'node:path';
import { ImageError } from '../../block/errors';
import { be32 } from '../../io/bytes';
import { HostFile } from '../../io/host-file';
import * as C from './constants';
import { Descriptor, parseDescriptor } from './descriptor';
import { Extent, FlatExtent, ZeroExtent } from './extent';
import { isSparseMagic } from './sparse-header';
import { SeSparseExtent } from './sesparse';
import { SparseExtent } from './sparse-extent';

/** More extents than any real disk has (a 2 TiB twoGbMaxExtent disk has 1024). */
const MAX_EXTENTS = 8192;

export interface Layout {
  descriptor: Descriptor;
  /** Where the descriptor lives: inside the sparse file at a byte offset, or the whole file (null). */
  descriptorAt: { offset: number; capacity: number } | null;
  extents: Extent[];
  /** Files opened besides the main one. */
  extraFiles: HostFile[];
}

export async function openLayout(file: HostFile, readOnly: boolean): Promise<Layout> {
  const size = await file.size();
  const head = new Uint8Array(Math.min(size, C.SECTOR));
  await file.read(0, head);
  if (head.byteLength >= 4 && be32(head, 0) === C.COWD_MAGIC) {
    throw new ImageError('UNSUPPORTED', 'vmfsSparse (COWD) extents are not supported', { file: file.path, field: 'magic' });
  }
  if (isSparseMagic(head)) return openMonolithic(file, readOnly);
  if (size > C.MAX_DESCRIPTOR_BYTES) {
    throw new ImageError('BAD_HEADER', `not a VMDK descriptor: ${size} bytes is larger than any descriptor`, { file: file.path });
  }
  const raw = new Uint8Array(size);
  await file.read(0, raw);
  const descriptor = parseDescriptor(Buffer.from(raw).toString('utf8'), file.path);
  const extraFiles: HostFile[] = [];
  try {
    const extents = await openExtents(file.path, descriptor, readOnly, extraFiles);
    return { descriptor, descriptorAt: null, extents, extraFiles };
  } catch (err) {
    for (const f of extraFiles) await f.close();
    throw err;
  }
}

async function openMonolithic(file: HostFile, readOnly: boolean): Promise<Layout> {
  const extent = await SparseExtent.open(0, file, '', readOnly);
  const h = extent.header;
  if (h.descriptorOffset === 0 || h.descriptorSize === 0) {
    throw new ImageError('BAD_HEADER', 'sparse extent has no embedded descriptor (descriptorOffset 0): open its descriptor file instead', { file: file.path, field: 'descriptorOffset' });
  }
  const offset = h.descriptorOffset * C.SECTOR;
  const capacity = h.descriptorSize * C.SECTOR;
  if (capacity > C.MAX_DESCRIPTOR_BYTES + 1 || offset + capacity > extent.end) {
    throw new ImageError('CORRUPT', `embedded descriptor (${capacity} bytes at ${offset}) lies outside the file or is too large`, { file: file.path, field: 'descriptorSize', value: h.descriptorSize });
  }
  const raw = new Uint8Array(capacity);
  await file.read(offset, raw);
  const descriptor = parseDescriptor(Buffer.from(raw).toString('utf8'), file.path);
  const sectors = descriptor.extents.reduce((n, e) => n + e.sectors, 0);
  if (descriptor.extents.length !== 1 || sectors !== h.capacity) {
    throw new ImageError('CORRUPT', `embedded descriptor lists ${descriptor.extents.length} extent(s) of ${sectors} sectors, but the header's capacity is ${h.capacity} sectors`, {
      file: file.path,
      field: 'capacity',
    });
  }
  return { descriptor, descriptorAt: { offset, capacity }, extents: [extent], extraFiles: [] };
}

async function openExtents(descriptorFile: string, d: Descriptor, readOnly: boolean, opened: HostFile[]): Promise<Extent[]> {
  if (d.extents.length > MAX_EXTENTS) throw new ImageError('BAD_HEADER', `descriptor lists ${d.extents.length} extents (at most ${MAX_EXTENTS})`, { file: descriptorFile });
  const dir = path.dirname(descriptorFile);
  const sparseFiles = new Set<string>();
  const extents: Extent[] = [];
  let start = 0;
  for (const [i, line] of d.extents.entries()) {
    const what = `extent ${i + 1} (${line.type} "${line.filename ?? ''}")`;
    if (line.access === 'NOACCESS') throw new ImageError('UNSUPPORTED', `${what} is NOACCESS`, { file: descriptorFile, field: 'extent' });
    const size = line.sectors * C.SECTOR;
    if (line.type === 'ZERO') {
      extents.push(new ZeroExtent(start, size));
      start += size;
      continue;
    }
    if (line.type !== 'FLAT' && line.type !== 'VMFS' && line.type !== 'SPARSE' && line.type !== 'SESPARSE') {
      throw new ImageError('UNSUPPORTED', `${what}: ${line.type} extents are not supported`, { file: descriptorFile, field: 'extent' });
    }
    const name = path.isAbsolute(line.filename!) ? line.filename! : path.join(dir, line.filename!);
    if (path.resolve(name) === path.resolve(descriptorFile)) {
      throw new ImageError('CORRUPT', `${what} names the descriptor file itself`, { file: descriptorFile, field: 'extent' });
    }
    const writable = !readOnly && line.access === 'RW' && line.type !== 'SESPARSE';
    const file = await HostFile.open(name, { readOnly: !writable }).catch((err) => {
      if (err instanceof ImageError && err.code === 'NOT_FOUND') {
        throw new ImageError('NOT_FOUND', `${what}: extent file ${name} does not exist`, { file: descriptorFile, field: 'extent', value: line.filename });
      }
      throw err;
    });
    opened.push(file);
    if (line.type === 'SPARSE') {
      if (sparseFiles.has(path.resolve(name))) throw new ImageError('CORRUPT', `${what} lists the same sparse file twice`, { file: descriptorFile, field: 'extent' });
      sparseFiles.add(path.resolve(name));
      const head = new Uint8Array(C.SECTOR);
      await file.read(0, head);
      if (!isSparseMagic(head)) throw new ImageError('UNSUPPORTED', `${what} is not a hosted sparse extent (no KDMV magic)`, { file: name, field: 'magic' });
      const extent = await SparseExtent.open(start, file, line.type, !writable);
      if (extent.header.capacity !== line.sectors) {
        throw new ImageError('CORRUPT', `${what} is ${line.sectors} sectors in the descriptor but ${extent.header.capacity} in its header`, { file: descriptorFile, field: 'extent' });
      }
      extents.push(extent);
    } else if (line.type === 'SESPARSE') {
      const extent = await SeSparseExtent.open(start, file);
      if (extent.size !== size) {
        throw new ImageError('CORRUPT', `${what} is ${line.sectors} sectors in the descriptor but ${extent.size / C.SECTOR} in its header`, { file: descriptorFile, field: 'extent' });
      }
      extents.push(extent);
    } else {
      extents.push(await FlatExtent.open(start, size, file, line.offset * C.SECTOR, line.type, writable));
    }
    start += size;
  }
  return extents;
}
