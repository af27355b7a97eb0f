/**
 * img check on qcow2, against qemu-img check as the oracle: clean images of every kind give
 * the same counts; planted corruptions are found with qemu-img's counts, and after repair
 * qemu-img check agrees the image is fixed and the guest data matches qemu-img's own repair.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { qemuImg, run, tempDir } from '../../helpers';
import {
  asQemuCounts,
  copy,
  COPIED,
  guestHash,
  imgCheck,
  Layout,
  layout,
  OFFSET_MASK,
  qemuCheckCounts,
  readU64,
  growLastSnapshotExtraData,
  setRefcount16,
  stripSnapshotExtraData,
  writeU64,
} from './qcow2-fixture';

const dir = tempDir('img-check-');
const KiB = 1024;
const MiB = 1024 * KiB;

function qemuIo(file: string, ...cmds: string[]): void {
  const r = run('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file]);
  assert.equal(r.status, 0, r.stderr);
}

/** An image with data in both L2 tables (4 KiB clusters: one L2 table maps 2 MiB). */
function baseImage(name: string, opts = 'cluster_size=4096'): string {
  const file = path.join(dir, name);
  qemuImg('create', '-q', '-f', 'qcow2', '-o', opts, file, `${8 * MiB}`);
  qemuIo(file, 'write -P 0x11 0 16k', 'write -P 0x22 64k 8k', 'write -P 0x33 2M 12k', 'write -z 5M 4k');
  return file;
}

async function sameAsQemu(file: string, what: string): Promise<void> {
  const ours = asQemuCounts(await imgCheck(file));
  const theirs = qemuCheckCounts(file).counts;
  assert.deepEqual(ours, theirs, `${what}: img check counts differ from qemu-img check`);
}

test('clean images of every kind: no errors, no leaks, counts equal qemu-img check', async () => {
  const kinds: [string, string][] = [
    ['v2', 'compat=0.10,cluster_size=65536'],
    ['v3-512', 'cluster_size=512'],
    ['v3-2M', 'cluster_size=2M'],
    ['rc1', 'refcount_bits=1'],
    ['rc8', 'refcount_bits=8'],
    ['rc64', 'refcount_bits=64'],
    ['extl2', 'extended_l2=on,cluster_size=64k'],
    ['lazy', 'lazy_refcounts=on'],
    ['zstd', 'compression_type=zstd'],
    ['prealloc', 'preallocation=metadata'],
    ['datafile', `data_file=${path.join(dir, 'clean.data')}`],
    ['datafile-raw', `data_file=${path.join(dir, 'clean-raw.data')},data_file_raw=on`],
  ];
  for (const [name, opts] of kinds) {
    const file = path.join(dir, `clean-${name}.qcow2`);
    qemuImg('create', '-q', '-f', 'qcow2', '-o', opts, file, `${4 * MiB}`);
    qemuIo(file, 'write -P 0x5a 0 100k', 'write -P 0x6b 1M 3k', 'write -z 2M 64k');
    const r = await imgCheck(file);
    assert.equal(r.corruptions + r.leaks + r.checkErrors, 0, `${name}: ${r.messages.join('; ')}`);
    await sameAsQemu(file, name);
  }
});

test('compressed clusters, snapshots, bitmaps and a backing file: counts equal qemu-img check', async () => {
  const raw = path.join(dir, 'src.raw');
  const data = Buffer.alloc(3 * MiB);
  for (let i = 0; i < data.length; i += 512) data.write(`sector ${i / 512} `.repeat(20), i);
  fs.writeFileSync(raw, data);
  for (const opts of ['cluster_size=4096', 'compression_type=zstd', 'cluster_size=65536,compat=0.10']) {
    const file = path.join(dir, 'compressed.qcow2');
    qemuImg('convert', '-c', '-O', 'qcow2', '-o', opts, raw, file);
    const r = await imgCheck(file);
    assert.ok((r.compressedClusters ?? 0) > 0, opts);
    assert.equal(r.corruptions + r.leaks, 0, r.messages.join('; '));
    await sameAsQemu(file, `compressed ${opts}`);
  }

  const snap = baseImage('snap.qcow2');
  qemuImg('snapshot', '-c', 'one', snap);
  qemuIo(snap, 'write -P 0x44 0 8k');
  qemuImg('snapshot', '-c', 'two', snap);
  qemuIo(snap, 'write -P 0x55 2M 4k', 'discard 64k 8k');
  await sameAsQemu(snap, 'snapshots');

  const bm = baseImage('bitmap.qcow2');
  if (run('qemu-img', ['bitmap', '--add', bm, 'b0']).status === 0) {
    qemuImg('bitmap', '--add', '-g', '64k', bm, 'b1');
    const r = await imgCheck(bm);
    assert.equal(r.leaks + r.corruptions, 0, r.messages.join('; '));
    await sameAsQemu(bm, 'bitmaps');
  }

  const top = path.join(dir, 'overlay.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-b', snap, '-F', 'qcow2', top);
  qemuIo(top, 'write -P 0x66 1M 4k');
  await sameAsQemu(top, 'overlay');
});

