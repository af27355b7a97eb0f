/** The library API: the calls the README shows, on real files, checked by qemu-img. */
import * as assert from 'node:assert/strict';
import { test } from 'node:test';
import * as img from '../src/index';
import { qemuCheck, qemuImg, sha256File, tempDir } from './helpers';

test('create, open, write, info, check, convert, compare, map through the library API', async () => {
  const dir = tempDir();
  await img.create(`${dir}/disk.qcow2`, { format: 'qcow2', size: 8 << 20, options: { compression_type: 'zstd' } });
  const disk = await img.open(`${dir}/disk.qcow2`);
  const hello = new TextEncoder().encode('hello, disk');
  await disk.write(1 << 20, hello);
  const back = new Uint8Array(hello.length);
  await disk.read(1 << 20, back);
  assert.deepEqual(back, hello);
  await disk.close();
  assert.equal(qemuCheck(`${dir}/disk.qcow2`).status, 0);

  const [info] = await img.info(`${dir}/disk.qcow2`);
  assert.equal(info.format, 'qcow2');
  assert.equal(info.virtualSize, 8 << 20);
  assert.equal((await img.check(`${dir}/disk.qcow2`)).corruptions, 0);

  await img.create(`${dir}/overlay.qcow2`, { format: 'qcow2', backingFile: 'disk.qcow2', backingFormat: 'qcow2' });
  const chain = await img.info(`${dir}/overlay.qcow2`, { backingChain: true });
  assert.deepEqual(chain.map((i) => i.virtualSize), [8 << 20, 8 << 20]);

  await img.convert({ source: `${dir}/overlay.qcow2`, target: `${dir}/disk.raw`, targetFormat: 'raw' });
  qemuImg('convert', '-O', 'raw', `${dir}/disk.qcow2`, `${dir}/ref.raw`);
  assert.equal(sha256File(`${dir}/disk.raw`), sha256File(`${dir}/ref.raw`));
  assert.deepEqual(await img.compare(`${dir}/disk.qcow2`, `${dir}/disk.raw`), { equal: true, sizeMismatch: false });

  const map = await img.map(`${dir}/disk.qcow2`);
  assert.deepEqual(map.filter((e) => e.data).map((e) => [e.start, e.length]), [[1 << 20, 65536]]);

  await assert.rejects(img.open(`${dir}/missing.qcow2`), (err: unknown) => err instanceof img.ImageError && err.code === 'NOT_FOUND');
});
