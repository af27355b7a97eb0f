/** measureQcow2 against `qemu-img measure -O qcow2` for sizes, options and source images. */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError } from '../../../src/block/errors';
import { openImage } from '../../../src/formats/index';
import { measureQcow2 } from '../../../src/formats/qcow2/measure';
import { parseOptionList } from '../../../src/formats/options';
import { qemuImg, run, tempDir } from '../../helpers';

const dir = tempDir('img-measure-');
const MiB = 1 << 20;

function qemuMeasure(args: string[]): Record<string, number> {
  return JSON.parse(qemuImg('measure', '--output=json', '-O', 'qcow2', ...args)) as Record<string, number>;
}

test('empty images: sizes × options equal qemu-img measure --size', async () => {
  const sizes = [0, 1, 512, 65536, 1_000_000, 100 * MiB, 3 * 2 ** 30 + 12345, 2 ** 40];
  const optionSets = [
    '',
    'cluster_size=512',
    'cluster_size=4k,refcount_bits=1',
    'cluster_size=2M,refcount_bits=64',
    'extended_l2=on',
    'extended_l2=on,cluster_size=16k',
    'compat=0.10',
    'preallocation=full',
    'preallocation=metadata,refcount_bits=8',
    'backing_file=x.qcow2',
  ];
  for (const opts of optionSets) {
    for (const size of sizes) {
      const args = [...(opts ? ['-o', opts] : []), '--size', String(size)];
      const r = run('qemu-img', ['measure', '--output=json', '-O', 'qcow2', ...args]);
      if (r.status !== 0) {
        await assert.rejects(measureQcow2({ size, options: parseOptionList(opts) }), ImageError, `${opts} ${size}`);
        continue;
      }
      const q = JSON.parse(r.stdout) as Record<string, number>;
      const ours = await measureQcow2({ size, options: parseOptionList(opts) });
      assert.deepEqual([ours.required, ours.fullyAllocated], [q.required, q['fully-allocated']], `-o ${opts} --size ${size}`);
    }
  }
});

test('invalid options are refused as qemu-img refuses them', async () => {
  for (const opts of ['cluster_size=1000', 'cluster_size=4k,extended_l2=on', 'refcount_bits=3', 'compat=0.10,refcount_bits=8', 'compat=2', 'foo=1']) {
    assert.notEqual(run('qemu-img', ['measure', '-O', 'qcow2', '-o', opts, '--size', '1G']).status, 0, opts);
    await assert.rejects(measureQcow2({ size: 2 ** 30, options: parseOptionList(opts) }), ImageError, opts);
  }
  await assert.rejects(measureQcow2({ size: 2 ** 50, options: { cluster_size: '512' } }), /too large/);
});

test('source images: required size counts their data clusters as qemu-img does', async () => {
  const rawFile = path.join(dir, 'sparse.raw');
  const fd = fs.openSync(rawFile, 'w');
  fs.ftruncateSync(fd, 40 * MiB + 777);
  for (const [at, len] of [
    [0, 5000],
    [MiB + 100, 200_000],
    [20 * MiB, 64 * 1024],
    [40 * MiB, 777],
  ]) {
    fs.writeSync(fd, Buffer.alloc(len, 0xa5), 0, len, at);
  }
  fs.closeSync(fd);

  const q = path.join(dir, 'src.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', q, `${32 * MiB}`);
  run('qemu-io', ['-c', 'write -P 1 0 300k', '-c', 'write -z 64k 64k', '-c', 'write -P 2 5M 4k', '-c', 'write -z 8M 1M', q]);
  qemuImg('bitmap', '--add', q, 'b0');
  qemuImg('bitmap', '--add', '-g', '512k', q, 'second');
  const compressed = path.join(dir, 'c.qcow2');
  qemuImg('convert', '-c', '-O', 'qcow2', rawFile, compressed);

  for (const src of [rawFile, q, compressed]) {
    for (const opts of ['', 'cluster_size=4k', 'cluster_size=2M,extended_l2=on', 'compat=0.10', 'backing_file=b.qcow2', 'preallocation=falloc']) {
      const theirs = qemuMeasure([...(opts ? ['-o', opts] : []), src]);
      const image = await openImage(src, { readOnly: true });
      try {
        const ours = await measureQcow2({ size: image.size, options: parseOptionList(opts), source: image });
        assert.equal(ours.required, theirs.required, `${path.basename(src)} -o ${opts}: required`);
        assert.equal(ours.fullyAllocated, theirs['fully-allocated'], `${path.basename(src)} -o ${opts}: fully-allocated`);
        assert.equal(ours.bitmaps, theirs.bitmaps, `${path.basename(src)} -o ${opts}: bitmaps`);
      } finally {
        await image.close();
      }
    }
  }
});
