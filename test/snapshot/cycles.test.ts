/**
 * Hundreds of snapshot create/delete cycles with writes in between: no cluster leaks, the
 * file never grows past the most clusters ever in use at once (freed clusters are reused),
 * a steady workload keeps the file at one size, and every snapshot still alive reads what
 * the disk held when it was taken (checked against an in-memory model).
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { Image } from '../../src/block/image';
import { createImage, openImage } from '../../src/formats/index';
import { Qcow2Image } from '../../src/formats/qcow2/image';
import { prng, randomBytes, tempDir } from '../helpers';
import { assertClean, KiB, MiB, qemuHash } from './fixture';
import { createHash } from 'node:crypto';

const dir = tempDir('img-snap-cycles-');
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function readAll(image: { size: number; read(o: number, b: Uint8Array): Promise<void> }): Promise<Buffer> {
  const b = Buffer.alloc(image.size);
  await image.read(0, b);
  return b;
}

/** One cycle's writes: a few random ranges, sometimes compressed clusters, sometimes zeroes. */
async function scribble(image: Image, model: Buffer, rand: () => number, cluster: number): Promise<void> {
  for (let k = 0; k < 3; k++) {
    const r = rand() % 10;
    const clusters = model.length / cluster;
    if (r < 2 && image.writeCompressed) {
      const off = (rand() % clusters) * cluster;
      const data = Buffer.alloc(cluster, rand() & 0xff);
      await image.writeCompressed(off, data);
      data.copy(model, off);
    } else if (r < 3) {
      const off = (rand() % clusters) * cluster;
      await image.writeZeroes(off, cluster);
      model.fill(0, off, off + cluster);
    } else {
      const off = (rand() % (model.length / 512)) * 512;
      const len = Math.min(model.length - off, (1 + (rand() % 64)) * 512);
      const data = randomBytes(rand, len);
      await image.write(off, data);
      data.copy(model, off);
    }
  }
}

/** Clusters of the file, and how many of them are in use (refcount > 0). */
async function usage(image: Image): Promise<{ file: number; used: number }> {
  const core = (image as Qcow2Image).core;
  const cs = core.g.clusterSize;
  const file = Math.ceil((await core.file.size()) / cs);
  let used = 0;
  for (let k = 0; k < file; k++) if ((await core.refcounts.get(k)) > 0) used++;
  return { file, used };
}

/** Clusters a step may hold briefly beyond what is in use before and after it. */
const SLACK = 8;

const CONFIGS: { name: string; options: Record<string, string>; cycles: number }[] = [
  { name: 'v3 64k clusters', options: {}, cycles: 300 },
  { name: 'v2 4k clusters', options: { compat: '0.10', cluster_size: '4k' }, cycles: 120 },
  { name: 'extended L2', options: { extended_l2: 'on', cluster_size: '32k' }, cycles: 120 },
];

for (const cfg of CONFIGS) {
  test(`${cfg.cycles} create/delete cycles leak nothing and do not grow the file: ${cfg.name}`, async () => {
    const file = path.join(dir, `cycles-${cfg.name.replace(/\W+/g, '-')}.qcow2`);
    const size = 4 * MiB;
    await createImage('qcow2', file, { size, options: cfg.options });
    const rand = prng(cfg.cycles);
    const model = Buffer.alloc(size);
    const alive: { name: string; hash: string }[] = [];
    let peak = 0;
    let image = await openImage(file, { readOnly: false });
    try {
      const cluster = image.clusterSize;
      // A first layer of data so snapshots share something.
      const seed = randomBytes(rand, size / 2);
      await image.write(0, seed);
      seed.copy(model, 0);
      /**
       * Clusters in use are counted after every step: the file may only grow past the most
       * ever in use at once by what a step holds briefly (a new table before the old is freed,
       * clusters a write frees only at the next flush).
       */
      const step = async (i: number, what: string) => {
        await image.flush();
        const u = await usage(image);
        peak = Math.max(peak, u.used);
        assert.ok(u.file <= peak + SLACK, `cycle ${i}, ${what}: the file has ${u.file} clusters, but at most ${peak} were ever in use at once`);
      };
      await step(-1, 'start');
      for (let i = 0; i < cfg.cycles; i++) {
        await scribble(image, model, rand, cluster);
        await step(i, 'writes');
        const name = `s${i}`;
        await image.createSnapshot!(name);
        alive.push({ name, hash: sha(model) });
        await step(i, `created ${name}`);
        await scribble(image, model, rand, cluster);
        await step(i, 'writes');
        // Keep up to three snapshots alive; delete the oldest, or a random one.
        if (alive.length > 3 || rand() % 4 === 0) {
          const victim = alive.splice(rand() % alive.length, 1)[0];
          await image.deleteSnapshot!(victim.name);
          await step(i, `deleted ${victim.name}`);
        }
        if (i % 7 === 3 && alive.length > 0) {
          // Now and then go back to a snapshot: the model follows.
          const back = alive[rand() % alive.length];
          await image.applySnapshot!(back.name);
          const view = await readAll(image);
          assert.equal(sha(view), back.hash, `cycle ${i}: applied ${back.name}`);
          view.copy(model);
          await step(i, `applied ${back.name}`);
        }
        if (i % 50 === 49) {
          await image.close();
          assertClean(file, `after ${i + 1} cycles`);
          image = await openImage(file, { readOnly: false });
        }
      }
      assert.equal(sha(await readAll(image)), sha(model), 'the active layer');
      for (const s of alive) assert.equal(sha(await readAll(await image.openSnapshot!(s.name))), s.hash, `snapshot ${s.name}`);
      for (const s of alive.splice(0)) await image.deleteSnapshot!(s.name);
    } finally {
      await image.close();
    }
    assertClean(file, 'at the end');
    assert.equal(qemuHash(file), sha(model));
    // With every snapshot gone, what they held is given back to the file system (punched or cut off).
    const allocated = fs.statSync(file).blocks * 512;
    assert.ok(allocated < size + 1 * MiB, `the file takes ${allocated} bytes on disk after deleting every snapshot`);
  });
}

test('a steady workload (rewrite, snapshot, drop the previous snapshot) keeps the file at one size', async () => {
  const file = path.join(dir, 'steady.qcow2');
  await createImage('qcow2', file, { size: 8 * MiB, options: {} });
  const rand = prng(7);
  const image = await openImage(file, { readOnly: false });
  const sizes: number[] = [];
  try {
    await image.write(0, randomBytes(rand, 8 * MiB));
    for (let i = 0; i < 300; i++) {
      await image.write(((i % 4) * 256) * KiB, randomBytes(rand, 256 * KiB));
      await image.createSnapshot!(`s${i}`);
      if (i > 0) await image.deleteSnapshot!(`s${i - 1}`);
      sizes.push(fs.statSync(file).size);
    }
    await image.deleteSnapshot!('s299');
  } finally {
    await image.close();
  }
  assertClean(file);
  // Allocation alternates between two layouts a cluster apart; what matters is that it never climbs.
  const settled = Math.max(...sizes.slice(10, 20));
  assert.ok(
    sizes.slice(20).every((s) => s <= settled),
    `the file grew after cycle 20: ${settled} -> ${Math.max(...sizes.slice(20))} bytes`,
  );
});
