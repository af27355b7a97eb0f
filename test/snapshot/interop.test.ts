/**
 * Internal snapshots against qemu-img: snapshots img makes are listed, applied and deleted by
 * qemu-img and the reverse; the guest data is checked by hash at every step (the active
 * layer and every snapshot, as qemu-img reads them) and qemu-img check is clean after every
 * step. Ids are assigned as qemu assigns them; applying restores the snapshot's disk size.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { openImage } from '../../src/formats/index';
import { HostFile } from '../../src/io/host-file';
import { parseHeader } from '../../src/formats/qcow2/header';
import { readSnapshotTable } from '../../src/formats/qcow2/snapshot-table';
import { img, qemuImg, tempDir } from '../helpers';
import { assertClean, KiB, MiB, mixedImage, qemuHash, qemuIo, qemuSnapshots, virtualSize } from './fixture';

const dir = tempDir('img-snap-interop-');

function imgOk(...args: string[]): string {
  const r = img(...args);
  assert.equal(r.status, 0, `img ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Tracks what each snapshot and the active layer must read, and checks it all after each step. */
class Model {
  readonly snaps = new Map<string, string>(); // name -> hash
  constructor(readonly file: string) {}

  verify(step: string): void {
    assertClean(this.file, step);
    const listed = qemuSnapshots(this.file);
    assert.deepEqual(listed.map((s) => s.name).sort(), [...this.snaps.keys()].sort(), `${step}: snapshot names`);
    for (const [name, hash] of this.snaps) assert.equal(qemuHash(this.file, name), hash, `${step}: snapshot ${name} reads as when it was taken`);
  }
}

const CONFIGS: { name: string; options: string }[] = [
  { name: 'v3, 64k clusters', options: '' },
  { name: 'v2, 4k clusters', options: 'compat=0.10,cluster_size=4k' },
  { name: 'extended L2, 32k clusters', options: 'extended_l2=on,cluster_size=32k' },
  { name: '512-byte clusters, refcount_bits=64', options: 'cluster_size=512,refcount_bits=64' },
  { name: 'zstd, lazy refcounts', options: 'compression_type=zstd,lazy_refcounts=on' },
];

