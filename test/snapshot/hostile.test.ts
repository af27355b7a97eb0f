/**
 * Hostile snapshot tables and trees against the snapshot operations (the table parser's own
 * checks are in test/formats/qcow2/snapshot-table.test.ts): img snapshot -a/-d/-c and
 * convert -l refuse with one line naming the problem and leave the file byte for byte as it
 * was — where qemu-img would go ahead and corrupt the image or leak clusters.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { qemuImg, sha256File, tempDir } from '../helpers';
import { imgIn } from '../cli/run';
import { copy, layout, readU64, setRefcount16, writeBytes, writeU64 } from '../formats/qcow2/qcow2-fixture';
import { assertClean, MiB, qemuIo } from './fixture';

const dir = tempDir('img-snap-hostile-');
const u16 = (v: number) => Buffer.from([v >> 8, v & 0xff]);
const u32 = (v: number) => Buffer.from([v >>> 24, (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff]);

/** Byte offsets of the snapshot table entries of a file. */
function entryOffsets(file: string): number[] {
  const b = fs.readFileSync(file);
  const count = b.readUInt32BE(60);
  const start = Number(b.readBigUInt64BE(64));
  const out: number[] = [];
  let off = start;
  for (let i = 0; i < count; i++) {
    off = start + Math.ceil((off - start) / 8) * 8;
    out.push(off);
    off += 40 + b.readUInt32BE(off + 36) + b.readUInt16BE(off + 12) + b.readUInt16BE(off + 14);
  }
  return out;
}

/** A qemu-made image with snapshots a, b, c whose trees differ from the active one. */
function base(): string {
  const file = path.join(dir, 'base.qcow2');
  if (fs.existsSync(file)) return file;
  qemuImg('create', '-q', '-f', 'qcow2', file, String(8 * MiB));
  qemuIo(file, ['write -P 1 0 256k', 'write -c -P 2 1M 64k']);
  qemuImg('snapshot', '-c', 'a', file);
  qemuIo(file, ['write -P 3 0 64k']);
  qemuImg('snapshot', '-c', 'b', file);
  qemuIo(file, ['write -P 4 128k 64k']);
  qemuImg('snapshot', '-c', 'c', file);
  qemuIo(file, ['write -P 5 2M 64k']);
  return file;
}

/** Each command fails with one line matching `why` and leaves the file as it was. */
function refused(file: string, why: RegExp, commands: string[][]): void {
  const before = sha256File(file);
  for (const args of commands) {
    const r = imgIn(dir, ...args, path.basename(file), ...(args[0] === 'convert' ? ['out.raw'] : []));
    assert.equal(r.status, 1, `${args.join(' ')}: status ${r.status}, ${r.stderr}`);
    assert.match(r.stderr, /^img: [^\n]*\n$/, `${args.join(' ')}: one line`);
    assert.match(r.stderr, why, args.join(' '));
    assert.equal(sha256File(file), before, `${args.join(' ')} changed the file`);
    assert.ok(!fs.existsSync(path.join(dir, 'out.raw')));
  }
}

const ALL_OPS = [['snapshot', '-a', 'b'], ['snapshot', '-d', 'b'], ['snapshot', '-c', 'new'], ['convert', '-O', 'raw', '-l', 'b']];

