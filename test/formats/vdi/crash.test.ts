/**
 * Crash safety of VDI writes: a writer is SIGKILLed at random moments. The format has no
 * atomic metadata update (cBlocksAllocated and the block map are separate writes, in qemu
 * too), so after a kill qemu-img check may find at most the allocated count too high, never
 * a shared or out-of-range entry; everything flushed reads back; check -r all leaves it clean.
 */
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { openImage } from '../../../src/formats/index';
import { CRASH_CLUSTER } from '../../crash/crash-ops';
import { assertFlushedSurvived, runAndKill } from '../../crash/crash-run';
import { img, prng, qemuImg, run, tempDir } from '../../helpers';

const SIZE = 24 << 20;

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
      const o = await runAndKill('vdi', file, seed, 300 + (rand() % 900));
      const q = run('qemu-img', ['check', file]);
      const errors = q.stderr.split('\n').filter((l) => l.startsWith('ERROR'));
      for (const e of errors) assert.match(e, /allocated blocks mismatch/, `round ${round}: ${q.stderr}`);
      if (errors.length) assert.equal(img('check', '-r', 'all', file).status, 0);
      assert.equal(run('qemu-img', ['check', file]).status, 0, `round ${round}: clean after repair`);
      qemuImg('convert', '-f', 'vdi', '-O', 'raw', file, raw);
      const got = fs.readFileSync(raw);
      assertFlushedSurvived(got, base, seed, CRASH_CLUSTER, o, `round ${round}`);
      base = got;
    }
    const image = await openImage(file, { format: 'vdi', readOnly: true });
    const report = await image.check!();
    await image.close();
    assert.equal(report.corruptions + report.leaks, 0, report.messages.join('\n'));
  });
}
