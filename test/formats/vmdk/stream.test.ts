/**
 * streamOptimized in one pass: the layout VMware specifies (version 3 header with gdOffset
 * GD_AT_END, grain markers, each grain table after its grains, the directory, footer and
 * end-of-stream marker at the end), the same bytes to a pipe as to a file, accepted by
 * qemu-img, and bounded memory while converting a multi-GiB source to a pipe.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { IMG, img, qemuImg, run, tempDir } from '../../helpers';
import { assertClean, makeRaw, MiB } from '../qcow2/fixtures';
import { assertReadsLikeQemu, qemuIo } from './vmdk-fixture';

const dir = tempDir('img-vmdk-stream-');
const SRC = path.join(dir, 'disk.raw');
makeRaw(SRC, 40 * MiB + 7 * 512, 0x51);
const SO = ['-O', 'vmdk', '-o', 'subformat=streamOptimized'];

function ok(r: { status: number; stderr: string }): void {
  assert.equal(r.status, 0, r.stderr);
}

/** Converts to stdout through a shell pipe into `out`. */
function toPipe(args: string[], out: string): void {
  const quoted = [process.execPath, IMG, ...args].map((a) => `'${a}'`).join(' ');
  ok(run('sh', ['-c', `${quoted} | cat > '${out}'`]));
}

/** Walks the file as a stream reader would, marker by marker; returns the marker types in order. */
function walkStream(file: string): string[] {
  const b = fs.readFileSync(file);
  assert.equal(b.toString('latin1', 0, 4), 'KDMV');
  assert.equal(b.readUInt32LE(4), 3, 'header version 3');
  assert.equal(b.readBigUInt64LE(56), 0xffffffffffffffffn, 'gdOffset is GD_AT_END');
  const overHead = Number(b.readBigUInt64LE(64));
  const seen: string[] = [];
  let pos = overHead * 512;
  for (;;) {
    const val = b.readBigUInt64LE(pos);
    const size = b.readUInt32LE(pos + 8);
    if (size > 0) {
      seen.push('grain');
      assert.equal(Number(val) % 128, 0, 'grain LBAs are grain-aligned');
      pos += Math.ceil((12 + size) / 512) * 512;
      continue;
    }
    const type = b.readUInt32LE(pos + 12);
    seen.push(['eos', 'gt', 'gd', 'footer'][type]);
    if (type === 0) {
      assert.equal(pos + 512, b.byteLength, 'end-of-stream marker is the last sector');
      return seen;
    }
    pos += 512 + Number(val) * 512;
  }
}

test('a stream written to a pipe has the same bytes as one written to a file, and qemu-img accepts it', () => {
  const file = path.join(dir, 'to-file.vmdk');
  const piped = path.join(dir, 'to-pipe.vmdk');
  ok(img('convert', ...SO, SRC, file));
  toPipe(['convert', ...SO, SRC, '-'], piped);
  assert.ok(fs.readFileSync(file).equals(fs.readFileSync(piped)), 'pipe and file outputs differ');
  assertClean(piped);
  qemuImg('compare', '-f', 'raw', '-F', 'vmdk', SRC, piped);
  // -c changes nothing: stream grains are always compressed.
  const compressed = path.join(dir, 'to-file-c.vmdk');
  ok(img('convert', '-c', ...SO, SRC, compressed));
  assert.ok(fs.readFileSync(compressed).equals(fs.readFileSync(file)));
});

test('the stream follows VMware\'s layout: grains, a table after its grains, directory, footer, end-of-stream', () => {
  const file = path.join(dir, 'layout.vmdk');
  ok(img('convert', ...SO, SRC, file));
  const seen = walkStream(file);
  assert.deepEqual(seen.slice(-3), ['gd', 'footer', 'eos']);
  assert.equal(seen.filter((s) => s === 'gt').length, 2, '40 MiB of data spans two 32 MiB grain tables');
  assert.equal(seen[seen.length - 4], 'gt', 'the last table follows its grains');
  const firstTable = seen.indexOf('gt');
  assert.ok(firstTable > 0 && seen.slice(0, firstTable).every((s) => s === 'grain'));
});

test('an empty stream created by img create is valid; qemu reads streams img made from every source format', async () => {
  const empty = path.join(dir, 'empty.vmdk');
  ok(img('create', '-q', '-f', 'vmdk', '-o', 'subformat=streamOptimized', empty, '100M'));
  assert.deepEqual(walkStream(empty), ['gd', 'footer', 'eos']);
  assertClean(empty);
  for (const fmt of ['qcow2', 'vmdk']) {
    const src = path.join(dir, `src.${fmt}`);
    qemuImg('convert', '-O', fmt, SRC, src);
    const out = path.join(dir, `from-${fmt}.vmdk`);
    toPipe(['convert', ...SO, src, '-'], out);
    assertClean(out);
    qemuImg('compare', '-F', 'vmdk', src, out);
    await assertReadsLikeQemu(out);
  }
});

test("qemu's own streamOptimized images (directory at the start, grains appended by qemu-io) read correctly", async () => {
  const file = path.join(dir, 'qemu-stream.vmdk');
  qemuImg('create', '-f', 'vmdk', '-o', 'subformat=streamOptimized', file, '8M');
  qemuIo(file, 'write -P 0x21 0 64k', 'write -P 0x22 4M 128k', 'write -P 0x23 8128k 64k');
  await assertReadsLikeQemu(file);
});

test('refuses what a one-pass stream cannot do: other subformats to a pipe, writes out of order', () => {
  const r = img('convert', '-O', 'vmdk', SRC, '-');
  assert.equal(r.status, 1);
  assert.match(r.stderr, /streamOptimized/);
  const q = img('convert', '-O', 'qcow2', SRC, '-');
  assert.equal(q.status, 1);
  assert.match(q.stderr, /pipe/);
});

test('peak memory stays bounded converting a 4 GiB source with 256 MiB of data to a pipe', () => {
  const big = path.join(dir, 'big.raw');
  const fd = fs.openSync(big, 'w');
  fs.ftruncateSync(fd, 4 * 1024 * MiB);
  const block = Buffer.alloc(MiB);
  for (let i = 0; i < 256; i++) {
    for (let o = 0; o < MiB; o += 8) block.writeUInt32LE(i * MiB + o, o); // compressible, never zero
    fs.writeSync(fd, block, 0, MiB, (i * 16 + (i % 5)) * MiB);
  }
  fs.closeSync(fd);
  const out = path.join(dir, 'big.vmdk');
  const rss = path.join(dir, 'rss.txt');
  const cmd = `/usr/bin/time -f %M -o '${rss}' '${process.execPath}' '${IMG}' convert -O vmdk -o subformat=streamOptimized '${big}' - | cat > '${out}'`;
  ok(run('sh', ['-c', cmd]));
  const peakKiB = Number(fs.readFileSync(rss, 'utf8').trim().split('\n').pop());
  assert.ok(peakKiB < 300 * 1024, `peak RSS ${peakKiB} KiB`);
  qemuImg('compare', '-f', 'raw', '-F', 'vmdk', big, out);
  fs.rmSync(big);
  fs.rmSync(out);
});
