/**
 * Crash safety of VDI writes: a writer is SIGKILLed at random moments. The format has no
 * atomic metadata update (cBlocksAllocated and the block map are separate writes, in qemu
 * too), so after a kill qemu-img check may find at most the allocated count too high, never
 * a shared or out-of-range entry; everything flushed reads back; check -r all leaves it clean.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openImage } from '../../../src/formats/index';
import { crashOps } from '../../crash/crash-ops';
import { img, prng, qemuImg, run, tempDir } from '../../helpers';

const SIZE = 24 << 20;
const SECTOR = 512;
const WRITER = path.join(__dirname, 'crash-writer.js');

function runAndKill(file: string, seed: number, afterMs: number): Promise<{ started: number; flushed: number }> {
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
      const last = (k: string) => Math.max(-1, ...out.split('\n').filter((l) => l.startsWith(`${k} `)).map((l) => Number(l.slice(2))));
      resolve({ started: last('s'), flushed: last('f') });
    });
  });
}

for (const layout of ['qemu', 'vbox']) {
  test(`SIGKILL while writing a VDI (${layout} layout) loses nothing flushed and breaks no entry`, async () => {
    const dir = tempDir('img-vdi-crash-');
    const file = path.join(dir, 'victim.vdi');
    const raw = path.join(dir, 'view.raw');
    const create = img('create', '-f', 'vdi', '-o', `layout=${layout}`, file, String(SIZE));
    assert.equal(create.status, 0, create.stderr);
    const rand = prng(layout === 'qemu' ? 0x7d1 : 0x7d2);
    let base = Buffer.alloc(SIZE);
    for (let round = 0; round < 6; round++) {
      const seed = rand();
      const o = await runAndKill(file, seed, 300 + (rand() % 900));
      const q = run('qemu-img', ['check', file]);
      const errors = q.stderr.split('\n').filter((l) => l.startsWith('ERROR'));
      for (const e of errors) assert.match(e, /allocated blocks mismatch/, `round ${round}: ${q.stderr}`);
      if (errors.length) assert.equal(img('check', '-r', 'all', file).status, 0);
      assert.equal(run('qemu-img', ['check', file]).status, 0, `round ${round}: clean after repair`);
      // Every sector an operation up to the last finished flush touched holds what it wrote.
      const want = Buffer.from(base);
      const known = new Uint8Array(SIZE / SECTOR).fill(1);
      let i = 0;
      for (const op of crashOps(seed, SIZE, 64 * 1024)) {
        if (i > o.started) break;
        if (op.kind === 'write' || op.kind === 'compressed') want.set(op.data!, op.offset);
        else if (op.kind === 'zero' || op.kind === 'discard') want.fill(0, op.offset, op.offset + op.length);
        if (op.kind !== 'flush') known.fill(i > o.flushed ? 0 : 1, op.offset / SECTOR, (op.offset + op.length) / SECTOR);
        i++;
      }
      qemuImg('convert', '-f', 'vdi', '-O', 'raw', file, raw);
      const got = fs.readFileSync(raw);
      for (let s = 0; s < known.length; s++) {
        const a = s * SECTOR;
        if (known[s] && got.compare(want, a, a + SECTOR, a, a + SECTOR) !== 0) assert.fail(`round ${round}: sector ${s} lost (started ${o.started}, flushed ${o.flushed})`);
      }
      base = got;
    }
    const image = await openImage(file, { format: 'vdi', readOnly: true });
    const report = await image.check!();
    await image.close();
    assert.equal(report.corruptions + report.leaks, 0, report.messages.join('\n'));
  });
}