describe('hostile snapshot tables: refused before anything is written', () => {
  it("two snapshots share one L1 table (qemu-img would delete one and free the other's table)", () => {
    const f = copy(base(), 'shared-l1.qcow2');
    const e = entryOffsets(f);
    writeU64(f, e[1], readU64(f, e[0]));
    refused(f, /snapshot 1 \(b\) l1_table_offset .*overlaps the L1 table of snapshot 0/, ALL_OPS);
    // Listing only needs the table itself, as qemu-img's does.
    const r = imgIn(dir, 'snapshot', '-l', path.basename(f));
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, qemuImg('snapshot', '-l', f));
  });

  it("a snapshot's L1 table overlaps the active one or the refcount table", () => {
    const f = copy(base(), 'over-active.qcow2');
    writeU64(f, entryOffsets(f)[2], BigInt(layout(f).l1Offset));
    refused(f, /snapshot 2 \(c\) l1_table_offset .*overlaps the active L1 table/, ALL_OPS);
    const g = copy(base(), 'over-reftable.qcow2');
    writeU64(g, entryOffsets(g)[1], BigInt(layout(g).reftableOffset));
    refused(g, /overlaps the refcount table/, ALL_OPS);
  });

  it('a name running past the table, an absurd count, too much extra data', () => {
    // The table moved to the end of the file, where a long name runs past it.
    const f = copy(base(), 'name-past.qcow2');
    const b = fs.readFileSync(f);
    const e = entryOffsets(f);
    const start = e[0];
    const end = e[2] + 40 + b.readUInt32BE(e[2] + 36) + b.readUInt16BE(e[2] + 12) + b.readUInt16BE(e[2] + 14);
    const at = Math.ceil(b.length / 65536) * 65536;
    writeBytes(f, at, b.subarray(start, end));
    writeU64(f, 64, BigInt(at));
    writeBytes(f, at + (e[2] - start) + 14, u16(0xffff));
    refused(f, /snapshot 2 name/, [...ALL_OPS, ['snapshot', '-l']]);
    const g = copy(base(), 'count.qcow2');
    writeBytes(g, 60, u32(1_000_000));
    refused(g, /nb_snapshots/, [...ALL_OPS, ['snapshot', '-l']]);
    const h = copy(base(), 'extra.qcow2');
    writeBytes(h, entryOffsets(h)[0] + 36, u32(100_000));
    refused(h, /snapshot 0 extra_data_size/, [...ALL_OPS, ['snapshot', '-l']]);
  });

  it("a snapshot's L1 table pointing past the end of the file or at an unaligned L2 table", () => {
    const f = copy(base(), 'l1-past.qcow2');
    const e = entryOffsets(f);
    const l1 = Number(readU64(f, e[1]));
    writeU64(f, l1, 1n << 40n);
    refused(f, /the L1 table of snapshot 2 \(b\): entry 0 points to an L2 table at 0x10000000000, past the end of the file/, [
      ['snapshot', '-a', 'b'],
      ['snapshot', '-d', 'b'],
    ]);
    refused(f, /L1 entry 0 points to an L2 table at 0x10000000000/, [['convert', '-O', 'raw', '-l', 'b']]);
    const g = copy(base(), 'l1-unaligned.qcow2');
    writeU64(g, Number(readU64(g, entryOffsets(g)[1])), BigInt(layout(g).l2[0] + 512));
    refused(g, /not cluster-aligned/, [
      ['snapshot', '-a', 'b'],
      ['snapshot', '-d', 'b'],
    ]);
  });

  it("a snapshot's L2 entry pointing past the end of the file", () => {
    const f = copy(base(), 'l2-past.qcow2');
    // Snapshot a's L2 table is its own (b and c were taken after writes that copied it).
    const l1 = Number(readU64(f, entryOffsets(f)[0]));
    const l2 = Number(readU64(f, l1) & 0x00fffffffffffe00n);
    writeU64(f, l2 + 8, (1n << 40n) | (1n << 63n));
    refused(f, /entry 1 points to 0x10000000000, past the end of the file/, [
      ['snapshot', '-a', 'a'],
      ['snapshot', '-d', 'a'],
    ]);
  });

  it('a cluster the snapshot uses whose refcount is already 0 (deleting it would free it twice)', () => {
    const f = copy(base(), 'refcount-zero.qcow2');
    const l = layout(f);
    const l1 = Number(readU64(f, entryOffsets(f)[0]));
    const l2 = Number(readU64(f, l1) & 0x00fffffffffffe00n);
    const data = Number(readU64(f, l2 + 2 * 8) & 0x00fffffffffffe00n);
    setRefcount16(f, l, data / l.clusterSize, 0);
    refused(f, /is in use but has refcount 0 \(repair the image with check -r all\)/, [
      ['snapshot', '-a', 'a'],
      ['snapshot', '-d', 'a'],
    ]);
  });

  it('refcounts that would overflow (refcount_bits=1): refused cleanly, where qemu-img leaks', () => {
    const f = path.join(dir, 'one-bit.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'refcount_bits=1', f, '1M');
    qemuIo(f, ['write -P 1 0 64k']);
    refused(f, /would exceed 1, the most refcount_bits=1 holds/, [['snapshot', '-c', 'x']]);
    assertClean(f);
  });
});
