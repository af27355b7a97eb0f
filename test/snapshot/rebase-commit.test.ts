/**
 * img rebase and img commit against qemu-img: each runs on a copy of a chain while qemu-img
 * runs on another copy; qemu-img compare must find every image of the two chains equal,
 * qemu-img check must find every qcow2 clean, and the image must read as before.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { before, describe, it } from 'node:test';
import { qemuImg, run, tempDir } from '../helpers';
import { imgIn, qemuIn } from '../cli/run';
import { assertClean, qemuHash, qemuIo } from './fixture';

const dir = tempDir('img-rebase-commit-');
const LAYERS = ['base.raw', 'l1.qcow2', 'l2.qcow2', 'l3.qcow2', 'top.qcow2', 'other.qcow2', 'other-short.raw', 'v2top.qcow2', 'xtop.qcow2'];

/** A chain base.raw <- l1 (compressed data) <- l2 (4k clusters, shorter) <- l3 (longer) <- top, plus unrelated images. */
function makeChain(d: string): void {
  fs.mkdirSync(d, { recursive: true });
  qemuImg('create', '-q', '-f', 'raw', `${d}/base.raw`, '8M');
  qemuIo(`${d}/base.raw`, ['write -P 0x10 0 2M', 'write -P 0x11 5M 1M'], 'raw');
  qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.raw', '-F', 'raw', `${d}/l1.qcow2`);
  qemuIo(`${d}/l1.qcow2`, ['write -c -P 0x21 1M 512k', 'write -z 5M 256k', 'write -P 0x22 7M 64k']);
  qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'l1.qcow2', '-F', 'qcow2', `${d}/l2.qcow2`, '6M');
  qemuIo(`${d}/l2.qcow2`, ['write -P 0x31 0 12k', 'write -P 0x32 3M 100k', 'write -z 1M 64k']);
  qemuImg('create', '-q', '-f', 'qcow2', '-b', 'l2.qcow2', '-F', 'qcow2', `${d}/l3.qcow2`, '10M');
  qemuIo(`${d}/l3.qcow2`, ['write -P 0x41 2M 64k', 'write -P 0x42 9M 64k', 'discard 3M 64k']);
  qemuImg('create', '-q', '-f', 'qcow2', '-b', 'l3.qcow2', '-F', 'qcow2', `${d}/top.qcow2`);
  qemuIo(`${d}/top.qcow2`, ['write -P 0x51 100k 300k', 'write -z 5M 64k', 'write -P 0x52 6M 32k']);
  // Unrelated images to rebase onto: partly equal to the chain, partly not.
  qemuImg('create', '-q', '-f', 'qcow2', `${d}/other.qcow2`, '10M');
  qemuIo(`${d}/other.qcow2`, ['write -P 0x10 0 1M', 'write -P 0x77 4M 2M']);
  qemuImg('create', '-q', '-f', 'raw', `${d}/other-short.raw`, '3M');
  qemuIo(`${d}/other-short.raw`, ['write -P 0x10 0 3M'], 'raw');
  // A v2 top and an extended-L2 top over l3 as well.
  qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10,cluster_size=8k', '-b', 'l3.qcow2', '-F', 'qcow2', `${d}/v2top.qcow2`);
  qemuIo(`${d}/v2top.qcow2`, ['write -P 0x61 1M 20k', 'write -P 0x62 8M 8k']);
  qemuImg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', '-b', 'l3.qcow2', '-F', 'qcow2', `${d}/xtop.qcow2`);
  qemuIo(`${d}/xtop.qcow2`, ['write -P 0x71 1M 6k', 'write -P 0x72 9M 2k']);
}

/** Two copies of the pristine chain, for qemu-img (q) and for img (m). */
function twoCopies(pristine: string, name: string): { q: string; m: string } {
  const q = path.join(dir, `${name}-qemu`);
  const m = path.join(dir, `${name}-img`);
  for (const d of [q, m]) {
    fs.mkdirSync(d);
    for (const l of LAYERS) fs.copyFileSync(`${pristine}/${l}`, `${d}/${l}`);
  }
  return { q, m };
}

function assertSameChains(q: string, m: string, what: string): void {
  for (const l of LAYERS) {
    const fmt = l.endsWith('.raw') ? 'raw' : 'qcow2';
    const r = run('qemu-img', ['compare', '-f', fmt, '-F', fmt, `${q}/${l}`, `${m}/${l}`]);
    assert.equal(r.status, 0, `${what}: ${l} differs from qemu-img's: ${r.stdout}${r.stderr}`);
    if (fmt === 'qcow2') assertClean(`${m}/${l}`, `${what}: ${l}`);
  }
}

/** Bytes of an image's own data (qemu-img map depth 0). */
function ownData(file: string): number {
  return (JSON.parse(qemuImg('map', '--output=json', file)) as { depth: number; data: boolean; length: number }[])
    .filter((e) => e.depth === 0 && e.data)
    .reduce((n, e) => n + e.length, 0);
}

