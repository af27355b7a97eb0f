/** Filesystem probing agrees with blkid on real mkfs output, at offset 0 and inside a partition. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { open } from '../../src/index';
import { probeFilesystem } from '../../src/guestfs/fs-probe';
import { prng, randomBytes, run, tempDir } from '../helpers';

const MiB = 1 << 20;

function blkid(file: string): Record<string, string> {
  const r = run('blkid', ['-p', '-o', 'export', file]);
  return Object.fromEntries(r.stdout.trim().split('\n').filter(Boolean).map((l) => l.split(/=(.*)/s).slice(0, 2)));
}

const cases: { name: string; size: number; mkfs: string[] }[] = [
  { name: 'ext2', size: 16, mkfs: ['mke2fs', '-q', '-t', 'ext2', '-L', 'two'] },
  { name: 'ext3', size: 16, mkfs: ['mke2fs', '-q', '-t', 'ext3', '-L', 'three'] },
  { name: 'ext4', size: 32, mkfs: ['mke2fs', '-q', '-t', 'ext4', '-L', 'root'] },
  { name: 'fat16', size: 32, mkfs: ['mkfs.vfat', '-F', '16', '-n', 'BOOT'] },
  { name: 'fat32', size: 64, mkfs: ['mkfs.vfat', '-F', '32'] },
  { name: 'xfs', size: 320, mkfs: ['mkfs.xfs', '-q', '-L', 'data'] },
  { name: 'btrfs', size: 128, mkfs: ['mkfs.btrfs', '-q', '-L', 'pool'] },
  { name: 'swap', size: 8, mkfs: ['mkswap', '-q'] },
];

for (const c of cases) {
  test(`probe ${c.name} like blkid`, { skip: run('sh', ['-c', `command -v ${c.mkfs[0]}`]).status !== 0 && `no ${c.mkfs[0]}` }, async () => {
    const dir = tempDir();
    const file = path.join(dir, `${c.name}.raw`);
    fs.writeFileSync(file, '');
    fs.truncateSync(file, c.size * MiB);
    const r = run(c.mkfs[0], [...c.mkfs.slice(1), file]);
    assert.equal(r.status, 0, r.stderr);
    const want = blkid(file);
    const dev = await open(file, { format: 'raw' });
    const got = await probeFilesystem(dev);
    await dev.close();
    assert.ok(got, 'recognised');
    assert.equal(got.type, want.TYPE);
    assert.equal(got.label, want.LABEL);
    assert.equal(got.uuid?.toLowerCase(), want.UUID?.toLowerCase());

    // The same filesystem 1 MiB into a bigger disk.
    const disk = path.join(dir, 'disk.raw');
    fs.writeFileSync(disk, '');
    fs.truncateSync(disk, (c.size + 2) * MiB);
    run('dd', [`if=${file}`, `of=${disk}`, 'bs=1M', 'seek=1', 'conv=notrunc,sparse', 'status=none']);
    const dev2 = await open(disk, { format: 'raw' });
    assert.deepEqual(await probeFilesystem(dev2, MiB), got);
    await dev2.close();
  });
}

test('probe: nothing recognised on zeroes, pseudo-random bytes and a device too small to hold a superblock', async () => {
  const dir = tempDir();
  const zero = path.join(dir, 'zero.raw');
  fs.writeFileSync(zero, Buffer.alloc(MiB));
  const dev = await open(zero, { format: 'raw' });
  assert.equal(await probeFilesystem(dev), null);
  assert.equal(await probeFilesystem(dev, MiB - 1024), null);
  await dev.close();
  const noise = path.join(dir, 'noise.raw');
  fs.writeFileSync(noise, randomBytes(prng(3), MiB));
  const dev2 = await open(noise, { format: 'raw' });
  assert.equal(await probeFilesystem(dev2), null);
  await dev2.close();
});
