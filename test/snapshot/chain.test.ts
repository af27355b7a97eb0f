/**
 * Backing chains against qemu-img: chains six deep that mix a raw base, qcow2 layers of
 * several kinds (v2, extended L2, small clusters, compressed clusters) and layers shorter or
 * longer than the ones below read identically to qemu-img's view, and img map, img info
 * --backing-chain print what qemu-img prints, for chains qemu-img made and chains img made.
 * Backing names are resolved against the overlay's directory; missing files, loops and
 * over-deep chains are refused with errors that say which file and why; the backing format
 * an image names is used as is.
 */
import * as assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { before, describe, it } from 'node:test';
import { createImage, MAX_CHAIN_DEPTH, openImage } from '../../src/formats/index';
import { ImageError } from '../../src/block/errors';
import { qemuImg, run, tempDir } from '../helpers';
import { both, imgIn } from '../cli/run';
import { KiB, MiB, qemuHash, qemuIo } from './fixture';

const dir = tempDir('img-chain-');

async function libraryHash(file: string): Promise<string> {
  const image = await openImage(file, { readOnly: true });
  try {
    const h = createHash('sha256');
    const buf = Buffer.alloc(MiB);
    for (let o = 0; o < image.size; o += MiB) {
      const n = Math.min(MiB, image.size - o);
      await image.read(o, buf.subarray(0, n));
      h.update(buf.subarray(0, n));
    }
    return h.digest('hex');
  } finally {
    await image.close();
  }
}

/** Every way of looking at an image of the chain gives what qemu-img gives. */
async function assertSameView(cwd: string, name: string): Promise<void> {
  for (const args of [
    ['map', '--output=json', name],
    ['map', name],
    ['info', '--backing-chain', '--output=json', name],
    ['info', '--backing-chain', name],
  ]) {
    const r = both(cwd, ...args);
    assert.equal(r.img.status, r.qemu.status, `${args.join(' ')}: ${r.img.stderr}`);
    assert.equal(r.img.stdout, r.qemu.stdout, args.join(' '));
  }
  const file = path.join(cwd, name);
  assert.equal(await libraryHash(file), qemuHash(file), `${name}: the library reads what qemu-img reads`);
  const out = path.join(cwd, `${name}.img.raw`);
  const r = imgIn(cwd, 'convert', '-O', 'raw', name, path.basename(out));
  assert.equal(r.status, 0, r.stderr);
  assert.equal(createHash('sha256').update(fs.readFileSync(out)).digest('hex'), qemuHash(file), `${name}: img convert`);
  fs.rmSync(out);
  const c = both(cwd, 'compare', name, `${name}.flat`);
  assert.equal(c.img.status, 0, c.img.stdout + c.img.stderr);
}

