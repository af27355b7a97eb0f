/**
 * Write matrix: vmdk images img creates and converts to, with every option qemu-img has, are
 * checked by qemu-img (check clean, compare equal to the source) and laid out like qemu-img's
 * own (same files, same bytes but for the random CID); writes through the library, deltas
 * over a parent and zeroed grains included.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openImage } from '../../../src/formats/index';
import { img, prng, qemuImg, randomBytes, tempDir } from '../../helpers';
import { assertClean, makeRaw, MiB } from '../qcow2/fixtures';
import { assertReadsLikeQemu, qemuInfo, SUBFORMATS } from './vmdk-fixture';

const dir = tempDir('img-vmdk-write-');
const SRC = path.join(dir, 'src.raw');
makeRaw(SRC, 7 * MiB + 5 * 512, 0x3a);
let n = 0;

function ok(r: { status: number; stderr: string }): void {
  assert.equal(r.status, 0, r.stderr);
}

const OPTION_SETS = ['', 'adapter_type=lsilogic', 'adapter_type=buslogic,hwversion=7', 'adapter_type=legacyESX,compat6=on', 'toolsversion=10240'];

for (const sub of SUBFORMATS) {
  for (const extra of OPTION_SETS) {
    const opts = `subformat=${sub}${extra ? `,${extra}` : ''}`;
    test(`img convert -O vmdk -o ${opts}: qemu-img check clean, compare equal`, () => {
      const out = path.join(dir, `c${n++}.vmdk`);
      ok(img('convert', '-O', 'vmdk', '-o', opts, SRC, out));
      assertClean(out);
      qemuImg('compare', '-f', 'raw', '-F', 'vmdk', SRC, out);
      const info = qemuInfo(out);
      assert.equal(info['format-specific'].data['create-type'], sub);
      const desc = descriptorOf(out);
      if (extra.includes('adapter_type=')) assert.match(desc, new RegExp(`ddb.adapterType = "${/adapter_type=(\w+)/.exec(extra)![1]}"`));
      if (extra.includes('compat6')) assert.match(desc, /ddb.virtualHWVersion = "6"/);
      if (extra.includes('hwversion=7')) assert.match(desc, /ddb.virtualHWVersion = "7"/);
      if (extra.includes('toolsversion')) assert.match(desc, /ddb.toolsVersion = "10240"/);
    });
  }
}

/** The descriptor text of a vmdk (embedded in a sparse file, or the file itself). */
function descriptorOf(file: string): string {
  const b = fs.readFileSync(file);
  const text = b.subarray(0, 4).toString('latin1') === 'KDMV' ? b.subarray(512, 512 * 21).toString('utf8') : b.toString('utf8');
  return text.replace(/\0+$/, '');
}

/** Drops the CID's digits (and the zero padding after the descriptor, whose length they change). */
const maskCid = (b: Buffer): Buffer => Buffer.from(b.toString('latin1').replace(/\nCID=[0-9a-f]{1,8}\n([^\0]*)\0*/, '\nCID=\n$1<padding>'), 'latin1');

test('img create lays out every non-stream subformat exactly as qemu-img create (bytes equal but for the CID)', () => {
  for (const sub of SUBFORMATS.filter((s) => s !== 'streamOptimized')) {
    for (const opts of [`subformat=${sub}`, `subformat=${sub},adapter_type=lsilogic,hwversion=11,toolsversion=9`, `subformat=${sub},compat6=on`]) {
      for (const zeroed of sub.endsWith('Sparse') ? ['', ',zeroed_grain=on'] : ['']) {
        const a = path.join(dir, `qa${n}`, 'disk.vmdk');
        const b = path.join(dir, `qb${n++}`, 'disk.vmdk');
        fs.mkdirSync(path.dirname(a));
        fs.mkdirSync(path.dirname(b));
        qemuImg('create', '-q', '-f', 'vmdk', '-o', opts + zeroed, a, '2100M');
        ok(img('create', '-q', '-f', 'vmdk', '-o', opts + zeroed, b, '2100M'));
        const files = fs.readdirSync(path.dirname(a)).sort();
        assert.deepEqual(fs.readdirSync(path.dirname(b)).sort(), files, opts);
        for (const f of files) {
          const [sa, sb] = [path.join(path.dirname(a), f), path.join(path.dirname(b), f)].map((p) => fs.statSync(p).size);
          if (sa > 64 * MiB) {
            assert.equal(sb, sa, `${opts}${zeroed}: ${f} size`);
            continue; // a flat extent: a hole of the right size
          }
          const x = maskCid(fs.readFileSync(path.join(path.dirname(a), f)));
          const y = maskCid(fs.readFileSync(path.join(path.dirname(b), f)));
          assert.ok(x.equals(y), `${opts}${zeroed}: ${f} differs from qemu-img's`);
        }
        assertClean(b);
      }
    }
  }
});

