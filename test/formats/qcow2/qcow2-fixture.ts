/**
 * Helpers for tests that plant corruptions in qcow2 images made by qemu-img: locating the
 * metadata of an image and editing fields in place, plus running img's file-level tools and
 * qemu-img on copies to compare them.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CheckReport } from '../../../src/block/image';
import { checkQcow2Path } from '../../../src/formats/qcow2/check';
import { qemuImg, run, sha256File } from '../../helpers';

export const OFFSET_MASK = 0x00fffffffffffe00n;
export const COPIED = 1n << 63n;

export interface Layout {
  clusterSize: number;
  refcountOrder: number;
  l1Offset: number;
  l1Size: number;
  reftableOffset: number;
  refblock0: number;
  /** Host offsets of the active L2 tables, by L1 index (0 when absent). */
  l2: number[];
}

export function layout(file: string): Layout {
  const b = fs.readFileSync(file);
  const clusterBits = b.readUInt32BE(20);
  const version = b.readUInt32BE(4);
  const l1Size = b.readUInt32BE(36);
  const l1Offset = Number(b.readBigUInt64BE(40));
  const reftableOffset = Number(b.readBigUInt64BE(48));
  const l2: number[] = [];
  for (let i = 0; i < l1Size; i++) l2.push(Number(b.readBigUInt64BE(l1Offset + i * 8) & OFFSET_MASK));
  return {
    clusterSize: 2 ** clusterBits,
    refcountOrder: version === 3 ? b.readUInt32BE(96) : 4,
    l1Offset,
    l1Size,
    reftableOffset,
    refblock0: Number(b.readBigUInt64BE(reftableOffset) & OFFSET_MASK),
    l2,
  };
}

export function readU64(file: string, offset: number): bigint {
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.alloc(8);
  fs.readSync(fd, buf, 0, 8, offset);
  fs.closeSync(fd);
  return buf.readBigUInt64BE(0);
}

export function writeU64(file: string, offset: number, v: bigint): void {
  const buf = Buffer.alloc(8);
  buf.writeBigUInt64BE(v);
  writeBytes(file, offset, buf);
}

export function writeBytes(file: string, offset: number, data: Uint8Array): void {
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, data, 0, data.byteLength, offset);
  fs.closeSync(fd);
}

/** Sets a 16-bit refcount (the default width) of a host cluster in the first refcount block. */
export function setRefcount16(file: string, l: Layout, cluster: number, value: number): void {
  const buf = Buffer.alloc(2);
  buf.writeUInt16BE(value);
  writeBytes(file, l.refblock0 + cluster * 2, buf);
}

/** img check as `qemu-img check [-r]` runs it: a repair that fixed anything is checked again. */
export async function imgCheck(file: string, repair?: 'leaks' | 'all'): Promise<CheckReport> {
  const first = await checkQcow2Path(file, { repair });
  if (!(first.corruptionsFixed || first.leaksFixed) || first.checkErrors) return first;
  const again = await checkQcow2Path(file);
  return { ...again, corruptionsFixed: first.corruptionsFixed, leaksFixed: first.leaksFixed, messages: [...first.messages, ...again.messages] };
}

/** qemu-img check --output=json with its exit status; missing counters read as 0. */
export function qemuCheckCounts(file: string, repair?: 'leaks' | 'all'): { status: number; counts: Record<string, number> } {
  const r = run('qemu-img', ['check', '--output=json', ...(repair ? ['-r', repair] : []), file]);
  const json = JSON.parse(r.stdout || '{}') as Record<string, number>;
  const keys = ['check-errors', 'corruptions', 'leaks', 'corruptions-fixed', 'leaks-fixed', 'image-end-offset', 'total-clusters', 'allocated-clusters', 'fragmented-clusters', 'compressed-clusters'];
  return { status: r.status, counts: Object.fromEntries(keys.map((k) => [k, json[k] ?? 0])) };
}

/** img's report in qemu-img's JSON vocabulary, for direct comparison. */
export function asQemuCounts(r: CheckReport): Record<string, number> {
  return {
    'check-errors': r.checkErrors,
    corruptions: r.corruptions,
    leaks: r.leaks,
    'corruptions-fixed': r.corruptionsFixed,
    'leaks-fixed': r.leaksFixed,
    'image-end-offset': r.imageEndOffset ?? 0,
    'total-clusters': r.totalClusters ?? 0,
    'allocated-clusters': r.allocatedClusters ?? 0,
    'fragmented-clusters': r.fragmentedClusters ?? 0,
    'compressed-clusters': r.compressedClusters ?? 0,
  };
}

/** sha256 of the image's guest view, read by qemu-img. */
export function guestHash(file: string): string {
  const out = path.join(path.dirname(file), `${path.basename(file)}.raw`);
  qemuImg('convert', '-O', 'raw', file, out);
  const h = sha256File(out);
  fs.rmSync(out);
  return h;
}

export function copy(src: string, name: string): string {
  const dst = path.join(path.dirname(src), name);
  fs.copyFileSync(src, dst);
  return dst;
}

/**
 * Rewrites the snapshot table in place as very old qemu wrote it: entries without extra data
 * (no vm_state_size_large, disk_size or icount), which compat=1.1 calls incomplete.
 */
export function stripSnapshotExtraData(file: string): void {
  const b = fs.readFileSync(file);
  const count = b.readUInt32BE(60);
  const start = Number(b.readBigUInt64BE(64));
  const parts: Buffer[] = [];
  let off = start;
  for (let i = 0; i < count; i++) {
    off = start + Math.ceil((off - start) / 8) * 8;
    const fixed = Buffer.from(b.subarray(off, off + 40));
    const idSize = fixed.readUInt16BE(12);
    const nameSize = fixed.readUInt16BE(14);
    const extra = fixed.readUInt32BE(36);
    const strings = b.subarray(off + 40 + extra, off + 40 + extra + idSize + nameSize);
    fixed.writeUInt32BE(0, 36);
    const entry = Buffer.concat([fixed, strings]);
    parts.push(Buffer.concat([entry, Buffer.alloc((8 - (entry.length % 8)) % 8)]));
    off += 40 + extra + idSize + nameSize;
  }
  writeBytes(file, start, Buffer.concat(parts));
}

/** Gives the last snapshot table entry `extra` bytes of extra data (past qemu's 1 KiB limit if asked). */
export function growLastSnapshotExtraData(file: string, extra: number): void {
  const b = fs.readFileSync(file);
  const count = b.readUInt32BE(60);
  const start = Number(b.readBigUInt64BE(64));
  let off = start;
  for (let i = 0; i < count; i++) {
    off = start + Math.ceil((off - start) / 8) * 8;
    const fixed = Buffer.from(b.subarray(off, off + 40));
    const idSize = fixed.readUInt16BE(12);
    const nameSize = fixed.readUInt16BE(14);
    const oldExtra = fixed.readUInt32BE(36);
    if (i === count - 1) {
      const known = b.subarray(off + 40, off + 40 + Math.min(oldExtra, 24));
      const strings = b.subarray(off + 40 + oldExtra, off + 40 + oldExtra + idSize + nameSize);
      fixed.writeUInt32BE(extra, 36);
      const padded = Buffer.concat([known, Buffer.alloc(extra - known.length)]);
      writeBytes(file, off, Buffer.concat([fixed, padded, strings]));
      return;
    }
    off += 40 + oldExtra + idSize + nameSize;
  }
}