describe('backing chains six deep read as qemu-img reads them', () => {
  const q = path.join(dir, 'qemu-made');
  const m = path.join(dir, 'img-made');
  const LAYERS = ['l0.raw', 'l1.qcow2', 'l2.qcow2', 'l3.qcow2', 'l4.qcow2', 'l5.qcow2'];

  before(() => {
    // Made by qemu-img/qemu-io: a raw base, then v3, small-cluster compressed, v2 shorter,
    // longer extended-L2, and a plain top over them.
    fs.mkdirSync(q);
    qemuImg('create', '-q', '-f', 'raw', `${q}/l0.raw`, '8M');
    qemuIo(`${q}/l0.raw`, ['write -P 0x10 0 1M', 'write -P 0x11 3M 512k', 'write -P 0x12 7M 1M'], 'raw');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'l0.raw', '-F', 'raw', `${q}/l1.qcow2`);
    qemuIo(`${q}/l1.qcow2`, ['write -P 0x21 512k 1M', 'write -z 4M 1M', 'write -z 7M 64k']);
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'cluster_size=4k', '-b', 'l1.qcow2', '-F', 'qcow2', `${q}/l2.qcow2`);
    qemuIo(`${q}/l2.qcow2`, ['write -c -P 0x31 1M 256k', 'write -P 0x32 2M 4k', 'write -c -P 0x33 4M 64k']);
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-b', 'l2.qcow2', '-F', 'qcow2', `${q}/l3.qcow2`, '6M');
    qemuIo(`${q}/l3.qcow2`, ['write -P 0x41 5M 64k', 'write -P 0 0 64k']);
    qemuImg('create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', '-b', 'l3.qcow2', '-F', 'qcow2', `${q}/l4.qcow2`, '12M');
    qemuIo(`${q}/l4.qcow2`, ['write -P 0x51 7M 4k', 'write -z 5M 32k', 'write -P 0x52 10M 8k']);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'l4.qcow2', '-F', 'qcow2', `${q}/l5.qcow2`);
    qemuIo(`${q}/l5.qcow2`, ['write -P 0x61 1536k 64k']);
    for (const l of LAYERS) qemuImg('convert', '-O', 'raw', `${q}/${l}`, `${q}/${l}.flat`);

    // The same shape made by img: create -b, writes through img dd/convert -n, compressed
    // layers written by convert -c -B.
    fs.mkdirSync(m);
    const imgOk = (...args: string[]) => {
      const r = imgIn(m, ...args);
      assert.equal(r.status, 0, `img ${args.join(' ')}: ${r.stderr}`);
    };
    fs.copyFileSync(`${q}/l0.raw`, `${m}/l0.raw`);
    imgOk('create', '-q', '-f', 'qcow2', '-b', 'l0.raw', '-F', 'raw', 'l1.qcow2');
    // A layer holding l1's data, compressed, over l0: convert -c -B writes only what differs.
    imgOk('convert', '-c', '-O', 'qcow2', '-B', 'l0.raw', '-F', 'raw', `${q}/l1.qcow2`, 'l1.qcow2');
    imgOk('convert', '-O', 'qcow2', '-o', 'cluster_size=4k', '-B', 'l1.qcow2', '-F', 'qcow2', `${q}/l2.qcow2`, 'l2.qcow2');
    imgOk('create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', '-b', 'l2.qcow2', '-F', 'qcow2', 'l3.qcow2', '6M');
    imgOk('convert', '-n', '-O', 'qcow2', '-B', 'l2.qcow2', '-F', 'qcow2', `${q}/l3.qcow2`, 'l3.qcow2');
    imgOk('convert', '-c', '-O', 'qcow2', '-o', 'extended_l2=on', '-B', 'l3.qcow2', '-F', 'qcow2', `${q}/l4.qcow2`, 'l4.qcow2');
    imgOk('create', '-q', '-f', 'qcow2', '-b', 'l4.qcow2', '-F', 'qcow2', 'l5.qcow2');
    imgOk('convert', '-n', '-O', 'qcow2', '-B', 'l4.qcow2', '-F', 'qcow2', `${q}/l5.qcow2`, 'l5.qcow2');
    for (const l of LAYERS) fs.copyFileSync(`${q}/${l}.flat`, `${m}/${l}.flat`);
  });

  for (const layer of LAYERS) {
    it(`${layer} of a chain qemu-img made`, () => assertSameView(q, layer));
  }
  for (const layer of LAYERS) {
    it(`${layer} of a chain img made: qemu-img reads it as it should`, async () => {
      assert.equal(qemuHash(`${m}/${layer}`), qemuHash(`${q}/${layer}`));
      await assertSameView(m, layer);
      if (layer.endsWith('.qcow2')) assert.equal(run('qemu-img', ['check', `${m}/${layer}`]).status, 0);
    });
  }

  it('img map shows the depth qemu-img shows, for each start offset and length', () => {
    for (const [s, l] of [
      ['0', '12M'],
      ['1000000', '3M'],
      ['6M', '4M'],
      ['11M', '1M'],
    ]) {
      const r = both(q, 'map', '--output=json', `--start-offset=${s}`, `--max-length=${l}`, 'l5.qcow2');
      assert.equal(r.img.stdout, r.qemu.stdout, `map from ${s} for ${l}`);
    }
  });
});