interface Case {
  name: string;
  plant(file: string, l: Layout): void;
  /** Repair mode to compare with qemu-img's (default all). */
  repair?: 'leaks' | 'all';
  /** qemu-img's own repair gives up (it cannot write the new structure); img's must succeed. */
  qemuRepairFails?: boolean;
  /** Makes the image to plant into (default: baseImage with 4 KiB clusters). */
  make?: (name: string) => string;
}

function withSnapshot(name: string): string {
  const file = baseImage(name);
  qemuImg('snapshot', '-c', 'snap', file);
  qemuIo(file, 'write -P 0x77 4k 4k');
  return file;
}

function extendedL2(name: string): string {
  return baseImage(name, 'extended_l2=on,cluster_size=16k');
}

function compressed(name: string): string {
  const file = path.join(dir, name);
  const raw = path.join(dir, `${name}.src`);
  fs.writeFileSync(raw, Buffer.alloc(256 * KiB, 'compressible '));
  qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=4096', raw, file);
  return file;
}

/** Offset of the 16-byte extended L2 entry i's bitmap. */
const bitmapAt = (l: Layout, i: number) => l.l2[0] + i * 16 + 8;

const dataEntry = (file: string, l: Layout, l1Index: number, i: number) => readU64(file, l.l2[l1Index] + i * 8);

const cases: Case[] = [
  {
    name: 'two L2 entries point at one cluster (refcount too low, a leak)',
    plant: (f, l) => writeU64(f, l.l2[0] + 8, dataEntry(f, l, 0, 0)),
  },
  {
    name: 'leaked cluster',
    plant: (f, l) => {
      const end = fs.statSync(f).size;
      fs.truncateSync(f, end + l.clusterSize);
      setRefcount16(f, l, end / l.clusterSize, 1);
    },
    repair: 'leaks',
  },
  {
    name: 'refcount too high',
    plant: (f, l) => setRefcount16(f, l, Number(dataEntry(f, l, 0, 1) & OFFSET_MASK) / l.clusterSize, 3),
  },
  {
    name: 'refcount too high, leaks-only repair',
    plant: (f, l) => setRefcount16(f, l, Number(dataEntry(f, l, 0, 1) & OFFSET_MASK) / l.clusterSize, 3),
    repair: 'leaks',
  },
  {
    name: 'refcount zero for a used cluster',
    plant: (f, l) => setRefcount16(f, l, Number(dataEntry(f, l, 0, 2) & OFFSET_MASK) / l.clusterSize, 0),
  },
  {
    name: 'L2 data offset past the end of the file',
    plant: (f, l) => writeU64(f, l.l2[0] + 3 * 8, COPIED | 0x40000000n),
  },
  {
    name: 'L1 entry past the end of the file',
    plant: (f, l) => writeU64(f, l.l1Offset + 8, COPIED | 0x40000000n),
  },
  {
    name: 'misaligned data offset',
    plant: (f, l) => writeU64(f, l.l2[0], dataEntry(f, l, 0, 0) + 0x200n),
  },
  {
    name: 'truncated file',
    plant: (f, l) => fs.truncateSync(f, fs.statSync(f).size - 2 * l.clusterSize),
  },
  {
    name: 'cleared COPIED flags',
    plant: (f, l) => {
      writeU64(f, l.l1Offset, readU64(f, l.l1Offset) & ~COPIED);
      for (const i of [0, 1, 2]) writeU64(f, l.l2[0] + i * 8, dataEntry(f, l, 0, i) & ~COPIED);
    },
  },
  {
    name: 'two L1 entries share an L2 table',
    plant: (f, l) => writeU64(f, l.l1Offset + 8, readU64(f, l.l1Offset)),
  },
  {
    name: 'refcount block missing from the refcount table',
    plant: (f, l) => writeU64(f, l.reftableOffset, 0n),
  },
  {
    name: 'refcount table entry misaligned',
    plant: (f, l) => writeU64(f, l.reftableOffset, BigInt(l.refblock0 + 512)),
    qemuRepairFails: true,
  },
  {
    name: 'refcount block overlaps the L1 table',
    plant: (f, l) => writeU64(f, l.reftableOffset, BigInt(l.l1Offset)),
  },
  {
    name: 'snapshot: shared cluster refcount too low',
    make: withSnapshot,
    plant: (f, l) => setRefcount16(f, l, Number(dataEntry(f, l, 0, 0) & OFFSET_MASK) / l.clusterSize, 1),
  },
  {
    name: 'snapshot: shared L2 table refcount too high',
    make: withSnapshot,
    plant: (f, l) => setRefcount16(f, l, l.l2[1] / l.clusterSize, 5),
  },
  {
    name: 'extended L2: allocated and zero bits both set',
    make: extendedL2,
    plant: (f, l) => writeU64(f, bitmapAt(l, 0), readU64(f, bitmapAt(l, 0)) | (1n << 32n)),
  },
  {
    name: 'extended L2: unallocated entry with allocation bits',
    make: extendedL2,
    plant: (f, l) => writeU64(f, bitmapAt(l, 40), 1n),
  },
  {
    name: 'compressed cluster with refcount zero',
    make: compressed,
    plant: (f, l) => setRefcount16(f, l, Number(dataEntry(f, l, 0, 2) & 0x3fffffffffffn) >> 12, 0),
  },
  {
    name: 'compressed cluster with COPIED set',
    make: compressed,
    plant: (f, l) => writeU64(f, l.l2[0] + 8, dataEntry(f, l, 0, 1) | COPIED),
  },
  {
    name: 'refcount_bits=1: a cluster referenced twice overflows',
    make: (name) => baseImage(name, 'cluster_size=4096,refcount_bits=1'),
    plant: (f, l) => writeU64(f, l.l2[0] + 8, dataEntry(f, l, 0, 0)),
  },
  {
    name: 'L2 entry with reserved bits set',
    plant: (f, l) => writeU64(f, l.l2[0], dataEntry(f, l, 0, 0) | 0x10n),
  },
  {
    name: 'incomplete snapshot table entries (no extra data)',
    make: withSnapshot,
    plant: (f) => stripSnapshotExtraData(f),
  },
  {
    name: 'snapshot table entry with too much extra data',
    make: withSnapshot,
    plant: (f) => growLastSnapshotExtraData(f, 2000),
  },
  {
    name: 'misaligned preallocated zero cluster',
    make: (name) => {
      const file = baseImage(name);
      qemuIo(file, 'write -z 0 4k');
      return file;
    },
    plant: (f, l) => writeU64(f, l.l2[0], dataEntry(f, l, 0, 0) + 0x200n),
  },
];

