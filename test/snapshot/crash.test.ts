/**
 * Crash safety of snapshot create, delete and apply, and of emptying an image (commit): the
 * file is cut after each write the operation makes in turn — that write and everything
 * before it reached the file, nothing after it did (no later write, truncate or punch) —
 * for every position. After each cut:
 *  - qemu-img check finds nothing worse than leaked clusters and COPIED flags still clear
 *    on clusters the active layer alone now uses (qemu's own operations leave that window:
 *    data is safe, a write merely copies);
 *  - the active disk and every snapshot still listed read as before the operation (apply:
 *    wholly the old disk or wholly the snapshot's; create/delete: the snapshot is there or
 *    not, never half made);
 *  - qemu-img check -r all makes the image clean.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { Image } from '../../src/block/image';
import { openImage } from '../../src/formats/index';
import { HostFile } from '../../src/io/host-file';
import { qemuImg, tempDir } from '../helpers';
import { assertClean, MiB, mixedImage, qemuCheck, qemuHash, qemuIo, qemuSnapshots } from './fixture';

const dir = tempDir('img-snap-crash-');
/** Cut positions tried per operation. */
const MAX_CUTS = 16;

/** Cuts writes to one file after a budget: the write that exhausts it throws, as do all later ones. */
class Cut {
  static target = '';
  static budget = Infinity;
  static writes = 0;

  static install(): void {
    const proto = HostFile.prototype as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
    for (const name of ['write', 'truncate', 'punchHole', 'allocate']) {
      const orig = proto[name];
      proto[name] = async function (this: HostFile, ...args: unknown[]) {
        if (this.path === Cut.target) {
          if (Cut.writes >= Cut.budget) throw new Error('simulated power cut');
          Cut.writes++;
        }
        return orig.apply(this, args);
      };
    }
  }

  static arm(file: string, budget: number): void {
    Cut.target = file;
    Cut.budget = budget;
    Cut.writes = 0;
  }
}
Cut.install();

/** Runs `op` on `file` with writes cut after `budget`: whether it finished, and the writes that reached the file. */
async function runCut(file: string, budget: number, op: (image: Image) => Promise<unknown>): Promise<{ finished: boolean; writes: number }> {
  const image = await openImage(file, { readOnly: false, backingChain: false });
  Cut.arm(file, budget);
  let finished = false;
  let writes = 0;
  try {
    await op(image);
    await image.close();
    finished = true;
  } catch (err) {
    if (!(err instanceof Error && /simulated power cut/.test(err.message))) throw err;
    await image.close().catch(() => undefined);
  } finally {
    writes = Cut.writes;
    Cut.arm('', Infinity);
  }
  return { finished, writes };
}

interface Scenario {
  name: string;
  op: (image: Image) => Promise<unknown>;
  /** What each snapshot that may be listed must read, by name; and what the active disk may read. */
  snapshots: Map<string, string>;
  active: string[];
  /** Snapshots that must still be listed after any cut. */
  kept: string[];
}

function verify(file: string, sc: Scenario, at: string): void {
  const c = qemuCheck(file);
  const errors = c.messages.filter((m) => /^ERROR/.test(m));
  assert.ok(
    errors.every((m) => /OFLAG_COPIED data cluster: .* refcount=1$|OFLAG_COPIED L2 cluster: .* refcount=1$/.test(m)),
    `${at}: qemu-img check found more than leaks and missing COPIED flags:\n${c.messages.join('\n')}`,
  );
  const listed = qemuSnapshots(file).map((s) => s.name);
  for (const k of sc.kept) assert.ok(listed.includes(k), `${at}: snapshot ${k} is gone`);
  for (const name of listed) {
    assert.ok(sc.snapshots.has(name), `${at}: unexpected snapshot ${name}`);
    assert.equal(qemuHash(file, name), sc.snapshots.get(name), `${at}: snapshot ${name}`);
  }
  assert.ok(sc.active.includes(qemuHash(file)), `${at}: the active disk reads neither as before nor as after`);
  qemuCheck(file, 'all');
  assertClean(file, `${at}, after check -r all`);
}

