/**
 * Write matrix: images img creates and writes, in every option combination, pass
 * `qemu-img check` with no errors and no leaks, and `qemu-img compare` finds them equal to
 * a raw reference.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createImage, openImage } from '../../../src/formats/index';
import { qemuImg, run, tempDir } from '../../helpers';
import { assertClean, KiB, makeRaw, MiB } from './fixtures';
import { workload } from './workload';

const dir = tempDir('img-qcow2-write-');
const SIZE = 8 * MiB + 3 * KiB;
let n = 0;

interface Case {
  options: Record<string, string>;
  backing?: 'qcow2' | 'raw';
}

async function runCase(c: Case, seed: number): Promise<void> {
  const file = path.join(dir, `w${n++}.qcow2`);
  let ref: Buffer = Buffer.alloc(SIZE);
  const opts = { size: SIZE, options: { ...c.options } };
  let backingFile: string | undefined;
  if (c.backing) {
    const raw = path.join(dir, `base${n}.raw`);
    ref = makeRaw(raw, SIZE, seed + 1);
    backingFile = raw;
    if (c.backing === 'qcow2') {
      backingFile = path.join(dir, `base${n}.qcow2`);
      qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=4k', raw, backingFile);
    }
    Object.assign(opts, { backingFile: path.basename(backingFile), backingFormat: c.backing });
  }
  if (c.options.data_file) opts.options.data_file = path.join(dir, `w${n}.data`);
  await createImage('qcow2', file, opts);
  assertClean(file);
  const img = await openImage(file);
  const v2 = c.options.compat === '0.10';
  await workload(img, ref, { seed, discardZeroes: !(v2 && c.backing), compressed: !c.options.data_file });
  await img.close();
  const refFile = path.join(dir, `ref${n}.raw`);
  fs.writeFileSync(refFile, ref);
  assertClean(file);
  const cmp = run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', file, refFile]);
  assert.equal(cmp.status, 0, `${JSON.stringify(c)}: ${cmp.stdout}${cmp.stderr}`);
  if (c.options.data_file_raw === 'on') assert.ok(fs.readFileSync(opts.options.data_file!).equals(ref), 'the raw data file holds the guest view');
  // img reads it back too.
  const again = await openImage(file, { readOnly: true });
  const back = Buffer.alloc(SIZE);
  await again.read(0, back);
  await again.close();
  assert.ok(back.equals(ref), 'img reads back what it wrote');
}

const cases: Case[] = [];
for (const compat of ['0.10', '1.1']) {
  for (const cs of ['512', '4k', '64k', '2M']) cases.push({ options: { compat, cluster_size: cs } });
}
for (const bits of ['1', '2', '4', '8', '32', '64']) cases.push({ options: { refcount_bits: bits, cluster_size: '4k' } });
cases.push(
  { options: { cluster_size: '512', refcount_bits: '64' } }, // many refcount blocks: the refcount table grows
  { options: { compression_type: 'zstd' } },
  { options: { compression_type: 'zstd', cluster_size: '4k', extended_l2: 'off' } },
  { options: { extended_l2: 'on', cluster_size: '16k' } },
  { options: { extended_l2: 'on' } },
  { options: { lazy_refcounts: 'on' } },
  { options: { data_file: 'x' } },
  { options: { data_file: 'x', data_file_raw: 'on' } },
  { options: { data_file: 'x', extended_l2: 'on' } },
  { options: { preallocation: 'metadata' } },
  { options: { preallocation: 'falloc', cluster_size: '4k' } },
  { options: { preallocation: 'full', compat: '0.10' } },
  { options: { preallocation: 'metadata', extended_l2: 'on' }, backing: 'raw' },
  { options: { cluster_size: '4k' }, backing: 'qcow2' },
  { options: { compat: '0.10' }, backing: 'qcow2' },
  { options: { extended_l2: 'on', cluster_size: '32k' }, backing: 'qcow2' },
  { options: { cluster_size: '512' }, backing: 'raw' },
);

cases.forEach((c, i) => {
  test(`img writes a clean qcow2: ${JSON.stringify(c)}`, async () => runCase(c, 1000 + i));
});

test('create matches qemu-img create byte for byte in the header fields qemu-img info shows', async () => {
  for (const o of ['compat=0.10', 'cluster_size=512,refcount_bits=1', 'extended_l2=on,compression_type=zstd,lazy_refcounts=on']) {
    const mine = path.join(dir, `c${n++}.qcow2`);
    const theirs = path.join(dir, `c${n++}.qcow2`);
    const options = Object.fromEntries(o.split(',').map((kv) => kv.split('=')));
    await createImage('qcow2', mine, { size: 5 * MiB, options });
    qemuImg('create', '-f', 'qcow2', '-o', o, theirs, String(5 * MiB));
    const a = JSON.parse(qemuImg('info', '--output=json', mine));
    const b = JSON.parse(qemuImg('info', '--output=json', theirs));
    for (const k of ['virtual-size', 'cluster-size', 'format-specific', 'dirty-flag']) assert.deepEqual(a[k], b[k], `${o}: ${k}`);
    assertClean(mine);
  }
});

test('create refuses what qemu refuses', async () => {
  const f = path.join(dir, 'bad.qcow2');
  const bad: Record<string, string>[] = [
    { compat: '0.10', lazy_refcounts: 'on' },
    { cluster_size: '1000' },
    { cluster_size: '4M' },
    { refcount_bits: '128' },
    { extended_l2: 'on', cluster_size: '4k' },
    { data_file_raw: 'on' },
    { compression_type: 'lz4' },
    { encryption: 'on' },
    { nonsense: '1' },
  ];
  for (const options of bad) {
    await assert.rejects(createImage('qcow2', f, { size: MiB, options }), (e: Error & { code?: string }) => !!e.code, JSON.stringify(options));
  }
});
