/** Which filesystem img boot mounts and img mount --fs exports, on disks made with sfdisk and mkfs. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { chooseFilesystem, findFilesystem } from '../../src/guestfs/find-fs';
import { open } from '../../src/index';
import { run, tempDir } from '../helpers';

const MiB = 1 << 20;

/** A 40 MiB disk with `table` (an sfdisk script, or none) and mkfs run on partitions at the given offsets. */
function disk(dir: string, name: string, table: string | null, mkfs: [string[], number, number][]): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, '');
  fs.truncateSync(file, 40 * MiB);
  if (table) assert.equal(run('sfdisk', ['-q', file], table).status, 0);
  for (const [cmd, startMiB, sizeMiB] of mkfs) {
    const part = path.join(dir, 'part');
    fs.writeFileSync(part, '');
    fs.truncateSync(part, sizeMiB * MiB);
    assert.equal(run(cmd[0], [...cmd.slice(1), part]).status, 0);
    assert.equal(run('dd', [`if=${part}`, `of=${file}`, 'bs=1M', `seek=${startMiB}`, 'conv=notrunc', 'status=none']).status, 0);
  }
  return file;
}

async function choose(file: string, n?: number): Promise<string> {
  const dev = await open(file, { format: 'raw' });
  try {
    const c = await chooseFilesystem(dev, n);
    return `${c.partition ? `p${c.partition.number}` : 'disk'}:${c.fs?.type ?? 'none'}`;
  } finally {
    await dev.close();
  }
}

test('chooseFilesystem: -P N, the first known filesystem, the whole disk, the only partition', async () => {
  const dir = tempDir();
  const ext4 = ['mke2fs', '-q', '-t', 'ext4'];
  const whole = disk(dir, 'whole', null, [[ext4, 0, 40]]);
  assert.equal(await choose(whole), 'disk:ext4');
  const gpt = disk(dir, 'gpt', 'label: gpt\n1: start=1M, size=8M\n2: start=9M, size=16M\n3: start=25M\n', [[['mkswap', '-q'], 1, 8], [ext4, 9, 16]]);
  assert.equal(await choose(gpt), 'p2:ext4'); // swap is skipped
  assert.equal(await choose(gpt, 1), 'p1:swap');
  assert.equal(await choose(gpt, 3), 'p3:none');
  await assert.rejects(choose(gpt, 9), /^ImageError: the image has no partition 9 \(partitions: 1, 2, 3\)$/);
  await assert.rejects(choose(whole, 1), /no partition 1 \(no partition table\)/);
  const one = disk(dir, 'one', 'label: dos\n1: start=1M\n', []);
  assert.equal(await choose(one), 'p1:none');
  const two = disk(dir, 'two', 'label: dos\n1: start=1M, size=8M\n2: start=9M\n', []);
  await assert.rejects(choose(two), /no partition of the image \(mbr\) holds a filesystem img recognises: choose one with -P N/);
  const blank = disk(dir, 'blank', null, []);
  assert.equal(await choose(blank), 'disk:none');

  // img boot needs a type it can load a module for.
  const dev = await open(gpt, { format: 'raw' });
  assert.deepEqual(await findFilesystem(dev), { device: 'vda2', type: 'ext4' });
  await assert.rejects(findFilesystem(dev, 1), /partition 1 holds no filesystem img can mount/);
  await dev.close();
  const b = await open(blank, { format: 'raw' });
  await assert.rejects(findFilesystem(b), /the image holds no filesystem \(and no partition table\)/);
  await b.close();
});