describe('backing file names and formats', () => {
  it('relative names are resolved against the overlay, wherever img runs', async () => {
    const root = path.join(dir, 'names');
    fs.mkdirSync(`${root}/a/deep`, { recursive: true });
    fs.mkdirSync(`${root}/b`, { recursive: true });
    qemuImg('create', '-q', '-f', 'raw', `${root}/a/deep/base.raw`, '3M');
    qemuIo(`${root}/a/deep/base.raw`, ['write -P 7 0 3M'], 'raw');
    // mid is in b/, names its backing file relative to b/; size taken from it.
    let r = imgIn('/', 'create', '-q', '-f', 'qcow2', '-b', '../a/deep/base.raw', '-F', 'raw', `${root}/b/mid.qcow2`);
    assert.equal(r.status, 0, r.stderr);
    r = imgIn(`${root}/a`, 'create', '-q', '-f', 'qcow2', '-b', 'b/mid.qcow2', '-F', 'qcow2', '../top.qcow2');
    assert.equal(r.status, 0, r.stderr);
    qemuIo(`${root}/top.qcow2`, ['write -P 9 1M 64k']);
    const info = JSON.parse(qemuImg('info', '--output=json', `${root}/top.qcow2`));
    assert.equal(info['virtual-size'], 3 * MiB);
    assert.equal(info['backing-filename'], 'b/mid.qcow2');
    for (const cwd of [root, `${root}/a/deep`, '/']) {
      const name = path.relative(cwd, `${root}/top.qcow2`) || 'top.qcow2';
      const x = both(cwd, 'info', '--backing-chain', '--output=json', name);
      assert.equal(x.img.status, 0, x.img.stderr);
      assert.equal(x.img.stdout, x.qemu.stdout, `from ${cwd}`);
      const y = both(cwd, 'map', '--output=json', name);
      assert.equal(y.img.stdout, y.qemu.stdout, `from ${cwd}`);
    }
    assert.equal(await libraryHash(`${root}/top.qcow2`), qemuHash(`${root}/top.qcow2`));
  });

  it('create opens the backing file and its chain unless -u, as qemu-img create does', () => {
    const d = path.join(dir, 'create');
    fs.mkdirSync(d);
    let r = imgIn(d, 'create', '-f', 'qcow2', '-b', 'nothere.qcow2', '-F', 'qcow2', 'o.qcow2', '1M');
    assert.equal(r.status, 1);
    assert.equal(r.stderr, `img: o.qcow2: backing file 'nothere.qcow2' (resolved to nothere.qcow2) does not exist\n`);
    assert.ok(!fs.existsSync(`${d}/o.qcow2`));
    r = imgIn(d, 'create', '-q', '-f', 'qcow2', '-u', '-b', 'nothere.qcow2', '-F', 'qcow2', 'orphan.qcow2', '1M');
    assert.equal(r.status, 0, r.stderr);
    // A backing file whose own backing file is missing is refused too.
    r = imgIn(d, 'create', '-f', 'qcow2', '-b', 'orphan.qcow2', '-F', 'qcow2', 'o2.qcow2');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^img: orphan\.qcow2: backing file 'nothere\.qcow2' \(resolved to nothere\.qcow2\) does not exist\n$/);
    // -u without a size cannot take the size from anywhere.
    r = imgIn(d, 'create', '-f', 'qcow2', '-u', '-b', 'orphan.qcow2', '-F', 'qcow2', 'o3.qcow2');
    assert.equal(r.status, 1);
    // An image cannot be created over a file its own backing chain runs through.
    qemuImg('create', '-q', '-f', 'qcow2', `${d}/self.qcow2`, '1M');
    r = imgIn(d, 'create', '-f', 'qcow2', '-b', 'self.qcow2', '-F', 'qcow2', 'self.qcow2');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /loop/);
  });

  it('a missing backing file deep in the chain: the error names the image that names it, the name as written and as resolved', () => {
    const d = path.join(dir, 'missing');
    fs.mkdirSync(`${d}/sub`, { recursive: true });
    qemuImg('create', '-q', '-f', 'qcow2', `${d}/sub/base.qcow2`, '1M');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', `${d}/sub/mid.qcow2`);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'sub/mid.qcow2', '-F', 'qcow2', `${d}/top.qcow2`);
    fs.rmSync(`${d}/sub/base.qcow2`);
    for (const args of [
      ['info', '--backing-chain', 'top.qcow2'],
      ['map', 'top.qcow2'],
      ['convert', '-O', 'raw', 'top.qcow2', 'x.raw'],
      ['compare', 'top.qcow2', 'top.qcow2'],
      ['rebase', '-b', '', 'top.qcow2'],
      ['commit', 'top.qcow2'],
    ]) {
      const r = imgIn(d, ...args);
      assert.notEqual(r.status, 0, args.join(' '));
      assert.equal(r.stderr, `img: sub/mid.qcow2: backing file 'base.qcow2' (resolved to sub/base.qcow2) does not exist\n`, args.join(' '));
    }
    // Without --backing-chain, info still describes the image itself (qemu-img does too).
    const r = both(d, 'info', '--output=json', 'top.qcow2');
    assert.equal(r.img.status, 0, r.img.stderr);
    assert.equal(r.img.stdout, r.qemu.stdout);
  });

  it('loops are refused, wherever they close', async () => {
    const d = path.join(dir, 'loops');
    fs.mkdirSync(d);
    qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'b.qcow2', '-F', 'qcow2', `${d}/a.qcow2`, '1M');
    qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'c.qcow2', '-F', 'qcow2', `${d}/b.qcow2`, '1M');
    qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'a.qcow2', '-F', 'qcow2', `${d}/c.qcow2`, '1M');
    for (const args of [
      ['info', '--backing-chain', 'a.qcow2'],
      ['map', 'b.qcow2'],
      ['convert', '-O', 'raw', 'c.qcow2', 'x.raw'],
      ['commit', 'a.qcow2'],
    ]) {
      const r = imgIn(d, ...args);
      assert.equal(r.status, 1, args.join(' '));
      assert.match(r.stderr, /^img: .*backing chain loops: .*\n$/, args.join(' '));
    }
    await assert.rejects(openImage(`${d}/a.qcow2`), (e: unknown) => e instanceof ImageError && e.code === 'CORRUPT');
    // rebase refuses to close a loop, even with -u.
    qemuImg('create', '-q', '-f', 'qcow2', `${d}/p.qcow2`, '1M');
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'p.qcow2', '-F', 'qcow2', `${d}/q.qcow2`);
    for (const u of [[], ['-u']]) {
      const r = imgIn(d, 'rebase', ...u, '-b', 'q.qcow2', '-F', 'qcow2', 'p.qcow2');
      assert.equal(r.status, 1, `rebase ${u.join(' ')}`);
      assert.match(r.stderr, /loop/);
    }
    assert.equal(run('qemu-img', ['info', '--backing-chain', `${d}/q.qcow2`]).status, 0, 'p.qcow2 was left alone');
  });

  it(`chains deeper than ${MAX_CHAIN_DEPTH} images are refused; ${MAX_CHAIN_DEPTH} are fine`, async () => {
    const d = path.join(dir, 'deep');
    fs.mkdirSync(d);
    await createImage('qcow2', `${d}/0.qcow2`, { size: MiB, options: {} });
    const last = MAX_CHAIN_DEPTH + 1;
    for (let i = 1; i <= last; i++) {
      await createImage('qcow2', `${d}/${i}.qcow2`, { size: MiB, options: {}, backingFile: `${i - 1}.qcow2`, backingFormat: 'qcow2' });
    }
    const ok = await openImage(`${d}/${MAX_CHAIN_DEPTH}.qcow2`, { readOnly: true });
    await ok.close();
    await assert.rejects(openImage(`${d}/${last}.qcow2`, { readOnly: true }), /deeper than/);
    const r = imgIn(d, 'map', `${last}.qcow2`);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^img: .*backing chain is deeper than \d+ images\n$/);
  });

  it('the backing format the image names is used as is, never probed', async () => {
    const d = path.join(dir, 'formats');
    fs.mkdirSync(d);
    qemuImg('create', '-q', '-f', 'qcow2', `${d}/base.qcow2`, '1M');
    qemuIo(`${d}/base.qcow2`, ['write -P 5 0 64k']);
    // Named raw: the qcow2 file's own bytes are the disk, as qemu reads it.
    qemuImg('create', '-q', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'raw', `${d}/as-raw.qcow2`);
    const sizeAsRaw = fs.statSync(`${d}/base.qcow2`).size;
    assert.equal((JSON.parse(qemuImg('info', '--output=json', `${d}/as-raw.qcow2`)) as { 'virtual-size': number })['virtual-size'], sizeAsRaw);
    assert.equal(await libraryHash(`${d}/as-raw.qcow2`), qemuHash(`${d}/as-raw.qcow2`));
    const r = both(d, 'map', '--output=json', 'as-raw.qcow2');
    assert.equal(r.img.stdout, r.qemu.stdout);
    // Named qcow2 over a raw file: refused, as qemu refuses it.
    fs.writeFileSync(`${d}/plain.raw`, Buffer.alloc(64 * KiB, 1));
    qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'plain.raw', '-F', 'qcow2', `${d}/wrong.qcow2`, '64k');
    const w = both(d, 'convert', '-O', 'raw', 'wrong.qcow2', 'w.raw');
    assert.equal(w.img.status, 1);
    assert.notEqual(w.qemu.status, 0);
    assert.match(w.img.stderr, /^img: .*plain\.raw.*not a qcow2 image\n$/);
  });
});