test('img create refuses what qemu-img refuses', () => {
  const f = path.join(dir, 'bad.vmdk');
  for (const [opts, msg] of [
    ['subformat=monolithicFlat,zeroed_grain=on', /zeroed grain/],
    ['compat6=on,hwversion=7', /compat6/],
    ['adapter_type=scsi', /adapter_type/],
    ['subformat=bogus', /subformat/],
    ['cluster_size=4k', /cluster_size/],
  ] as const) {
    const r = img('create', '-f', 'vmdk', '-o', opts, f, '1M');
    assert.equal(r.status, 1, opts);
    assert.match(r.stderr, msg);
  }
});

test('writes through the library at odd offsets land where qemu reads them, in every writable subformat', async () => {
  const rand = prng(99);
  for (const sub of SUBFORMATS.filter((s) => s !== 'streamOptimized')) {
    for (const zeroed of sub.endsWith('Sparse') ? ['off', 'on'] : ['off']) {
      const file = path.join(dir, `lib${n++}.vmdk`);
      const size = 3 * MiB;
      ok(img('create', '-q', '-f', 'vmdk', '-o', `subformat=${sub}${sub.endsWith('Sparse') ? `,zeroed_grain=${zeroed}` : ''}`, file, String(size)));
      const mirror = Buffer.alloc(size);
      const image = await openImage(file);
      for (const [off, len] of [[0, 512], [1000, 70000], [65536 * 3 - 7, 14], [2 * MiB - 100, 300000], [size - 513, 513]]) {
        const data = randomBytes(rand, len);
        data.copy(mirror, off);
        await image.write(off, data);
      }
      await image.writeZeroes(64 * 1024, 128 * 1024);
      mirror.fill(0, 64 * 1024, 192 * 1024);
      await image.close();
      const raw = path.join(dir, `lib${n++}.raw`);
      fs.writeFileSync(raw, mirror);
      assertClean(file);
      qemuImg('compare', '-f', 'vmdk', '-F', 'raw', file, raw);
      await assertReadsLikeQemu(file);
    }
  }
});

test('a delta img creates over a parent: copy-on-write of partial grains, parent CID recorded, qemu reads it', async () => {
  const base = path.join(dir, `base${n++}.vmdk`);
  ok(img('convert', '-O', 'vmdk', SRC, base));
  const top = path.join(dir, `delta${n++}.vmdk`);
  ok(img('create', '-q', '-f', 'vmdk', '-b', path.basename(base), '-F', 'vmdk', top));
  assert.equal(qemuInfo(top)['format-specific'].data['parent-cid'], qemuInfo(base)['format-specific'].data.cid);
  const mirror = fs.readFileSync(SRC);
  const image = await openImage(top);
  const data = Buffer.alloc(3000, 0xee);
  for (const off of [100, 65536 + 1, 5 * MiB + 4095]) {
    await image.write(off, data);
    data.copy(mirror, off);
  }
  await image.close();
  const raw = path.join(dir, `delta${n++}.raw`);
  fs.writeFileSync(raw, mirror);
  assertClean(top);
  qemuImg('compare', '-F', 'raw', top, raw);
  await assertReadsLikeQemu(top);
});

test('convert -B makes a vmdk delta over a vmdk parent that qemu reads', () => {
  const base = path.join(dir, `b${n++}.vmdk`);
  ok(img('convert', '-O', 'vmdk', SRC, base));
  const changed = path.join(dir, `changed${n++}.raw`);
  fs.copyFileSync(SRC, changed);
  const fd = fs.openSync(changed, 'r+');
  fs.writeSync(fd, Buffer.alloc(70000, 0x61), 0, 70000, 2 * MiB);
  fs.closeSync(fd);
  const top = path.join(dir, `t${n++}.vmdk`);
  ok(img('convert', '-O', 'vmdk', '-B', path.basename(base), '-F', 'vmdk', changed, top));
  assertClean(top);
  qemuImg('compare', '-F', 'raw', top, changed);
  assert.equal(qemuInfo(top)['backing-filename'], path.basename(base));
});

test('img measure -O vmdk: what the converted image really takes (exactly, for monolithicSparse)', () => {
  for (const sub of SUBFORMATS) {
    const m = JSON.parse(img('measure', '--output=json', '-O', 'vmdk', '-o', `subformat=${sub}`, SRC).stdout);
    const outDir = path.join(dir, `measure${n++}`);
    fs.mkdirSync(outDir);
    ok(img('convert', '-O', 'vmdk', '-o', `subformat=${sub}`, SRC, path.join(outDir, 'm.vmdk')));
    const total = fs.readdirSync(outDir).reduce((s, f) => s + fs.statSync(path.join(outDir, f)).size, 0);
    assert.ok(m.required >= total, `${sub}: measured ${m.required}, took ${total}`);
    assert.ok(m['fully-allocated'] >= m.required);
    if (sub === 'monolithicSparse') assert.equal(m.required, total);
  }
  const empty = JSON.parse(img('measure', '--output=json', '-O', 'vmdk', '--size', '10G').stdout);
  assert.ok(empty.required < 2 * MiB && empty['fully-allocated'] > 10 * 1024 * MiB);
});
