/**
 * Property test: thousands of seeded random writes, write-zeroes, discards, compressed writes
 * and flushes, several at a time on disjoint byte ranges (often sharing clusters), on qcow2
 * images of several cluster sizes, with and without a backing file, with extended L2.
 * Every read is compared with an in-memory raw reference; qemu-img check and compare at the end.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Image } from '../../../src/block/image';
import { createImage, openImage } from '../../../src/formats/index';
import { prng, qemuImg, randomBytes, run, tempDir } from '../../helpers';
import { assertClean, makeRaw, MiB } from './fixtures';
import { discardRef } from './workload';

const dir = tempDir('img-qcow2-prop-');
const OPS = 4000;

interface Config {
  name: string;
  options: Record<string, string>;
  backing?: 'raw' | 'qcow2';
  size: number;
}

const configs: Config[] = [
  { name: '512-byte clusters, no backing', options: { cluster_size: '512' }, size: 2 * MiB },
  { name: '4k clusters over a raw backing file', options: { cluster_size: '4k' }, backing: 'raw', size: 3 * MiB },
  { name: 'extended L2, 64k clusters, over a qcow2 backing file', options: { extended_l2: 'on' }, backing: 'qcow2', size: 4 * MiB },
  { name: 'extended L2, 32k clusters, no backing, refcount_bits=2', options: { extended_l2: 'on', cluster_size: '32k', refcount_bits: '2' }, size: 4 * MiB },
  { name: 'v2, 8k clusters, over a qcow2 backing file', options: { compat: '0.10', cluster_size: '8k' }, backing: 'qcow2', size: 3 * MiB },
];

async function check(img: Image, ref: Buffer, off: number, len: number, what: string): Promise<void> {
  const b = Buffer.alloc(len);
  await img.read(off, b);
  if (!b.equals(ref.subarray(off, off + len))) {
    let i = 0;
    while (b[i] === ref[off + i]) i++;
    assert.fail(`${what}: read ${off}+${len} differs from the reference first at ${off + i} (got ${b[i]}, want ${ref[off + i]})`);
  }
}

configs.forEach((cfg, ci) => {
  test(`random operations match a raw reference: ${cfg.name}`, async () => {
    const rand = prng(0xc0ffee + ci);
    const file = path.join(dir, `p${ci}.qcow2`);
    let ref: Buffer = Buffer.alloc(cfg.size);
    const create = { size: cfg.size, options: cfg.options } as Parameters<typeof createImage>[2];
    if (cfg.backing) {
      const raw = path.join(dir, `b${ci}.raw`);
      ref = makeRaw(raw, cfg.size, ci + 7);
      let base = raw;
      if (cfg.backing === 'qcow2') {
        base = path.join(dir, `b${ci}.qcow2`);
        qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=16k', raw, base);
      }
      create.backingFile = base;
      create.backingFormat = cfg.backing;
    }
    await createImage('qcow2', file, create);
    let img = await openImage(file);
    const cs = img.clusterSize;
    const v2overBacking = cfg.options.compat === '0.10' && !!cfg.backing;
    const span = () => 1 + (rand() % (rand() % 4 === 0 ? 4 * cs + 9000 : Math.min(cs + 700, 20000)));
    let ops = 0;
    while (ops < OPS) {
      // A batch of operations on disjoint byte ranges, run concurrently.
      const taken: [number, number][] = [];
      const batch: Promise<void>[] = [];
      const width = 1 + (rand() % 6);
      for (let k = 0; k < width; k++, ops++) {
        const len = Math.min(span(), cfg.size);
        const off = rand() % (cfg.size - len + 1);
        if (taken.some(([a, b]) => off < b && a < off + len)) continue;
        taken.push([off, off + len]);
        const op = rand() % 20;
        if (op < 11) {
          const data = rand() % 4 === 0 ? Buffer.alloc(len, rand() & 0xff) : randomBytes(rand, len);
          data.copy(ref, off);
          batch.push(img.write(off, data));
        } else if (op < 14) {
          ref.fill(0, off, off + len);
          batch.push(img.writeZeroes(off, len, { mayUnmap: rand() % 2 === 0 }));
        } else if (op < 16) {
          if (!v2overBacking) discardRef(ref, cs, off, len);
          batch.push(img.discard(off, len));
        } else if (op < 17 && !cfg.options.data_file) {
          const c0 = Math.ceil(off / cs);
          const c1 = Math.floor((off + len) / cs);
          if (c1 > c0) {
            const data = Buffer.alloc((c1 - c0) * cs, 0x30 + (rand() % 10));
            randomBytes(rand, 64).copy(data, 100);
            data.copy(ref, c0 * cs);
            batch.push(img.writeCompressed!(c0 * cs, data));
          }
        } else batch.push(check(img, ref, off, len, `op ${ops}`));
      }
      await Promise.all(batch);
      if (rand() % 50 === 0) await img.flush();
      if (rand() % 400 === 0) {
        // Reopen: everything must have reached the file.
        await img.close();
        img = await openImage(file);
      }
    }
    await check(img, ref, 0, cfg.size, 'final full read');
    await img.close();
    assertClean(file);
    const refFile = path.join(dir, `ref${ci}.raw`);
    fs.writeFileSync(refFile, ref);
    const cmp = run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', file, refFile]);
    assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
  });
});

test('many requests in flight (writes, zeroes, discards, reads, flushes) stay consistent', async () => {
  const rand = prng(0xbeef);
  const file = path.join(dir, 'busy.qcow2');
  const size = 8 * MiB;
  await createImage('qcow2', file, { size, options: { cluster_size: '16k', extended_l2: 'on' } });
  const img = await openImage(file);
  const ref = Buffer.alloc(size);
  for (let round = 0; round < 40; round++) {
    // 64 requests at once on distinct 4 KiB slots; a flush in the middle of them.
    const slots = new Set<number>();
    while (slots.size < 64) slots.add(rand() % (size / 4096));
    const jobs: Promise<void>[] = [];
    for (const s of slots) {
      const off = s * 4096;
      const op = rand() % 10;
      if (op < 6) {
        const d = randomBytes(rand, 4096);
        d.copy(ref, off);
        jobs.push(img.write(off, d));
      } else if (op < 8) {
        ref.fill(0, off, off + 4096);
        jobs.push(img.writeZeroes(off, 4096, { mayUnmap: op === 7 }));
      } else jobs.push(check(img, ref, off, 4096, `round ${round}`));
      if (jobs.length === 32) jobs.push(img.flush());
    }
    // Whole clusters discarded while other requests run elsewhere.
    const c = rand() % (size / (16 * 1024));
    if (![...slots].some((s) => Math.floor((s * 4096) / (16 * 1024)) === c)) {
      ref.fill(0, c * 16 * 1024, (c + 1) * 16 * 1024);
      jobs.push(img.discard(c * 16 * 1024, 16 * 1024));
    }
    await Promise.all(jobs);
  }
  await check(img, ref, 0, size, 'final');
  await img.close();
  assertClean(file);
});
