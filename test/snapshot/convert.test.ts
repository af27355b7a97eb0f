/**
 * convert with internal snapshots and backing files: -l in every form qemu-img takes, and
 * -B: the target reads like the source whatever the given backing file holds, and only what
 * differs from it is written (what a layer of the source's own chain holds is not even read).
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { before, describe, it } from 'node:test';
import { convert } from '../../src/index';
import { qemuImg, tempDir } from '../helpers';
import { both, imgIn, qemuIn } from '../cli/run';
import { assertClean, KiB, MiB, mixedImage, qemuHash, qemuIo } from './fixture';

const dir = tempDir('img-snap-convert-');

function imgOk(...args: string[]): void {
  const r = imgIn(dir, ...args);
  assert.equal(r.status, 0, `img ${args.join(' ')}: ${r.stderr}`);
}

interface MapEntry {
  start: number;
  length: number;
  depth: number;
  data: boolean;
  zero: boolean;
  present: boolean;
}
const qemuMap = (file: string): MapEntry[] => JSON.parse(qemuImg('map', '--output=json', file));
/** The ranges the image holds itself (depth 0, data or zero), as [start, length, data]. */
const own = (file: string) => qemuMap(file).filter((e) => e.depth === 0 && e.present).map((e) => [e.start, e.length, e.data]);

describe('convert -l', () => {
  before(() => {
    mixedImage(path.join(dir, 'snaps.qcow2'));
    qemuImg('snapshot', '-c', 'first', `${dir}/snaps.qcow2`);
    qemuIo(`${dir}/snaps.qcow2`, ['write -P 0x44 0 1M']);
    qemuImg('snapshot', '-c', '1', `${dir}/snaps.qcow2`); // a name that is also an id
    qemuIo(`${dir}/snaps.qcow2`, ['write -P 0x45 0 64k']);
  });

  for (const spec of ['first', '1', '2', 'snapshot.id=1', 'snapshot.name=1', 'snapshot.id=2,snapshot.name=1', 'snapshot.name=first,snapshot.id=1']) {
    it(`-l ${spec} reads what qemu-img convert -l reads`, () => {
      const out = `l-${spec.replace(/\W/g, '_')}`;
      const r = both(dir, 'convert', '-l', spec, '-O', 'raw', 'snaps.qcow2', `${out}.raw`);
      assert.equal(r.qemu.status, 0, r.qemu.stderr);
      assert.equal(r.img.status, 0, r.img.stderr);
      const r2 = imgIn(dir, 'convert', '-l', spec, '-O', 'qcow2', 'snaps.qcow2', `${out}.qcow2`);
      assert.equal(r2.status, 0, r2.stderr);
      assert.equal(qemuHash(`${dir}/${out}.qcow2`), qemuHash(`${dir}/snaps.qcow2`, spec));
      assertClean(`${dir}/${out}.qcow2`);
    });
  }

  it('a selector that matches nothing fails as qemu-img fails, leaving no target', () => {
    for (const spec of ['nope', 'snapshot.id=1,snapshot.name=nope', 'snapshot.id=9']) {
      const r = both(dir, 'convert', '-l', spec, '-O', 'raw', 'snaps.qcow2', 'none.raw');
      assert.equal(r.img.status, 1, spec);
      assert.notEqual(r.qemu.status, 0, spec);
      assert.match(r.img.stderr, /^img: .*snapshot .*not found\n$/, spec);
      fs.rmSync(`${dir}/none.raw`, { force: true }); // qemu-img leaves its target behind
    }
    const r = imgIn(dir, 'convert', '-l', 'snapshot.tag=x', '-O', 'raw', 'snaps.qcow2', 'none.raw');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /Failed in parsing snapshot param 'snapshot\.tag=x'/);
    assert.ok(!fs.existsSync(`${dir}/none.raw`));
  });
});

