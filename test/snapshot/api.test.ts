/**
 * The library API for snapshots and chains (src/index.ts): snapshots.list/create/apply/delete,
 * openChain, overlay, rebase, commit — the same operations the CLI runs, checked by qemu-img.
 */
import * as assert from 'node:assert/strict';
import * as path from 'node:path';
import { test } from 'node:test';
import * as img from '../../src/index';
import { tempDir } from '../helpers';
import { assertClean, MiB, qemuHash, qemuSnapshots } from './fixture';

const dir = tempDir('img-snap-api-');

test('snapshots, overlays, rebase and commit through the library', async () => {
  const base = path.join(dir, 'base.qcow2');
  await img.create(base, { format: 'qcow2', size: 4 * MiB });
  {
    const disk = await img.open(base);
    await disk.write(0, new Uint8Array(MiB).fill(1));
    await disk.close();
  }

  // Internal snapshots.
  const s1 = await img.snapshots.create(base, 'first', { date: new Date(2024, 0, 2, 3, 4, 5) });
  assert.deepEqual([s1.id, s1.name, s1.diskSize, s1.icount], ['1', 'first', 4 * MiB, 0]);
  assert.equal(s1.dateSec, Math.floor(new Date(2024, 0, 2, 3, 4, 5).getTime() / 1000));
  const h1 = qemuHash(base);
  {
    const disk = await img.open(base);
    await disk.write(0, new Uint8Array(4096).fill(2));
    await disk.close();
  }
  await img.snapshots.create(base, 'second');
  assert.deepEqual((await img.snapshots.list(base)).map((s) => [s.id, s.name]), [
    ['1', 'first'],
    ['2', 'second'],
  ]);
  assert.deepEqual(qemuSnapshots(base).map((s) => s.name), ['first', 'second']);
  await img.snapshots.apply(base, { id: '1' });
  assert.equal(qemuHash(base), h1);
  await assert.rejects(img.snapshots.delete(base, '1'), (e: unknown) => e instanceof img.ImageError && e.code === 'NOT_FOUND'); // names only
  await img.snapshots.delete(base, { id: '2' });
  await img.snapshots.delete(base, 'first');
  assert.deepEqual(await img.snapshots.list(base), []);
  assertClean(base);
  await assert.rejects(img.snapshots.create(base, 'x'.repeat(256)), (e: unknown) => e instanceof img.ImageError && e.code === 'INVALID_ARGUMENT');

  // An overlay (size from the backing file), written, opened as a chain.
  const top = path.join(dir, 'top.qcow2');
  await img.overlay(top, { backingFile: 'base.qcow2', backingFormat: 'qcow2' });
  {
    const disk = await img.open(top);
    assert.equal(disk.size, 4 * MiB);
    await disk.write(2 * MiB, new Uint8Array(8192).fill(3));
    await disk.close();
  }
  const chain = await img.openChain(top, { readOnly: true });
  try {
    assert.deepEqual(
      chain.layers.map((l) => path.basename(l.filename)),
      ['top.qcow2', 'base.qcow2'],
    );
    const map = await img.map(top);
    assert.ok(map.some((e) => e.depth === 1 && e.data) && map.some((e) => e.depth === 0 && e.data));
  } finally {
    await chain.close();
  }
  const viewTop = qemuHash(top);

  // rebase onto nothing (flatten), then commit a new overlay into it.
  const flat = path.join(dir, 'flat.qcow2');
  await img.convert({ source: top, target: flat, targetFormat: 'qcow2' });
  await img.rebase({ file: top, backingFile: '' });
  assert.equal(qemuHash(top), viewTop);
  assert.equal((await img.info(top))[0].backingFilename, undefined);
  const work = path.join(dir, 'work.qcow2');
  await img.overlay(work, { backingFile: 'top.qcow2', backingFormat: 'qcow2' });
  {
    const disk = await img.open(work);
    await disk.write(MiB, new Uint8Array(4096).fill(4));
    await disk.close();
  }
  const viewWork = qemuHash(work);
  let last = 0;
  await img.commit({ file: work, onProgress: (done, total) => (last = done / total) });
  assert.equal(last, 1);
  assert.equal(qemuHash(top), viewWork, 'committed into the backing file');
  assert.equal(qemuHash(work), viewWork, 'the emptied overlay reads through');
  for (const f of [top, work]) assertClean(f);
  await img.rebase({ file: work, backingFile: 'flat.qcow2', backingFormat: 'qcow2' });
  assert.equal(qemuHash(work), viewWork);
  assertClean(work);
});
