/**
 * Read matrix: every vmdk variant qemu-img writes (all subformats, adapter types, compat6,
 * hwversion, zeroed_grain, deltas), read back through the library byte for byte and compared
 * field by field with qemu-img info.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openImage } from '../../../src/formats/index';
import { img, qemuImg, tempDir } from '../../helpers';
import { makeRaw, MiB } from '../qcow2/fixtures';
import { assertReadsLikeQemu, qemuInfo, qemuIo, SUBFORMATS } from './vmdk-fixture';

const dir = tempDir('img-vmdk-read-');
const SRC = path.join(dir, 'src.raw');
makeRaw(SRC, 5 * MiB + 3 * 512, 0x7d);
let n = 0;

function convert(opts: string): string {
  const out = path.join(dir, `q${n++}.vmdk`);
  qemuImg('convert', '-f', 'raw', '-O', 'vmdk', '-o', opts, SRC, out);
  return out;
}

for (const sub of SUBFORMATS) {
  for (const extra of ['', ',adapter_type=lsilogic', ',adapter_type=buslogic,hwversion=10', ',adapter_type=legacyESX,compat6=on', ',toolsversion=12345']) {
    test(`reads qemu's ${sub}${extra}`, async () => assertReadsLikeQemu(convert(`subformat=${sub}${extra}`)));
  }
}

test("reads qemu's zeroed_grain images with zeroed grains over a parent", async () => {
  for (const sub of ['monolithicSparse', 'twoGbMaxExtentSparse']) {
    const base = convert(`subformat=${sub}`);
    const top = path.join(dir, `z${n++}.vmdk`);
    qemuImg('create', '-f', 'vmdk', '-o', `subformat=${sub},zeroed_grain=on`, '-b', base, '-F', 'vmdk', top);
    qemuIo(top, 'write -z 0 256k', 'write -P 0x42 1001000 5000', 'write -z 3M 64k');
    await assertReadsLikeQemu(top);
    const image = await openImage(top, { readOnly: true });
    try {
      const status = await image.blockStatus(0, 256 * 1024);
      assert.deepEqual(status.map((e) => [e.kind, e.depth]), [['zero', 0]]);
    } finally {
      await image.close();
    }
  }
});

test('reads a qemu-made delta chain (parentFileNameHint, parentCID) and reports it like qemu-img info', async () => {
  const base = convert('subformat=monolithicSparse');
  const mid = path.join(dir, `mid${n++}.vmdk`);
  const top = path.join(dir, `top${n++}.vmdk`);
  qemuImg('create', '-f', 'vmdk', '-b', path.basename(base), '-F', 'vmdk', mid);
  qemuIo(mid, 'write -P 0x11 64k 64k', 'write -P 0x12 100000 3');
  qemuImg('create', '-f', 'vmdk', '-b', path.basename(mid), '-F', 'vmdk', top);
  qemuIo(top, 'write -P 0x13 2M 1M');
  await assertReadsLikeQemu(top);
  const ours = JSON.parse(img('info', '--output=json', top).stdout);
  const theirs = qemuInfo(top);
  for (const k of ['virtual-size', 'cluster-size', 'backing-filename', 'backing-filename-format', 'format']) assert.deepEqual(ours[k], theirs[k], k);
  for (const k of ['cid', 'parent-cid', 'create-type']) assert.deepEqual(ours['format-specific'].data[k], theirs['format-specific'].data[k], k);
});

test('info matches qemu-img info for every subformat (create type, CIDs, extents)', async () => {
  for (const sub of SUBFORMATS) {
    const file = convert(`subformat=${sub}`);
    const ours = JSON.parse(img('info', '--output=json', file).stdout);
    const theirs = qemuInfo(file);
    assert.equal(ours['virtual-size'], theirs['virtual-size']);
    assert.equal(ours['cluster-size'], theirs['cluster-size'], sub);
    const o = ours['format-specific'].data;
    const t = theirs['format-specific'].data;
    for (const k of ['cid', 'parent-cid', 'create-type']) assert.equal(o[k], t[k], `${sub} ${k}`);
    assert.equal(o.extents.length, t.extents.length);
    for (const [i, e] of t.extents.entries()) {
      for (const k of ['virtual-size', 'cluster-size', 'compressed', 'format']) assert.equal(o.extents[i][k], e[k], `${sub} extent ${i} ${k}`);
      assert.equal(path.basename(o.extents[i].filename), path.basename(e.filename));
    }
  }
});

test("reads data qemu-io wrote into qemu's 3 GiB images (partial grains, across 2 GiB extents), converting through img", async () => {
  for (const sub of ['monolithicSparse', 'twoGbMaxExtentSparse', 'twoGbMaxExtentFlat']) {
    const file = path.join(dir, `w${n++}.vmdk`);
    qemuImg('create', '-f', 'vmdk', '-o', `subformat=${sub}`, file, '3G');
    qemuIo(file, 'write -P 0x5a 1000 5000', 'write -P 0x33 2047M 2M', 'write -P 0x77 3071M 1M');
    const out = path.join(dir, `w${n++}.raw`);
    const r = img('convert', '-O', 'raw', file, out);
    assert.equal(r.status, 0, r.stderr);
    qemuImg('compare', '-f', 'vmdk', '-F', 'raw', file, out);
    fs.rmSync(out);
  }
});

test('a delta larger than its parent reads zeroes past the parent end, as qemu does', async () => {
  const base = convert('subformat=monolithicSparse');
  const top = path.join(dir, `big${n++}.vmdk`);
  qemuImg('create', '-f', 'vmdk', '-b', path.basename(base), '-F', 'vmdk', top, '9M');
  qemuIo(top, 'write -P 0x66 8M 4k');
  await assertReadsLikeQemu(top);
});
