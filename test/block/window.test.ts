/** WindowDevice: a partition-sized view; requests stay inside it and land at the right place below. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { WindowDevice } from '../../src/block/window';
import { open } from '../../src/index';
import { qemuImg, tempDir } from '../helpers';

test('window: reads, writes, zeroes and block status are offset; everything outside is refused', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'd.qcow2');
  qemuImg('create', '-f', 'qcow2', file, '8M');
  const dev = await open(file);
  const w = new WindowDevice(dev, 1 << 20, 2 << 20);
  await w.write(0, Buffer.alloc(4096, 0xab));
  await w.writeZeroes(4096, 4096);
  const back = Buffer.alloc(4096);
  await dev.read(1 << 20, back);
  assert.ok(back.every((b) => b === 0xab));
  const ext = await w.blockStatus(0, 2 << 20);
  assert.equal(ext[0].offset, 0);
  assert.equal(ext.at(-1)!.offset + ext.at(-1)!.length, 2 << 20);
  await assert.rejects(w.read((2 << 20) - 10, Buffer.alloc(20)), /outside the device/);
  await assert.rejects(w.write(-1, Buffer.alloc(1)), /outside the device/);
  await assert.rejects(w.discard(0, 3 << 20), /outside the device/);
  assert.throws(() => new WindowDevice(dev, 7 << 20, 2 << 20), /outside the device/);
  const ro = new WindowDevice(dev, 0, 4096, { readOnly: true });
  await assert.rejects(ro.write(0, Buffer.alloc(1)), /read-only/);
  await w.close(); // leaves dev open
  await dev.read(0, Buffer.alloc(512));
  await dev.close();
  assert.equal(qemuImg('check', file).includes('No errors'), true);
  assert.ok(fs.statSync(file).size > 0);
});
