/**
 * Crash safety (DESIGN "No data lost"): a process writing to a qcow2 image is SIGKILLed at
 * random moments. After every kill qemu-img check must find no corruption (leaks are allowed),
 * everything flushed before the kill must read back, and `check -r leaks` must leave the
 * image clean.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openImage } from '../../src/formats/index';
import { assertFlushedSurvived, Outcome, runAndKill } from './crash-run';
import { prng, qemuCheck, qemuImg, tempDir } from '../helpers';

const SIZE = 32 << 20;

/** The disk as qemu-img reads it. */
function contents(file: string): Buffer {
  const raw = `${file}.raw`;
  qemuImg('convert', '-f', 'qcow2', '-O', 'raw', file, raw);
  const got = fs.readFileSync(raw);
  fs.rmSync(raw);
  return got;
}

/** Checks the disk against the model started from `base`; returns the disk, the next round's base. */
function verifyData(file: string, base: Buffer, seed: number, clusterSize: number, o: Outcome): Buffer {
  const got = contents(file);
  assertFlushedSurvived(got, base, seed, clusterSize, o, file);
  return got;
}

for (const cfg of [
  { name: 'v3 64k', opts: 'compat=1.1,cluster_size=65536' },
  // Two-table caches: L2 tables and refcount blocks are evicted (written back) all the time.
  { name: 'v3 4k, tiny caches', opts: 'compat=1.1,cluster_size=4096', open: { l2CacheSize: 8192, refcountCacheSize: 8192 } },
  { name: 'v3 4k refcount_bits=2', opts: 'compat=1.1,cluster_size=4096,refcount_bits=2' },
  { name: 'v3 64k extended_l2 zstd', opts: 'compat=1.1,cluster_size=65536,extended_l2=on,compression_type=zstd' },
  { name: 'v2 64k', opts: 'compat=0.10' },
]) {
  test(`SIGKILL while writing leaves no corruption and loses nothing flushed (${cfg.name})`, async () => {
    const dir = tempDir();
    const rand = prng(0xc0ffee ^ cfg.opts.length);
    const file = path.join(dir, 'victim.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-o', cfg.opts, file, String(SIZE));
    const clusterSize = Number(/cluster_size=(\d+)/.exec(cfg.opts)?.[1] ?? 65536);
    // Every round starts from the previous round's image: crash damage must not accumulate.
    let base: Buffer = Buffer.alloc(SIZE);
    for (let round = 0; round < 8; round++) {
      const seed = rand();
      const o = await runAndKill('qcow2', file, seed, 300 + (rand() % 900), cfg.open);
      const { status, report } = qemuCheck(file);
      assert.ok(status === 0 || status === 3, `round ${round}: qemu-img check exit ${status}: ${JSON.stringify(report)}`);
      assert.equal(report['corruptions'] ?? 0, 0, `round ${round}: corruptions`);
      base = verifyData(file, base, seed, clusterSize, o);
    }
    const image = await openImage(file, { format: 'qcow2' });
    const repaired = await image.check!({ repair: 'leaks' });
    await image.close();
    assert.equal(repaired.corruptions, 0);
    assert.equal(qemuCheck(file).status, 0, 'clean after img check -r leaks');
  });
}

test('SIGKILL with lazy_refcounts: reopening for writing repairs the refcounts', async () => {
  const dir = tempDir();
  const file = path.join(dir, 'lazy.qcow2');
  qemuImg('create', '-q', '-f', 'qcow2', '-o', 'lazy_refcounts=on', file, String(SIZE));
  const rand = prng(0x1a2b);
  let base: Buffer = Buffer.alloc(SIZE);
  for (let round = 0; round < 4; round++) {
    const seed = rand();
    const o = await runAndKill('qcow2', file, seed, 300 + (rand() % 900));
    const image = await openImage(file, { format: 'qcow2' }); // dirty: repaired on open
    await image.close();
    const { status, report } = qemuCheck(file);
    assert.equal(status, 0, `round ${round}: ${JSON.stringify(report)}`);
    base = verifyData(file, base, seed, 65536, o);
  }
});
