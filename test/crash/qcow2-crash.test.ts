/**
 * Crash safety (DESIGN "No data lost"): a process writing to a qcow2 image is SIGKILLed at
 * random moments. After every kill qemu-img check must find no corruption (leaks are allowed),
 * everything flushed before the kill must read back, and `check -r leaks` must leave the
 * image clean.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openImage } from '../../src/formats/index';
import { crashOps } from './crash-ops';
import { prng, qemuCheck, qemuImg, tempDir } from '../helpers';

const SIZE = 32 << 20;
const SECTOR = 512;
const WRITER = path.join(__dirname, 'crash-writer.js');

interface Outcome {
  started: number; // highest operation index that began
  flushed: number; // index of the last flush that finished, -1 if none
}

function runAndKill(file: string, seed: number, afterMs: number): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [WRITER, file, String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), afterMs);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (signal !== 'SIGKILL') return reject(new Error(`writer exited on its own (code ${code}): ${err}`));
      let started = -1;
      let flushed = -1;
      for (const line of out.split('\n')) {
        const [k, v] = line.split(' ');
        if (k === 's') started = Number(v);
        if (k === 'f') flushed = Number(v);
      }
      resolve({ started, flushed });
    });
  });
}

/** What the disk must hold: bytes where known, and which sectors may hold either version. */
function expected(base: Buffer, seed: number, clusterSize: number, o: Outcome): { data: Buffer; known: Uint8Array } {
  const data = Buffer.from(base);
  const known = new Uint8Array(SIZE / SECTOR).fill(1);
  let i = 0;
  for (const op of crashOps(seed, SIZE, clusterSize)) {
    if (i > o.started) break;
    const uncertain = i > o.flushed;
    const s0 = op.offset / SECTOR;
    const s1 = (op.offset + op.length) / SECTOR;
    if (op.kind === 'write' || op.kind === 'compressed') data.set(op.data!, op.offset);
    else if (op.kind === 'zero') data.fill(0, op.offset, op.offset + op.length);
    // A discard may leave the old bytes or zeroes; an unflushed operation may or may not have landed.
    if (op.kind === 'discard' || (uncertain && op.kind !== 'flush')) known.fill(0, s0, s1);
    else if (op.kind !== 'flush') known.fill(1, s0, s1);
    i++;
  }
  return { data, known };
}

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
  const { data, known } = expected(base, seed, clusterSize, o);
  for (let s = 0; s < known.length; s++) {
    if (!known[s]) continue;
    const a = s * SECTOR;
    if (got.compare(data, a, a + SECTOR, a, a + SECTOR) !== 0) {
      assert.fail(`seed ${seed}: sector ${s} differs from what was flushed (started ${o.started}, flushed ${o.flushed})`);
    }
  }
  return got;
}

for (const cfg of [
  { name: 'v3 64k', opts: 'compat=1.1,cluster_size=65536' },
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
      const o = await runAndKill(file, seed, 300 + (rand() % 900));
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
    const o = await runAndKill(file, seed, 300 + (rand() % 900));
    const image = await openImage(file, { format: 'qcow2' }); // dirty: repaired on open
    await image.close();
    const { status, report } = qemuCheck(file);
    assert.equal(status, 0, `round ${round}: ${JSON.stringify(report)}`);
    base = verifyData(file, base, seed, 65536, o);
  }
});
