import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { HostFile } from '../../src/io/host-file';
import { ImageError } from '../../src/block/errors';
import { tempDir } from '../helpers';

const MiB = 1 << 20;

test('extents: SEEK_DATA/SEEK_HOLE report data and holes of a sparse file', async () => {
  const file = path.join(tempDir(), 'sparse.raw');
  const f = await HostFile.open(file, { create: true });
  await f.truncate(8 * MiB);
  await f.write(2 * MiB, Buffer.alloc(MiB, 0xab));
  const ext = await f.extents(0, 8 * MiB);
  assert.deepEqual(ext, [
    { offset: 0, length: 2 * MiB, data: false },
    { offset: 2 * MiB, length: MiB, data: true },
    { offset: 3 * MiB, length: 5 * MiB, data: false },
  ]);
  await f.punchHole(2 * MiB, MiB);
  assert.deepEqual(await f.extents(0, 8 * MiB), [{ offset: 0, length: 8 * MiB, data: false }]);
  const back = Buffer.alloc(MiB, 1);
  await f.read(2 * MiB, back);
  assert.ok(back.every((b) => b === 0));
  await f.close();
});

test('read past end of file returns zeroes', async () => {
  const file = path.join(tempDir(), 'short.raw');
  fs.writeFileSync(file, Buffer.alloc(100, 7));
  const f = await HostFile.open(file, { readOnly: true });
  const buf = Buffer.alloc(300, 0xff);
  await f.read(0, buf);
  assert.ok(buf.subarray(0, 100).every((b) => b === 7));
  assert.ok(buf.subarray(100).every((b) => b === 0));
  await assert.rejects(f.write(0, buf), (e: unknown) => e instanceof ImageError && e.code === 'READ_ONLY');
  await f.close();
});

test('reads mixing page-cached and uncached bytes return the file as it is', async () => {
  const dir = tempDir();
  const src = path.join(dir, 'src.raw');
  const file = path.join(dir, 'direct.raw');
  const data = Buffer.alloc(32 * MiB);
  for (let i = 0; i < data.byteLength; i += 4) data.writeUInt32BE(i, i);
  fs.writeFileSync(src, data);
  // O_DIRECT writes leave the page cache without the file's pages: the first read cannot
  // take the no-wait path, the second finds only its start cached by the first
  // (and read-ahead).
  execFileSync('dd', [`if=${src}`, `of=${file}`, 'bs=1M', 'oflag=direct', 'status=none']);
  const f = await HostFile.open(file, { readOnly: true });
  const a = Buffer.alloc(MiB);
  await f.read(0, a);
  assert.ok(a.equals(data.subarray(0, MiB)));
  const b = Buffer.alloc(24 * MiB + 100);
  await f.read(MiB / 2, b);
  assert.ok(b.equals(data.subarray(MiB / 2, MiB / 2 + b.byteLength)));
  const tail = Buffer.alloc(MiB, 0xff);
  await f.read(32 * MiB - 1000, tail);
  assert.ok(tail.subarray(0, 1000).equals(data.subarray(32 * MiB - 1000)));
  assert.ok(tail.subarray(1000).every((x) => x === 0));
  await f.close();
});

test('a missing file is a NOT_FOUND error naming it', async () => {
  const file = path.join(tempDir(), 'nope.qcow2');
  await assert.rejects(HostFile.open(file), (e: unknown) => e instanceof ImageError && e.code === 'NOT_FOUND' && e.message.includes(file));
});
