/**
 * Resize, lazy refcounts and the dirty bit, autoclear bits, writing under internal snapshots,
 * Image.check, and the header after writes: each checked against qemu-img.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createImage, openImage } from '../../../src/formats/index';
import { prng, qemuImg, randomBytes, run, tempDir } from '../../helpers';
import { assertClean, hashImage, KiB, MiB, sha256 } from './fixtures';

const dir = tempDir('img-qcow2-feat-');
let n = 0;
const file = () => path.join(dir, `f${n++}.qcow2`);

function qemuIo(f: string, ...cmds: string[]): void {
  const r = run('qemu-io', [...cmds.flatMap((c) => ['-c', c]), f]);
  assert.equal(r.status, 0, r.stderr);
}

function qemuRaw(f: string, ...extra: string[]): Buffer {
  const out = path.join(dir, `q${n++}.raw`);
  qemuImg('convert', ...extra, '-O', 'raw', f, out);
  const b = fs.readFileSync(out);
  fs.rmSync(out);
  return b;
}

test('resize: grow past the L1 table, with preallocation, and shrink', async () => {
  const f = file();
  // 512-byte clusters: one L2 table maps 32 KiB, so growing to 64 MiB grows the L1 table.
  await createImage('qcow2', f, { size: MiB, options: { cluster_size: '512' } });
  const img = await openImage(f);
  const data = randomBytes(prng(1), 300 * KiB);
  await img.write(700 * KiB, data);
  await img.resize!(64 * MiB);
  assert.equal(img.size, 64 * MiB);
  await img.write(60 * MiB, data);
  await img.resize!(70 * MiB, { preallocation: 'metadata' });
  await img.close();
  assertClean(f);
  const raw = qemuRaw(f);
  assert.equal(raw.length, 70 * MiB);
  assert.ok(raw.subarray(700 * KiB, 1000 * KiB).equals(data));
  assert.ok(raw.subarray(60 * MiB, 60 * MiB + 300 * KiB).equals(data));
  assert.equal(JSON.parse(qemuImg('info', '--output=json', f))['virtual-size'], 70 * MiB);

  const again = await openImage(f);
  await assert.rejects(again.resize!(MiB), /holds data/);
  await again.resize!(800 * KiB, { shrink: true });
  await again.close();
  assertClean(f);
  const small = qemuRaw(f);
  assert.equal(small.length, 800 * KiB);
  assert.ok(small.subarray(700 * KiB).equals(data.subarray(0, 100 * KiB)));

  // Growing again reads zeroes where the old data was, not the stale bytes.
  const third = await openImage(f);
  await third.resize!(2 * MiB);
  const b = Buffer.alloc(300 * KiB);
  await third.read(700 * KiB, b);
  assert.ok(b.subarray(100 * KiB).every((x) => x === 0));
  await third.close();
  assertClean(f);
});

test('resize over a backing file: the grown part does not show the backing data', async () => {
  const base = file();
  qemuImg('create', '-f', 'qcow2', base, String(4 * MiB));
  qemuIo(base, 'write -P 0x77 0 4M');
  const top = file();
  await createImage('qcow2', top, { size: MiB, options: {}, backingFile: base, backingFormat: 'qcow2' });
  const img = await openImage(top);
  await img.resize!(3 * MiB);
  const b = Buffer.alloc(2 * MiB);
  await img.read(MiB, b);
  assert.ok(b.every((x) => x === 0));
  await img.close();
  assertClean(top);
  assert.ok(qemuRaw(top).subarray(MiB).every((x) => x === 0));
});

test('lazy refcounts: dirty while writing, clean after close; a killed writer is repaired on open', async () => {
  const f = file();
  await createImage('qcow2', f, { size: 8 * MiB, options: { lazy_refcounts: 'on' } });
  const img = await openImage(f);
  await img.write(0, Buffer.alloc(100 * KiB, 1));
  assert.equal(JSON.parse(qemuImg('info', '-U', '--output=json', f))['dirty-flag'], true);
  await img.flush();
  assert.equal(JSON.parse(qemuImg('info', '-U', '--output=json', f))['dirty-flag'], false);
  await img.close();
  assertClean(f);

  // A writer killed mid-way leaves the dirty bit; opening for writing repairs the refcounts.
  const script = `
    const { openImage } = require(${JSON.stringify(path.resolve(__dirname, '../../../src/formats/index.js'))});
    (async () => {
      const img = await openImage(${JSON.stringify(f)});
      for (let i = 0; i < 40; i++) await img.write(i * 131072 + 512, Buffer.alloc(70000, i + 1));
      await img.discard(0, 4 * 1048576);
      process.kill(process.pid, 'SIGKILL');
    })();`;
  spawnSync(process.execPath, ['-e', script]);
  assert.equal(JSON.parse(qemuImg('info', '-U', '--output=json', f))['dirty-flag'], true);
  const healed = await openImage(f);
  await healed.write(5 * MiB, Buffer.alloc(10, 9));
  await healed.close();
  assertClean(f);
});

test('autoclear bits: bitmaps and unknown bits are cleared on a writable open, the bitmaps extension kept', async () => {
  const f = file();
  qemuImg('create', '-f', 'qcow2', f, String(4 * MiB));
  qemuImg('bitmap', '--add', f, 'b0');
  const fd = fs.openSync(f, 'r+');
  const bits = Buffer.alloc(8);
  fs.readSync(fd, bits, 0, 8, 88);
  bits.writeBigUInt64BE(bits.readBigUInt64BE() | (1n << 20n));
  fs.writeSync(fd, bits, 0, 8, 88);
  fs.closeSync(fd);
  const ro = await openImage(f, { readOnly: true });
  await ro.close();
  assert.equal(fs.readFileSync(f).readBigUInt64BE(88), 1n | (1n << 20n), 'a read-only open changes nothing');
  const img = await openImage(f);
  await img.write(0, Buffer.alloc(512, 1));
  await img.close();
  assert.equal(fs.readFileSync(f).readBigUInt64BE(88), 0n);
  assert.ok(fs.readFileSync(f).subarray(0, 4096).includes(Buffer.from([0x23, 0x85, 0x28, 0x75])), 'bitmaps extension still there');
  // With the bit clear qemu ignores the bitmaps, so their clusters count as leaked (never corrupt).
  const r = run('qemu-img', ['check', '--output=json', f]);
  assert.ok(r.status === 0 || r.status === 3, r.stdout + r.stderr);
  assert.equal(JSON.parse(r.stdout)['corruptions'] ?? 0, 0);
});

test('writing the active layer of an image with internal snapshots keeps the snapshots intact', async () => {
  const f = file();
  qemuImg('create', '-f', 'qcow2', '-o', 'cluster_size=4k', f, String(4 * MiB));
  qemuIo(f, 'write -P 0x11 0 1M', 'write -c -P 0x12 2M 64k');
  qemuImg('snapshot', '-c', 's1', f);
  const s1 = qemuRaw(f);
  const img = await openImage(f);
  const rand = prng(3);
  const ref = Buffer.from(s1);
  for (let i = 0; i < 200; i++) {
    const len = 1 + (rand() % 20000);
    const off = rand() % (4 * MiB - len);
    const d = randomBytes(rand, len);
    d.copy(ref, off);
    await img.write(off, d);
  }
  await img.discard(512 * KiB, 256 * KiB);
  ref.fill(0, 512 * KiB, 768 * KiB);
  await img.close();
  assertClean(f);
  assert.equal(sha256(qemuRaw(f)), sha256(ref));
  assert.equal(sha256(qemuRaw(f, '-l', 's1')), sha256(s1), 'the snapshot still reads as before');
  // And img reads the snapshot itself, read-only.
  const again = await openImage(f, { readOnly: true });
  const view = await again.openSnapshot!('s1');
  const b = Buffer.alloc(view.size);
  await view.read(0, b);
  assert.equal(sha256(b), sha256(s1));
  assert.equal((await view.blockStatus(0, view.size)).reduce((n, e) => n + e.length, 0), view.size);
  await assert.rejects(view.write(0, Buffer.alloc(1)), /read-only/);
  await assert.rejects(again.openSnapshot!('nope'), /not found/);
  await again.close();
});

test('Image.check runs the checker on the open image and the image stays usable', async () => {
  const f = file();
  await createImage('qcow2', f, { size: 4 * MiB, options: {} });
  const img = await openImage(f);
  await img.write(0, Buffer.alloc(200 * KiB, 3));
  const report = await img.check!();
  assert.equal(report.corruptions, 0);
  assert.equal(report.leaks, 0);
  await img.write(MiB, Buffer.alloc(100, 4));
  const h = await hashImage(img);
  await img.close();
  assertClean(f);
  const back = await openImage(f, { readOnly: true });
  assert.equal(await hashImage(back), h);
  await back.close();
});

test('many concurrent writes to the same unallocated clusters allocate each cluster once', async () => {
  const f = file();
  await createImage('qcow2', f, { size: 4 * MiB, options: { cluster_size: '64k' } });
  const img = await openImage(f);
  const ref = Buffer.alloc(4 * MiB);
  const jobs: Promise<void>[] = [];
  for (let i = 0; i < 256; i++) {
    const off = i * 4096 + 100; // 16 writes per cluster, each its own 4 KiB slot
    const d = Buffer.alloc(3000, i & 0xff);
    d.copy(ref, off);
    jobs.push(img.write(off, d));
  }
  await Promise.all(jobs);
  await img.close();
  assertClean(f);
  const info = JSON.parse(qemuImg('check', '--output=json', f));
  assert.equal(info['allocated-clusters'], 16);
  assert.ok(qemuRaw(f).equals(ref));
});

test('Image.amend: refcount_bits and lazy_refcounts change under an open image, which keeps working', async () => {
  const f = file();
  await createImage('qcow2', f, { size: 4 * MiB, options: {} });
  const img = await openImage(f);
  await img.write(0, Buffer.alloc(300 * KiB, 5));
  await img.amend!({ refcount_bits: '4', lazy_refcounts: 'on', size: String(6 * MiB) });
  assert.equal(img.size, 6 * MiB);
  await img.write(5 * MiB, Buffer.alloc(200 * KiB, 6));
  const info = await img.info();
  assert.equal(info.formatSpecific?.data.refcountBits, 4);
  assert.equal(info.formatSpecific?.data.lazyRefcounts, true);
  await img.close();
  assertClean(f);
  const raw = qemuRaw(f);
  assert.ok(raw.subarray(0, 300 * KiB).every((x) => x === 5));
  assert.ok(raw.subarray(5 * MiB, 5 * MiB + 200 * KiB).every((x) => x === 6));
});

test('extended L2: zeroing whole subclusters sets zero bits without allocating a cluster', async () => {
  const base = file();
  qemuImg('create', '-f', 'qcow2', base, String(4 * MiB));
  qemuIo(base, 'write -P 0x55 0 4M');
  const f = file();
  await createImage('qcow2', f, { size: 4 * MiB, options: { extended_l2: 'on' }, backingFile: base, backingFormat: 'qcow2' });
  const img = await openImage(f);
  await img.writeZeroes(8 * KiB, 4 * KiB); // two 2 KiB subclusters of a 64 KiB cluster
  await img.writeZeroes(100 * KiB + 100, 5000); // unaligned: the aligned middle gets zero bits
  const ext = await img.blockStatus(0, 64 * KiB);
  assert.deepEqual(ext.map((e) => [e.offset, e.length, e.kind, e.depth]), [
    [0, 8 * KiB, 'data', 1],
    [8 * KiB, 4 * KiB, 'zero', 0],
    [12 * KiB, 52 * KiB, 'data', 1],
  ]);
  await img.close();
  assertClean(f);
  const raw = qemuRaw(f);
  const want = Buffer.alloc(4 * MiB, 0x55);
  want.fill(0, 8 * KiB, 12 * KiB);
  want.fill(0, 100 * KiB + 100, 100 * KiB + 5100);
  assert.ok(raw.equals(want));
});