async function crashEverywhere(base: string, sc: Scenario): Promise<void> {
  // A dry run counts the writes the operation makes.
  const dry = path.join(dir, `${path.basename(base)}.dry`);
  fs.copyFileSync(base, dry);
  const { writes: total } = await runCut(dry, Infinity, sc.op);
  verify(dry, sc, `${sc.name}, uninterrupted`);
  assert.ok(total > 1, `${sc.name}: only ${total} writes`);
  // Every position when there are few; an even spread of about MAX_CUTS (first and last included) otherwise.
  const stride = Math.max(1, Math.ceil(total / MAX_CUTS));
  for (let k = 0; k < total; k = k + stride < total || k === total - 1 ? k + stride : total - 1) {
    const copy = path.join(dir, `${path.basename(base)}.cut${k}`);
    fs.copyFileSync(base, copy);
    const { finished } = await runCut(copy, k, sc.op);
    assert.equal(finished, false, `${sc.name}: the operation finished with only ${k} of its ${total} writes`);
    verify(copy, sc, `${sc.name}, cut after ${k} of ${total} writes`);
    fs.rmSync(copy);
  }
}

describe('snapshot operations survive a cut after any write', () => {
  /** An image with two snapshots and an active layer that differs from both. */
  function threeStates(name: string, options = ''): { file: string; a: string; b: string; now: string } {
    const file = mixedImage(path.join(dir, name), options, 4 * MiB);
    const a = qemuHash(file);
    qemuImg('snapshot', '-c', 'a', file);
    qemuIo(file, ['write -P 0x81 0 200k', 'write -c -P 0x82 2M 64k', 'write -z 3M 64k']);
    const b = qemuHash(file);
    qemuImg('snapshot', '-c', 'b', file);
    qemuIo(file, ['write -P 0x83 128k 256k', 'discard 1M 128k']);
    return { file, a, b, now: qemuHash(file) };
  }

  for (const options of ['', 'compat=0.10,cluster_size=4k']) {
    const label = options || 'v3 64k';
    it(`create (${label})`, async () => {
      const s = threeStates(`create-${options.length}.qcow2`, options);
      await crashEverywhere(s.file, {
        name: 'create',
        op: (image) => image.createSnapshot!('c'),
        snapshots: new Map([
          ['a', s.a],
          ['b', s.b],
          ['c', s.now],
        ]),
        active: [s.now],
        kept: ['a', 'b'],
      });
    });

    it(`delete (${label})`, async () => {
      const s = threeStates(`delete-${options.length}.qcow2`, options);
      await crashEverywhere(s.file, {
        name: 'delete',
        op: (image) => image.deleteSnapshot!('a'),
        snapshots: new Map([
          ['a', s.a],
          ['b', s.b],
        ]),
        active: [s.now],
        kept: ['b'],
      });
    });

    it(`apply (${label})`, async () => {
      const s = threeStates(`apply-${options.length}.qcow2`, options);
      await crashEverywhere(s.file, {
        name: 'apply',
        op: (image) => image.applySnapshot!('a'),
        snapshots: new Map([
          ['a', s.a],
          ['b', s.b],
        ]),
        active: [s.now, s.a],
        kept: ['a', 'b'],
      });
    });
  }

  it('emptying an overlay (commit)', async () => {
    const base = mixedImage(path.join(dir, 'empty-base.qcow2'), '', 4 * MiB);
    const top = path.join(dir, 'empty-top.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', path.basename(base), '-F', 'qcow2', top);
    qemuIo(top, ['write -P 0x91 0 300k', 'write -z 2M 128k']);
    const before = qemuHash(top);
    qemuImg('snapshot', '-c', 'keep', top);
    await crashEverywhere(top, {
      name: 'make empty',
      op: (image) => image.makeEmpty!(),
      snapshots: new Map([['keep', before]]),
      active: [before, qemuHash(base)],
      kept: ['keep'],
    });
  });
});
