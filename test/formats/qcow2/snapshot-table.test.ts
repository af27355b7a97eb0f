/**
 * The snapshot table: tables qemu-img writes parse to what qemu-img info shows and serialize
 * back byte for byte; hostile tables give one-line errors naming the field.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError } from '../../../src/block/errors';
import { HostFile } from '../../../src/io/host-file';
import { parseHeader, Qcow2Header } from '../../../src/formats/qcow2/header';
import {
  findSnapshot,
  loadSnapshots,
  serializeSnapshotTable,
  snapshotInfos,
  SnapshotTable,
} from '../../../src/formats/qcow2/snapshot-table';
import { qemuImg, run, tempDir } from '../../helpers';
import { copy, readU64, writeBytes, writeU64 } from './qcow2-fixture';

const dir = tempDir('img-snaptable-');
const MiB = 1 << 20;
const HEADER_NB_SNAPSHOTS = 60;

async function load(file: string): Promise<{ h: Qcow2Header; table: SnapshotTable }> {
  const f = await HostFile.open(file, { readOnly: true });
  try {
    const size = await f.size();
    const head = new Uint8Array(Math.min(size, 2 * MiB));
    await f.read(0, head);
    const h = parseHeader(head, size, file);
    return { h, table: await loadSnapshots(f, h, size) };
  } finally {
    await f.close();
  }
}

function withSnapshots(name: string, opts = 'cluster_size=65536'): string {
  const file = path.join(dir, name);
  qemuImg('create', '-q', '-f', 'qcow2', '-o', opts, file, `${8 * MiB}`);
  run('qemu-io', ['-c', 'write -P 1 0 64k', file]);
  qemuImg('snapshot', '-c', 'first', file);
  run('qemu-io', ['-c', 'write -P 2 0 64k', file]);
  qemuImg('snapshot', '-c', 'a much longer snapshot name, with ünïcode', file);
  qemuImg('snapshot', '-c', '7', file);
  return file;
}

async function rejectsNaming(file: string, field: RegExp): Promise<void> {
  await assert.rejects(load(file), (e: unknown) => {
    assert.ok(e instanceof ImageError, String(e));
    assert.match(e.field ?? '', field);
    assert.ok(!e.message.includes('\n'), 'one line');
    return true;
  });
}

test('tables qemu-img writes parse to what qemu-img info shows', async () => {
  for (const opts of ['cluster_size=65536', 'compat=0.10,cluster_size=4096']) {
    const file = withSnapshots(`snaps-${opts.length}.qcow2`, opts);
    const { table } = await load(file);
    const theirs = (JSON.parse(qemuImg('info', '--output=json', file)) as { snapshots: Record<string, number | string>[] }).snapshots;
    const ours = snapshotInfos(table.entries);
    assert.equal(ours.length, theirs.length);
    ours.forEach((s, i) => {
      const t = theirs[i];
      assert.deepEqual(
        [s.id, s.name, s.vmStateSize, s.dateSec, s.dateNsec, s.vmClockNsec, s.icount],
        [t.id, t.name, t['vm-state-size'], t['date-sec'], t['date-nsec'], (t['vm-clock-sec'] as number) * 1e9 + (t['vm-clock-nsec'] as number), t.icount],
      );
    });
    // qemu writes the same layout img does: serializing gives back the stored bytes.
    const { h } = await load(file);
    const stored = fs.readFileSync(file).subarray(h.snapshotsOffset, h.snapshotsOffset + table.size);
    assert.ok(Buffer.from(serializeSnapshotTable(table.entries, h.size)).equals(stored), opts);
  }
});

test('lookup by id, then by name', async () => {
  const { table } = await load(withSnapshots('lookup.qcow2'));
  assert.equal(findSnapshot(table.entries, '1', 'f').name, 'first');
  assert.equal(findSnapshot(table.entries, 'first', 'f').id, '1');
  // "7" is both the third snapshot's name and (as an id) nothing: the name matches.
  assert.equal(findSnapshot(table.entries, '7', 'f').id, '3');
  assert.throws(() => findSnapshot(table.entries, 'nope', 'f'), (e: unknown) => e instanceof ImageError && e.code === 'NOT_FOUND');
});

test('hostile tables: one-line errors naming the field', async () => {
  const base = withSnapshots('hostile.qcow2');
  const { h, table } = await load(base);
  const entryOffsets: number[] = [];
  {
    let off = 0;
    for (const e of table.entries) {
      off = Math.ceil(off / 8) * 8;
      entryOffsets.push(h.snapshotsOffset + off);
      off += 40 + e.extraDataSize + Buffer.byteLength(e.id) + Buffer.byteLength(e.name);
    }
  }
  const u16 = (v: number) => Buffer.from([v >> 8, v & 0xff]);
  const u32 = (v: number) => Buffer.from([v >>> 24, (v >> 16) & 0xff, (v >> 8) & 0xff, v & 0xff]);
  const plant = (name: string, edit: (f: string) => void) => {
    const f = copy(base, name);
    edit(f);
    return f;
  };

  // Two snapshots share one L1 table; a snapshot's L1 table overlays the active one.
  await rejectsNaming(plant('overlap.qcow2', (f) => writeU64(f, entryOffsets[1], readU64(f, entryOffsets[0]))), /snapshot 1 .*l1_table_offset/);
  await rejectsNaming(plant('overlap-active.qcow2', (f) => writeU64(f, entryOffsets[2], BigInt(h.l1TableOffset))), /snapshot 2 .*l1_table_offset/);
  // A name running past the end of the file.
  await rejectsNaming(plant('name.qcow2', (f) => writeBytes(f, entryOffsets[2] + 14, u16(0xffff))), /snapshot 2 name/);
  // Absurd and impossible counts.
  await rejectsNaming(plant('count.qcow2', (f) => writeBytes(f, HEADER_NB_SNAPSHOTS, u32(70000))), /nb_snapshots/);
  await rejectsNaming(
    plant('count-fits.qcow2', (f) => {
      writeBytes(f, HEADER_NB_SNAPSHOTS, u32(60000));
      fs.truncateSync(f, fs.statSync(f).size + 64 * 1024);
    }),
    /snapshots_offset|nb_snapshots/,
  );
  // L1 tables: unaligned, absurdly large, past the end of the file.
  await rejectsNaming(plant('l1-unaligned.qcow2', (f) => writeU64(f, entryOffsets[0], readU64(f, entryOffsets[0]) + 8n)), /snapshot 0 .*l1_table_offset/);
  await rejectsNaming(plant('l1-huge.qcow2', (f) => writeBytes(f, entryOffsets[0] + 8, u32(0x10000000))), /snapshot 0 .*l1_size/);
  await rejectsNaming(plant('l1-past.qcow2', (f) => writeU64(f, entryOffsets[0], 1n << 40n)), /snapshot 0 .*l1_table_offset/);
  // Too much extra data.
  await rejectsNaming(plant('extra.qcow2', (f) => writeBytes(f, entryOffsets[1] + 36, u32(5000))), /snapshot 1 extra_data_size/);
});