for (const c of cases) {
  test(`planted corruption: ${c.name}`, async () => {
    const base = (c.make ?? baseImage)(`base-${cases.indexOf(c)}.qcow2`);
    c.plant(base, layout(base));
    const repair = c.repair ?? 'all';

    const found = await imgCheck(base);
    assert.ok(found.corruptions + found.leaks + found.checkErrors > 0, 'the planted problem is found');
    const ours = asQemuCounts(found);
    const theirs = qemuCheckCounts(base);
    if (theirs.status === 1 && theirs.counts['total-clusters'] === 0) {
      assert.ok(found.checkErrors > 0, 'qemu-img could not complete the check; img reports a check error'); // no JSON to compare
    } else {
      assert.deepEqual(ours, theirs.counts, `counts differ from qemu-img check; img said:\n${found.messages.join('\n')}`);
    }

    const mine = copy(base, 'mine.qcow2');
    const qemus = copy(base, 'qemus.qcow2');
    const fixed = await imgCheck(mine, repair);
    const mineAfter = qemuCheckCounts(mine);
    if (c.qemuRepairFails) {
      assert.equal(mineAfter.status, 0, `qemu-img check after img's repair: ${JSON.stringify(mineAfter.counts)}`);
      return;
    }
    const qemuFixed = qemuCheckCounts(qemus, repair);
    const qemuAfter = qemuCheckCounts(qemus);
    assert.equal(mineAfter.status, qemuAfter.status, `qemu-img check after img's repair: ${JSON.stringify(mineAfter.counts)}`);
    for (const k of ['check-errors', 'corruptions', 'leaks']) {
      assert.equal(mineAfter.counts[k], qemuAfter.counts[k], `${k} after repair`);
    }
    const report = asQemuCounts(fixed);
    for (const k of ['corruptions', 'leaks', 'corruptions-fixed', 'leaks-fixed']) {
      assert.equal(report[k], qemuFixed.counts[k], `${k} reported by the repair (img said:\n${fixed.messages.join('\n')})`);
    }
    if (qemuAfter.status === 0) assert.equal(guestHash(mine), guestHash(qemus), 'guest data after repair');
  });
}

test('repair clears the dirty bit of a lazy-refcounts image', async () => {
  const file = baseImage('dirty.qcow2', 'cluster_size=4096,lazy_refcounts=on');
  const l = layout(file);
  writeU64(file, 72, 1n); // incompatible_features: dirty
  setRefcount16(file, l, Number(dataEntry(file, l, 0, 1) & OFFSET_MASK) / l.clusterSize, 0);
  const before = guestHash(file);
  const r = await imgCheck(file, 'all');
  assert.equal(r.corruptions, 0, r.messages.join('\n'));
  assert.equal(readU64(file, 72) & 1n, 0n);
  assert.equal(qemuCheckCounts(file).status, 0);
  assert.equal(guestHash(file), before);
});

test('a broken snapshot table is reported as a check error, not a crash', async () => {
  const file = baseImage('badsnap.qcow2');
  qemuImg('snapshot', '-c', 'one', file);
  const snapOffset = Number(readU64(file, 64));
  const buf = Buffer.alloc(2);
  buf.writeUInt16BE(0xffff);
  fs.writeFileSync(path.join(dir, 'x'), ''); // keep the temp dir non-empty for clarity
  const fd = fs.openSync(file, 'r+');
  fs.writeSync(fd, buf, 0, 2, snapOffset + 14); // name_size runs past the end of the file
  fs.closeSync(fd);
  const r = await imgCheck(file);
  assert.equal(r.checkErrors, 1);
  assert.match(r.messages[0], /snapshot 0 name/);
});
