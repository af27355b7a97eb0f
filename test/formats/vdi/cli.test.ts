/**
 * img convert, info, compare and measure across raw, qcow2 and vdi in every direction, with
 * qemu-img as the oracle: sources made by qemu-img, targets checked and compared by it.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { img, prng, qemuImg, randomBytes, run, tempDir } from '../../helpers';

const MiB = 1 << 20;
const SIZE = 6 * MiB + 512;
const FORMATS = ['raw', 'qcow2', 'vdi'] as const;
const dir = tempDir('img-vdi-cli-');

/** A raw disk with data in some 1 MiB blocks, zero runs and holes in others. */
function makeSource(): string {
  const file = path.join(dir, 'seed.raw');
  const rand = prng(0xd15c);
  const buf = Buffer.alloc(SIZE);
  randomBytes(rand, 300 * 1024).copy(buf, 100 * 1024); // block 0
  buf.fill(0x3c, 2 * MiB - 4096, 2 * MiB + 4096); // blocks 1 and 2
  randomBytes(rand, MiB).copy(buf, 4 * MiB); // block 4; 3 and 5 stay empty
  buf.fill(0x99, SIZE - 512); // the odd last sector, block 6
  fs.writeFileSync(file, buf);
  return file;
}

const seed = makeSource();
const sources: Record<string, string> = {};
for (const f of FORMATS) {
  sources[f] = path.join(dir, `src.${f}`);
  qemuImg('convert', '-f', 'raw', '-O', f, seed, sources[f]);
}

function ok(r: { status: number; stdout: string; stderr: string }, what: string): string {
  assert.equal(r.status, 0, `${what}: ${r.stdout}${r.stderr}`);
  return r.stdout;
}

for (const from of FORMATS) {
  for (const to of FORMATS) {
    test(`img convert ${from} -> ${to}; info, compare and measure agree with qemu-img`, () => {
      const out = path.join(dir, `out-${from}.${to}`);
      ok(img('convert', '-f', from, '-O', to, sources[from], out), 'img convert');
      if (to !== 'raw') ok(run('qemu-img', ['check', '-f', to, out]), 'qemu-img check');
      ok(run('qemu-img', ['compare', '-f', from, '-F', to, sources[from], out]), 'qemu-img compare');
      ok(img('compare', '-f', from, '-F', to, sources[from], out), 'img compare');
      ok(img('compare', out, seed), 'img compare (probed)');

      const info = JSON.parse(ok(img('info', '--output=json', out), 'img info'));
      const qinfo = JSON.parse(qemuImg('info', '--output=json', out));
      assert.equal(info.format, to);
      for (const key of ['format', 'virtual-size', 'cluster-size']) assert.deepEqual(info[key], qinfo[key], key);

      // measure: qemu-img is the oracle for raw and qcow2 targets; a vdi target is measured against the file img wrote.
      const measured = JSON.parse(ok(img('measure', '--output=json', '-f', from, '-O', to, sources[from]), 'img measure'));
      if (to === 'vdi') {
        assert.equal(measured.required, fs.statSync(out).size);
        assert.equal(measured['fully-allocated'], 0x400 + 7 * MiB);
      } else {
        const q = JSON.parse(qemuImg('measure', '--output=json', '-f', from, '-O', to, sources[from]));
        assert.equal(measured.required, q.required);
        assert.equal(measured['fully-allocated'], q['fully-allocated']);
      }
    });
  }
}

test('vdi targets: static and VirtualBox layout through the CLI', () => {
  for (const opts of ['static=on', 'layout=vbox', 'layout=vbox,static=on']) {
    const out = path.join(dir, `opt-${opts.replace(/[=,]/g, '-')}.vdi`);
    ok(img('convert', '-O', 'vdi', '-o', opts, seed, out), 'img convert');
    ok(run('qemu-img', ['check', out]), 'qemu-img check');
    ok(run('qemu-img', ['compare', '-F', 'raw', out, seed]), 'qemu-img compare');
    // The sparse copy qemu-img made: measure counts allocated blocks, convert also skips zeroed ones.
    const m = JSON.parse(ok(img('measure', '--output=json', '-O', 'vdi', '-o', opts, sources.raw), 'img measure'));
    assert.equal(m.required, fs.statSync(out).size, opts);
  }
  const human = ok(img('info', sources.vdi), 'img info');
  assert.match(human, /^file format: vdi$/m);
  assert.match(human, /^cluster_size: 1048576$/m);
  assert.match(human, /image type: dynamic/);
  assert.match(human, /blocks allocated: 5/);
  const created = path.join(dir, 'made.vdi');
  ok(img('create', '-f', 'vdi', '-o', 'static=on', created, '3M'), 'img create');
  assert.match(ok(run('qemu-img', ['info', created]), 'qemu-img info'), /virtual size: 3 MiB/);
  assert.equal(JSON.parse(ok(img('measure', '--output=json', '-O', 'vdi', '--size', '3M'), 'measure')).required, 0x400);
});

test('img check and img map on qemu-made vdis print what qemu-img prints', () => {
  const r = img('check', '--output=json', sources.vdi);
  const q = run('qemu-img', ['check', '--output=json', sources.vdi]);
  assert.equal(r.status, q.status);
  assert.deepEqual(JSON.parse(r.stdout), JSON.parse(q.stdout));
  assert.equal(ok(img('map', '--output=json', sources.vdi), 'img map'), qemuImg('map', '--output=json', sources.vdi));
  assert.equal(ok(img('map', sources.vdi), 'img map'), qemuImg('map', sources.vdi));
  // A static image: qemu looks through to the file's holes, and so does img (qemu also calls them data).
  const st = path.join(dir, 'static.vdi');
  qemuImg('convert', '-O', 'vdi', '-o', 'static=on', seed, st);
  const mine = JSON.parse(ok(img('map', '--output=json', st), 'img map'));
  const theirs = JSON.parse(qemuImg('map', '--output=json', st));
  for (const e of theirs) if (e.zero) e.data = false;
  assert.deepEqual(mine, theirs);
});