describe('convert -B', () => {
  before(() => {
    qemuImg('create', '-q', '-f', 'qcow2', `${dir}/base.qcow2`, '4M');
    qemuIo(`${dir}/base.qcow2`, ['write -P 9 0 4M']);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', `${dir}/top.qcow2`);
    // Zeroes written as data over the base's data, a zero cluster, new data.
    qemuIo(`${dir}/top.qcow2`, ['write -P 0 1M 256k', 'write -z 2M 64k', 'write -P 3 3M 64k']);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'top.qcow2', '-F', 'qcow2', `${dir}/top2.qcow2`);
    qemuIo(`${dir}/top2.qcow2`, ['write -P 4 3584k 64k']);
  });

  it("with the source's own backing file: the top layer only, as qemu-img writes it", () => {
    const r = both(dir, 'convert', '-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2', 'top.qcow2', 'own.qcow2');
    assert.equal(r.qemu.status, 0, r.qemu.stderr);
    assert.equal(r.img.status, 0, r.img.stderr);
    assert.equal(qemuHash(`${dir}/own.qcow2`), qemuHash(`${dir}/top.qcow2`), 'zeroes written over the backing data read as zeroes');
    assertClean(`${dir}/own.qcow2`);
    // img and qemu-img agree on what the target holds itself (the same command wrote both).
    const q = path.join(dir, 'own-q.qcow2');
    qemuImg('convert', '-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2', `${dir}/top.qcow2`, q);
    assert.deepEqual(own(`${dir}/own.qcow2`), own(q));
  });

  it('with a layer further down the chain: the layers above it are copied', () => {
    imgOk('convert', '-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2', 'top2.qcow2', 'deep.qcow2');
    assert.equal(qemuHash(`${dir}/deep.qcow2`), qemuHash(`${dir}/top2.qcow2`));
    assertClean(`${dir}/deep.qcow2`);
    const bytes = own(`${dir}/deep.qcow2`).reduce((n, e) => n + (e[1] as number), 0);
    assert.ok(bytes <= 512 * KiB, `${bytes} bytes copied`);
  });

  it('with an unrelated backing file: compared with it, only what differs is written', () => {
    qemuImg('create', '-q', '-f', 'qcow2', `${dir}/other.qcow2`, '4M');
    qemuIo(`${dir}/other.qcow2`, ['write -P 9 0 2M', 'write -P 5 2M 1M']);
    imgOk('convert', '-O', 'qcow2', '-B', 'other.qcow2', '-F', 'qcow2', 'top.qcow2', 'diff.qcow2');
    assert.equal(qemuHash(`${dir}/diff.qcow2`), qemuHash(`${dir}/top.qcow2`));
    assertClean(`${dir}/diff.qcow2`);
    // top reads 9 but for zeroes at 1M (256k) and 2M (64k) and 3s at 3M (64k); other reads 9 up to 2M, 5 up to 3M, then zeroes.
    assert.deepEqual(own(`${dir}/diff.qcow2`), [
      [1 * MiB, 256 * KiB, false],
      [2 * MiB, 64 * KiB, false],
      [2 * MiB + 64 * KiB, 2 * MiB - 64 * KiB, true],
    ]);
    // A raw backing file and a source without any backing file.
    qemuImg('convert', '-O', 'raw', `${dir}/other.qcow2`, `${dir}/other.raw`);
    mixedImage(`${dir}/standalone.qcow2`, '', 4 * MiB);
    const combos: [string, string, string, string[]][] = [
      ['top.qcow2', 'other.raw', 'raw', []],
      ['top.qcow2', 'other.raw', 'raw', ['-c']],
      ['standalone.qcow2', 'other.raw', 'raw', ['-o', 'cluster_size=4k']],
      ['standalone.qcow2', 'base.qcow2', 'qcow2', ['-S', '0']],
      ['standalone.qcow2', 'base.qcow2', 'qcow2', ['-c', '-o', 'extended_l2=on']],
    ];
    for (const [src, b, f, opts] of combos) {
      imgOk('convert', ...opts, '-O', 'qcow2', '-B', b, '-F', f, src, 'x.qcow2');
      assert.equal(qemuHash(`${dir}/x.qcow2`), qemuHash(`${dir}/${src}`), `${src} over ${b} ${opts.join(' ')}`);
      assertClean(`${dir}/x.qcow2`);
    }
  });

  it('-n -B into an overlay made beforehand', () => {
    // Over the source's own backing file: what qemu-img writes.
    for (const t of ['fresh.qcow2', 'fresh-q.qcow2']) qemuImg('create', '-q', '-f', 'qcow2', '-b', 'top.qcow2', '-F', 'qcow2', `${dir}/${t}`);
    imgOk('convert', '-n', '-O', 'qcow2', '-B', 'top.qcow2', '-F', 'qcow2', 'top2.qcow2', 'fresh.qcow2');
    assert.equal(qemuIn(dir, 'convert', '-n', '-O', 'qcow2', '-B', 'top.qcow2', '-F', 'qcow2', 'top2.qcow2', 'fresh-q.qcow2').status, 0);
    assert.match(qemuImg('compare', `${dir}/fresh.qcow2`, `${dir}/fresh-q.qcow2`), /identical/);
    assert.deepEqual(own(`${dir}/fresh.qcow2`), own(`${dir}/fresh-q.qcow2`));
    // Over a layer further down: the layers above it are written, so the target reads as the source.
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', `${dir}/deeper.qcow2`);
    imgOk('convert', '-n', '-O', 'qcow2', '-B', 'base.qcow2', '-F', 'qcow2', 'top2.qcow2', 'deeper.qcow2');
    assert.equal(qemuHash(`${dir}/deeper.qcow2`), qemuHash(`${dir}/top2.qcow2`));
    assertClean(`${dir}/deeper.qcow2`);
    // -n without -B writes everything: the target's own data and backing file stand for nothing.
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', `${dir}/existing.qcow2`);
    qemuIo(`${dir}/existing.qcow2`, ['write -P 0x66 0 4M']);
    imgOk('convert', '-n', '-O', 'qcow2', 'top2.qcow2', 'existing.qcow2');
    assert.equal(qemuHash(`${dir}/existing.qcow2`), qemuHash(`${dir}/top2.qcow2`));
    assertClean(`${dir}/existing.qcow2`);
  });

  it('a missing -B file: the error names it as written and as resolved; no target is left', async () => {
    const r = imgIn(dir, 'convert', '-O', 'qcow2', '-B', 'nothere.qcow2', '-F', 'qcow2', 'top.qcow2', 'sub-less.qcow2');
    assert.equal(r.status, 1);
    assert.equal(r.stderr, "img: sub-less.qcow2: backing file 'nothere.qcow2' (resolved to nothere.qcow2) does not exist\n");
    assert.ok(!fs.existsSync(`${dir}/sub-less.qcow2`));
    // The library names the backing file relative to the target too.
    fs.mkdirSync(`${dir}/out`, { recursive: true });
    await convert({ source: `${dir}/top.qcow2`, target: `${dir}/out/lib.qcow2`, targetFormat: 'qcow2', backingFile: '../base.qcow2', backingFormat: 'qcow2' });
    assert.equal(qemuHash(`${dir}/out/lib.qcow2`), qemuHash(`${dir}/top.qcow2`));
    assert.equal(JSON.parse(qemuImg('info', '--output=json', `${dir}/out/lib.qcow2`))['backing-filename'], '../base.qcow2');
  });
});
