/**
 * img convert, info and compare across raw, qcow2 and vmdk in every direction, with
 * qemu-img as the judge of every result.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { img, qemuImg, tempDir } from '../../helpers';
import { makeSampleDisk, writeAt } from '../../convert/sample-disk';
import { assertClean } from '../qcow2/fixtures';

const dir = tempDir('img-vmdk-cross-');
const RAW = path.join(dir, 'sample.raw');
makeSampleDisk(RAW, 7);

/** Targets: format and -o options. */
const TARGETS: [string, string][] = [
  ['raw', ''],
  ['qcow2', ''],
  ['vmdk', 'subformat=monolithicSparse'],
  ['vmdk', 'subformat=twoGbMaxExtentFlat'],
  ['vmdk', 'subformat=streamOptimized'],
  ['vmdk', 'subformat=monolithicSparse,zeroed_grain=on'],
];

function ok(r: { status: number; stdout: string; stderr: string }): string {
  assert.equal(r.status, 0, r.stderr);
  return r.stdout;
}

let n = 0;
const sources: [string, string][] = [['raw', RAW]];
for (const [fmt, opts] of TARGETS.slice(1)) {
  const f = path.join(dir, `src${n++}.${fmt}`);
  qemuImg('convert', '-O', fmt, ...(opts ? ['-o', opts] : []), RAW, f);
  sources.push([fmt, f]);
}

for (const [srcFmt, src] of sources) {
  test(`img convert from ${path.basename(src)} (${srcFmt}) to raw, qcow2 and every vmdk subformat; img info and img compare agree with qemu-img`, () => {
    for (const [fmt, opts] of TARGETS) {
      const out = path.join(dir, `out${n++}.${fmt}`);
      ok(img('convert', '-f', srcFmt, '-O', fmt, ...(opts ? ['-o', opts] : []), src, out));
      if (fmt !== 'raw') assertClean(out);
      qemuImg('compare', '-f', srcFmt, '-F', fmt, src, out);
      assert.match(ok(img('compare', '-f', srcFmt, '-F', fmt, src, out)), /identical/);
      const info = JSON.parse(ok(img('info', '--output=json', out)));
      const theirs = JSON.parse(qemuImg('info', '--output=json', out));
      assert.equal(info.format, theirs.format);
      assert.equal(info['virtual-size'], theirs['virtual-size']);
    }
  });
}

test('img compare sees a one-byte difference between a vmdk and a qcow2, as qemu-img does', () => {
  const a = path.join(dir, 'diff.vmdk');
  const b = path.join(dir, 'diff.qcow2');
  const changed = path.join(dir, 'changed.raw');
  ok(img('convert', '-O', 'vmdk', RAW, a));
  qemuImg('convert', '-O', 'raw', RAW, changed);
  writeAt(changed, 3 * 1024 * 1024 + 17, Buffer.from([0xab]));
  qemuImg('convert', '-O', 'qcow2', changed, b);
  const r = img('compare', a, b);
  assert.equal(r.status, 1, r.stderr);
  assert.match(r.stdout, /Content mismatch at offset 3145728/);
});

test('img info (human and JSON), img map and img check print what qemu-img prints for vmdks', () => {
  const sorted = (text: string) => JSON.stringify(JSON.parse(text), (_k, v) => (v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort()) : v));
  for (const [fmt, file] of sources.filter(([f]) => f === 'vmdk')) {
    assert.equal(ok(img('info', file)), qemuImg('info', file), `info ${file}`);
    assert.equal(sorted(ok(img('info', '--output=json', file))), sorted(qemuImg('info', '--output=json', file)), `info json ${file}`);
    // qemu maps a hole in a flat extent as allocated zeroes ("data": true, "zero": true), which
    // img's extent kinds do not tell apart from a hole; sparse and stream extents map alike.
    if (!qemuImg('info', file).includes('Flat')) {
      assert.equal(ok(img('map', '--output=json', '-f', fmt, file)), qemuImg('map', '--output=json', '-f', fmt, file), `map ${file}`);
    }
    assert.equal(ok(img('check', file)), qemuImg('check', file), `check ${file}`);
  }
});