describe('img rebase against qemu-img rebase', () => {
  const pristine = path.join(dir, 'pristine-rebase');
  before(() => makeChain(pristine));

  const cases: { name: string; image: string; args: string[] }[] = [
    { name: 'onto a layer further down (base.raw)', image: 'top.qcow2', args: ['-b', 'base.raw', '-F', 'raw'] },
    { name: 'onto the next layer but one', image: 'top.qcow2', args: ['-b', 'l2.qcow2', '-F', 'qcow2'] },
    { name: 'onto an unrelated qcow2', image: 'top.qcow2', args: ['-b', 'other.qcow2', '-F', 'qcow2'] },
    { name: 'onto a shorter raw file', image: 'top.qcow2', args: ['-b', 'other-short.raw', '-F', 'raw'] },
    { name: 'flattened (-b "")', image: 'top.qcow2', args: ['-b', ''] },
    { name: 'a v2 image, onto base.raw', image: 'v2top.qcow2', args: ['-b', 'base.raw', '-F', 'raw'] },
    { name: 'an extended-L2 image, onto an unrelated qcow2', image: 'xtop.qcow2', args: ['-b', 'other.qcow2', '-F', 'qcow2'] },
    { name: 'a middle layer, onto an unrelated qcow2', image: 'l2.qcow2', args: ['-b', 'other.qcow2', '-F', 'qcow2'] },
  ];
  cases.forEach((c, i) => {
    it(c.name, () => {
      const { q, m } = twoCopies(pristine, `rebase${i}`);
      const before = qemuHash(`${m}/${c.image}`);
      const rq = qemuIn(q, 'rebase', ...c.args, c.image);
      assert.equal(rq.status, 0, rq.stderr);
      const rm = imgIn(m, 'rebase', ...c.args, c.image);
      assert.equal(rm.status, 0, rm.stderr);
      assert.equal(rm.stdout, '');
      assert.equal(qemuHash(`${m}/${c.image}`), before, 'the image reads as before');
      assertSameChains(q, m, c.name);
      // The header names what -b and -F gave, as qemu-img's does.
      const iq = JSON.parse(qemuImg('info', '--output=json', `${q}/${c.image}`));
      const im = JSON.parse(qemuImg('info', '--output=json', `${m}/${c.image}`));
      assert.deepEqual([im['backing-filename'], im['backing-filename-format']], [iq['backing-filename'], iq['backing-filename-format']]);
      // Safe mode writes only what differs: never more than qemu-img writes.
      assert.ok(ownData(`${m}/${c.image}`) <= ownData(`${q}/${c.image}`), `img wrote ${ownData(`${m}/${c.image}`)} bytes, qemu-img ${ownData(`${q}/${c.image}`)}`);
    });
  });

  it('onto its own backing file: nothing to write', () => {
    const { m } = twoCopies(pristine, 'rebase-same');
    const own = ownData(`${m}/top.qcow2`);
    const r = imgIn(m, 'rebase', '-b', 'l3.qcow2', '-F', 'qcow2', 'top.qcow2');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(ownData(`${m}/top.qcow2`), own);
  });

  it('-u only changes the name: the data is not touched', () => {
    const { q, m } = twoCopies(pristine, 'rebase-unsafe');
    const own = ownData(`${m}/top.qcow2`);
    assert.equal(qemuIn(q, 'rebase', '-u', '-b', 'other.qcow2', '-F', 'qcow2', 'top.qcow2').status, 0);
    const r = imgIn(m, 'rebase', '-u', '-b', 'other.qcow2', '-F', 'qcow2', 'top.qcow2');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(ownData(`${m}/top.qcow2`), own);
    assertSameChains(q, m, 'rebase -u');
    // -u works without the old backing file, as it is meant for renames.
    fs.renameSync(`${m}/other.qcow2`, `${m}/renamed.qcow2`);
    const r2 = imgIn(m, 'rebase', '-u', '-b', 'renamed.qcow2', '-F', 'qcow2', 'top.qcow2');
    assert.equal(r2.status, 0, r2.stderr);
    assertClean(`${m}/top.qcow2`);
  });

  it('refuses what qemu-img refuses, with its words', () => {
    const { m } = twoCopies(pristine, 'rebase-errors');
    let r = imgIn(m, 'rebase', '-b', 'l2.qcow2', 'top.qcow2');
    assert.equal(r.status, 1);
    assert.equal(r.stderr, "img: top.qcow2: Could not change the backing file to 'l2.qcow2': backing format must be specified\n");
    r = imgIn(m, 'rebase', 'top.qcow2');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /Must specify backing file \(-b\)/);
    r = imgIn(m, 'rebase', '-b', 'nothere.qcow2', '-F', 'qcow2', 'top.qcow2');
    assert.equal(r.status, 1);
    assert.equal(r.stderr, "img: top.qcow2: backing file 'nothere.qcow2' (resolved to nothere.qcow2) does not exist\n");
    r = imgIn(m, 'rebase', '-f', 'raw', '-b', 'base.raw', '-F', 'raw', 'other-short.raw');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^img: .*other-short\.raw.*\n$/);
    // Nothing was changed by the refusals.
    assert.equal(qemuHash(`${m}/top.qcow2`), qemuHash(`${pristine}/top.qcow2`));
  });

  it('-p reports progress as JSON lines on a pipe', () => {
    const { m } = twoCopies(pristine, 'rebase-progress');
    const r = imgIn(m, 'rebase', '-p', '-b', 'base.raw', '-F', 'raw', 'top.qcow2');
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stderr.trim().split('\n').map((l) => JSON.parse(l) as { progress: number });
    assert.equal(lines[lines.length - 1].progress, 100);
    assert.ok(lines.every((l, i) => i === 0 || l.progress >= lines[i - 1].progress));
  });
});