describe('internal snapshots: img and qemu-img take turns', () => {
  for (const cfg of CONFIGS) {
    it(`create, list, apply, delete: ${cfg.name}`, () => {
      const file = mixedImage(path.join(dir, `turns-${CONFIGS.indexOf(cfg)}.qcow2`), cfg.options);
      const m = new Model(file);
      const step = (what: string) => m.verify(`${cfg.name}: ${what}`);

      // img takes a snapshot; qemu-img lists it and reads it.
      const h0 = qemuHash(file);
      imgOk('snapshot', '-c', 'img-1', file);
      m.snaps.set('img-1', h0);
      assert.equal(qemuHash(file), h0);
      step('img created img-1');

      // Writes after it copy on write; qemu-img takes a second one.
      qemuIo(file, ['write -P 0x71 0 100k', 'write -P 0x72 3M 64k', 'discard 6M 512k', 'write -c -P 0x73 7M 64k']);
      const h1 = qemuHash(file);
      qemuImg('snapshot', '-c', 'qemu-2', file);
      m.snaps.set('qemu-2', h1);
      step('qemu-img created qemu-2');

      // img writes through the library too (the engine's copy on write of shared clusters).
      qemuIo(file, ['write -P 0x74 64k 200k', 'write -z 0 32k']);
      const h2 = qemuHash(file);
      imgOk('snapshot', '-c', 'img-3', file);
      m.snaps.set('img-3', h2);
      step('img created img-3');

      // img lists what qemu-img lists, byte for byte.
      assert.equal(imgOk('snapshot', '-l', file), qemuImg('snapshot', '-l', file));
      assert.deepEqual(
        qemuSnapshots(file).map((s) => [s.id, s.name]),
        [
          ['1', 'img-1'],
          ['2', 'qemu-2'],
          ['3', 'img-3'],
        ],
      );

      // img applies qemu-img's snapshot, qemu-img applies img's.
      imgOk('snapshot', '-a', 'qemu-2', file);
      assert.equal(qemuHash(file), h1);
      step('img applied qemu-2');
      qemuImg('snapshot', '-a', 'img-1', file);
      assert.equal(qemuHash(file), h0);
      step('qemu-img applied img-1');
      qemuIo(file, ['write -P 0x75 1M 1M']);
      const h3 = qemuHash(file);
      imgOk('snapshot', '-a', '3', file); // by id
      assert.equal(qemuHash(file), h2);
      step('img applied id 3');

      // Deletes, crossing over: each frees what only that snapshot held.
      imgOk('snapshot', '-d', 'qemu-2', file);
      m.snaps.delete('qemu-2');
      step('img deleted qemu-2');
      qemuImg('snapshot', '-d', 'img-3', file);
      m.snaps.delete('img-3');
      assert.equal(qemuHash(file), h2, 'the active layer is unchanged by deleting the snapshot it came from');
      step('qemu-img deleted img-3');
      // A new snapshot gets the next id qemu would give (one more than the largest left).
      imgOk('snapshot', '-c', 'img-4', file);
      m.snaps.set('img-4', h2);
      assert.deepEqual(qemuSnapshots(file).map((s) => s.id), ['1', '2']);
      step('img created img-4');
      qemuIo(file, ['write -P 0x76 2M 64k']);
      imgOk('snapshot', '-d', 'img-1', file);
      m.snaps.delete('img-1');
      imgOk('snapshot', '-d', 'img-4', file);
      m.snaps.delete('img-4');
      step('img deleted the rest');
      assert.notEqual(qemuHash(file), h3);
      assert.equal(imgOk('snapshot', '-l', file), '');
    });
  }

  it('ids: one more than the largest, whatever qemu-img or img made', () => {
    const a = mixedImage(path.join(dir, 'ids-a.qcow2'));
    const b = path.join(dir, 'ids-b.qcow2');
    fs.copyFileSync(a, b);
    // The same sequence on two copies: one with qemu-img only, one with img only.
    const seq: [string, string][] = [
      ['-c', 'x'],
      ['-c', 'y'],
      ['-c', 'x'], // names need not be unique
      ['-d', 'y'],
      ['-c', 'z'],
      ['-d', 'x'], // by name: the first 'x' (id 1)
      ['-c', '3'],
      ['-d', '3'], // by name only: the snapshot named '3' (id 5), not id 3
      ['-c', '7'],
      ['-c', 'w'],
    ];
    for (const [op, name] of seq) {
      qemuImg('snapshot', op, name, a);
      imgOk('snapshot', op, name, b);
      assert.deepEqual(
        qemuSnapshots(b).map((s) => [s.id, s.name]),
        qemuSnapshots(a).map((s) => [s.id, s.name]),
        `after ${op} ${name}`,
      );
      assertClean(b, `after ${op} ${name}`);
    }
    // -a looks for an id first, then a name: "7" is the id of nothing here but a name.
    qemuIo(a, ['write -P 0x42 0 64k']);
    qemuIo(b, ['write -P 0x42 0 64k']);
    qemuImg('snapshot', '-a', '5', a);
    imgOk('snapshot', '-a', '5', b);
    assert.equal(qemuHash(b), qemuHash(a));
    assertClean(b);
  });

  it('the v3 extra data: vm_state_size_large, disk_size and icount, as qemu writes them', async () => {
    const file = mixedImage(path.join(dir, 'extra.qcow2'));
    const ref = path.join(dir, 'extra-ref.qcow2');
    fs.copyFileSync(file, ref);
    imgOk('snapshot', '-c', 'mine', file);
    qemuImg('snapshot', '-c', 'mine', ref);
    const entries = async (f: string) => {
      const hf = await HostFile.open(f, { readOnly: true });
      try {
        const size = await hf.size();
        const head = new Uint8Array(64 * KiB);
        await hf.read(0, head);
        return (await readSnapshotTable(hf, parseHeader(head, size, f), size)).entries;
      } finally {
        await hf.close();
      }
    };
    const [ours] = await entries(file);
    const [theirs] = await entries(ref);
    assert.equal(ours.extraDataSize, 24);
    assert.equal(ours.diskSize, 8 * MiB);
    assert.deepEqual(
      [ours.extraDataSize, ours.diskSize, ours.icount, ours.vmStateSize, ours.vmClockNsec, ours.l1Size, ours.unknownExtra.byteLength],
      [theirs.extraDataSize, theirs.diskSize, theirs.icount, theirs.vmStateSize, theirs.vmClockNsec, theirs.l1Size, theirs.unknownExtra.byteLength],
    );
    // The date is now (seconds and nanoseconds, as qemu-img stores it).
    assert.ok(Math.abs(ours.dateSec - Date.now() / 1000) < 60);
  });

  it('applying restores the disk size the snapshot was taken at, as qemu-img does', () => {
    const a = mixedImage(path.join(dir, 'size-a.qcow2'), '', 4 * MiB);
    imgOk('snapshot', '-c', 'small', a);
    const hSmall = qemuHash(a);
    qemuImg('resize', a, '20M');
    qemuIo(a, ['write -P 0x33 12M 1M', 'write -P 0x34 3M 64k']);
    imgOk('snapshot', '-c', 'big', a);
    const hBig = qemuHash(a);
    const b = path.join(dir, 'size-b.qcow2');
    fs.copyFileSync(a, b);

    imgOk('snapshot', '-a', 'small', a);
    qemuImg('snapshot', '-a', 'small', b);
    assert.equal(virtualSize(a), 4 * MiB);
    assert.equal(qemuHash(a), hSmall);
    assert.match(qemuImg('compare', a, b), /identical/);
    assertClean(a, 'after applying the smaller snapshot');
    imgOk('snapshot', '-a', 'big', a);
    assert.equal(virtualSize(a), 20 * MiB);
    assert.equal(qemuHash(a), hBig);
    assertClean(a, 'after applying the larger snapshot');
    // qemu-img goes back and forth on what img did.
    qemuImg('snapshot', '-a', 'small', a);
    assert.equal(qemuHash(a), hSmall);
    imgOk('snapshot', '-d', 'big', a);
    imgOk('snapshot', '-d', 'small', a);
    assertClean(a);
    assert.equal(qemuHash(a), hSmall);
  });

  it('snapshots of an overlay: unallocated ranges read through the backing file in every snapshot', () => {
    mixedImage(path.join(dir, 'ov-base.qcow2'));
    const top = path.join(dir, 'ov-top.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'ov-base.qcow2', '-F', 'qcow2', top);
    qemuIo(top, ['write -P 0x51 512k 256k']);
    const h0 = qemuHash(top);
    imgOk('snapshot', '-c', 's0', top);
    qemuIo(top, ['write -z 0 128k', 'write -P 0x52 5M 64k']);
    const h1 = qemuHash(top);
    imgOk('snapshot', '-c', 's1', top);
    assert.equal(qemuHash(top, 's0'), h0);
    imgOk('snapshot', '-a', 's0', top);
    assert.equal(qemuHash(top), h0);
    assertClean(top);
    imgOk('snapshot', '-a', 's1', top);
    assert.equal(qemuHash(top), h1);
    imgOk('snapshot', '-d', 's0', top);
    imgOk('snapshot', '-d', 's1', top);
    assertClean(top);
    assert.equal(qemuHash(top), h1);
  });

  it('img reads snapshots through the library as qemu-img reads them', async () => {
    const file = mixedImage(path.join(dir, 'lib.qcow2'));
    qemuImg('snapshot', '-c', 'a', file);
    qemuIo(file, ['write -P 0x61 0 1M']);
    const image = await openImage(file, { readOnly: false });
    try {
      const s = await image.createSnapshot!('b');
      assert.equal(s.id, '2');
      assert.deepEqual((await image.listSnapshots!()).map((x) => x.name), ['a', 'b']);
      // Writes right after a snapshot, in the same session, copy on write.
      await image.write(0, new Uint8Array(4096).fill(0x62));
      await image.flush();
    } finally {
      await image.close();
    }
    assertClean(file);
    const reader = await openImage(file, { readOnly: true });
    try {
      const first = new Uint8Array(4096);
      await reader.read(0, first);
      assert.equal(first[0], 0x62);
      const view = await reader.openSnapshot!('b');
      await view.read(0, first);
      assert.equal(first[0], 0x61);
      const byId = await reader.openSnapshot!({ id: '1', name: 'a' });
      await byId.read(0, first);
      assert.equal(first[0], 1 * 37 + 1);
    } finally {
      await reader.close();
    }
  });
});
