import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { WriteGather } from '../../src/io/write-gather';
import { prng, randomBytes, tempDir } from '../helpers';

test('concurrent writes, adjacent, apart and out of order, land as a model file says', async () => {
  const file = path.join(tempDir(), 'gather.raw');
  fs.writeFileSync(file, Buffer.alloc(0));
  const fd = fs.openSync(file, 'r+');
  const g = new WriteGather(fd);
  const rand = prng(7);
  const model = Buffer.alloc(4 << 20);
  for (let round = 0; round < 20; round++) {
    // Non-overlapping pieces of a shuffled tiling, plus some far apart: all issued at once.
    const pieces: { offset: number; data: Buffer }[] = [];
    for (let at = (rand() % 64) * 4096; at < model.byteLength && pieces.length < 100; ) {
      const len = Math.min(model.byteLength - at, 1 + (rand() % 70000));
      pieces.push({ offset: at, data: randomBytes(rand, len) });
      at += len + (rand() % 4 === 0 ? rand() % 9000 : 0);
    }
    pieces.sort(() => (rand() % 2 ? 1 : -1));
    await Promise.all(pieces.map((p) => g.write(p.offset, p.data)));
    for (const p of pieces) p.data.copy(model, p.offset);
    const got = fs.readFileSync(file);
    assert.ok(got.equals(model.subarray(0, got.byteLength)), `round ${round}`);
  }
  fs.closeSync(fd);
});

test('concurrent overlapping writes reach the file in the order they were asked for', async () => {
  const file = path.join(tempDir(), 'order.raw');
  fs.writeFileSync(file, Buffer.alloc(0));
  const fd = fs.openSync(file, 'r+');
  const g = new WriteGather(fd);
  await Promise.all([g.write(4096, Buffer.alloc(8192, 1)), g.write(0, Buffer.alloc(4096, 2)), g.write(0, Buffer.alloc(6000, 3))]);
  const want = Buffer.concat([Buffer.alloc(6000, 3), Buffer.alloc(12288 - 6000, 1)]);
  assert.ok(fs.readFileSync(file).equals(want));
  fs.closeSync(fd);
});

test('a failing write rejects every write gathered with it', async () => {
  const file = path.join(tempDir(), 'ro.raw');
  fs.writeFileSync(file, Buffer.alloc(8192));
  const fd = fs.openSync(file, 'r');
  const g = new WriteGather(fd);
  const results = await Promise.allSettled([g.write(0, Buffer.alloc(4096, 1)), g.write(4096, Buffer.alloc(4096, 2)), g.write(100000, Buffer.alloc(10))]);
  for (const r of results) assert.equal(r.status, 'rejected');
  assert.ok(results.every((r) => r.status === 'rejected' && (r.reason as NodeJS.ErrnoException).code === 'EBADF'));
  fs.closeSync(fd);
});