describe('img commit against qemu-img commit', () => {
  const pristine = path.join(dir, 'pristine-commit');
  before(() => {
    makeChain(pristine);
    // The top holds an internal snapshot too: emptying it must keep the snapshot's clusters.
    qemuImg('snapshot', '-c', 'kept', `${pristine}/top.qcow2`);
    qemuIo(`${pristine}/top.qcow2`, ['write -P 0x53 2M 128k']);
  });

  const cases: { name: string; image: string; args: string[] }[] = [
    { name: 'into the backing file, emptying the image', image: 'top.qcow2', args: [] },
    { name: '-d: into the backing file, keeping the image', image: 'top.qcow2', args: ['-d'] },
    { name: '-b into a layer further down (implies -d)', image: 'top.qcow2', args: ['-b', 'l1.qcow2'] },
    { name: '-b into the raw base, which grows to the image size', image: 'top.qcow2', args: ['-b', 'base.raw'] },
    { name: 'a longer layer into a shorter one, which grows', image: 'l3.qcow2', args: [] },
    { name: 'a v2 image', image: 'v2top.qcow2', args: [] },
    { name: 'an extended-L2 image with partial clusters', image: 'xtop.qcow2', args: [] },
    { name: 'a compressed layer into the raw base', image: 'l1.qcow2', args: [] },
  ];
  cases.forEach((c, i) => {
    it(c.name, () => {
      const { q, m } = twoCopies(pristine, `commit${i}`);
      const before = qemuHash(`${m}/${c.image}`);
      const rq = qemuIn(q, 'commit', ...c.args, c.image);
      assert.equal(rq.status, 0, rq.stderr);
      const rm = imgIn(m, 'commit', ...c.args, c.image);
      assert.equal(rm.status, 0, rm.stderr);
      assert.equal(rm.stdout, 'Image committed.\n');
      assertSameChains(q, m, c.name);
      const emptied = !c.args.length;
      if (emptied) {
        assert.equal(qemuHash(`${m}/${c.image}`), before, 'the emptied image reads as before, through its backing file');
        assert.equal(ownData(`${m}/${c.image}`), 0, 'the image holds nothing of its own');
      }
      // The snapshot keeps its clusters (it reads through the changed chain, as in qemu-img's copy).
      if (c.image === 'top.qcow2') assert.equal(qemuHash(`${m}/top.qcow2`, 'kept'), qemuHash(`${q}/top.qcow2`, 'kept'), 'the snapshot survives');
    });
  });

  it('errors: no backing file, a base not in the chain', () => {
    const { m } = twoCopies(pristine, 'commit-errors');
    let r = imgIn(m, 'commit', 'other.qcow2');
    assert.equal(r.status, 1);
    assert.equal(r.stderr, 'img: other.qcow2: Image does not have a backing file\n');
    r = imgIn(m, 'commit', '-b', 'other.qcow2', 'top.qcow2');
    assert.equal(r.status, 1);
    assert.equal(r.stderr, "img: top.qcow2: Did not find 'other.qcow2' in the backing chain of 'top.qcow2'\n");
    r = imgIn(m, 'commit', '-q', 'l2.qcow2');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, '');
  });

  it('-b names the base relative to the images, as qemu-img does', () => {
    const { q, m } = twoCopies(pristine, 'commit-names');
    assert.equal(run('qemu-img', ['commit', '-b', 'l2.qcow2', `${q}/top.qcow2`]).status, 0);
    const r = imgIn('/', 'commit', '-b', 'l2.qcow2', `${m}/top.qcow2`);
    assert.equal(r.status, 0, r.stderr);
    assertSameChains(q, m, 'commit -b from elsewhere');
    assert.ok(qemuHash(`${m}/l2.qcow2`) !== qemuHash(`${pristine}/l2.qcow2`));
  });
});
