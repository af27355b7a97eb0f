/** img check: qemu-img's exit statuses (0 clean, 2 corrupt, 3 leaks, 63 no check, 1 failed) and output. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { before, describe, it } from 'node:test';
import { be64, be64n } from '../../src/io/bytes';
import { L1E_OFFSET_MASK } from '../../src/formats/qcow2/constants';
import { qemuImg, tempDir } from '../helpers';
import { makeSampleDisk } from '../convert/sample-disk';
import { both, imgIn, qemuIn } from './run';

const REFCOUNT_TABLE_OFFSET = 48;
const L1_TABLE_OFFSET = 40;
const CLUSTER = 65536;

describe('img check against qemu-img check', () => {
  const dir = tempDir();
  before(() => {
    makeSampleDisk(`${dir}/disk.raw`);
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', `${dir}/disk.raw`, `${dir}/clean.qcow2`);
    // A leak: one more cluster at the end of the file, refcounted but used by nothing.
    fs.copyFileSync(`${dir}/clean.qcow2`, `${dir}/leak.qcow2`);
    const leak = fs.openSync(`${dir}/leak.qcow2`, 'r+');
    const head = Buffer.alloc(512);
    fs.readSync(leak, head, 0, 512, 0);
    const end = fs.fstatSync(leak).size;
    fs.writeSync(leak, Buffer.alloc(CLUSTER), 0, CLUSTER, end);
    const block = Buffer.alloc(8);
    fs.readSync(leak, block, 0, 8, be64(head, REFCOUNT_TABLE_OFFSET));
    fs.writeSync(leak, Buffer.from([0, 1]), 0, 2, be64(block, 0) + 2 * (end / CLUSTER)); // 16-bit refcounts
    fs.closeSync(leak);
    // A corruption: the same image with a refcount dropped to 0 for the first L2 table's cluster.
    fs.copyFileSync(`${dir}/clean.qcow2`, `${dir}/corrupt.qcow2`);
    const fd = fs.openSync(`${dir}/corrupt.qcow2`, 'r+');
    const l1 = Buffer.alloc(8);
    fs.readSync(fd, head, 0, 512, 0);
    fs.readSync(fd, l1, 0, 8, be64(head, L1_TABLE_OFFSET));
    const l2 = Number(be64n(l1, 0) & L1E_OFFSET_MASK);
    const rb = Buffer.alloc(8);
    fs.readSync(fd, rb, 0, 8, be64(head, REFCOUNT_TABLE_OFFSET));
    fs.writeSync(fd, Buffer.from([0, 0]), 0, 2, be64(rb, 0) + 2 * (l2 / CLUSTER));
    fs.closeSync(fd);
  });

  for (const name of ['clean.qcow2', 'leak.qcow2', 'corrupt.qcow2', 'disk.raw']) {
    for (const output of ['human', 'json']) {
      it(`check --output=${output} ${name}: same status and stdout as qemu-img`, () => {
        const r = both(dir, 'check', `--output=${output}`, name);
        assert.equal(r.img.status, r.qemu.status, r.img.stderr);
        assert.equal(r.img.stdout, r.qemu.stdout);
      });
    }
  }

  it('check -r leaks repairs a leak; qemu-img then finds the image clean', () => {
    fs.copyFileSync(`${dir}/leak.qcow2`, `${dir}/repair.qcow2`);
    const r = imgIn(dir, 'check', '-r', 'leaks', 'repair.qcow2');
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /The following inconsistencies were found and repaired/);
    assert.equal(both(dir, 'check', 'repair.qcow2').qemu.status, 0);
  });

  for (const [mode, name] of [['all', 'corrupt.qcow2'], ['leaks', 'leak.qcow2'], ['all', 'leak.qcow2']]) {
    it(`check -r ${mode} ${name}: repairs as qemu-img does, same report and status`, () => {
      fs.copyFileSync(`${dir}/${name}`, `${dir}/img-${name}`);
      fs.copyFileSync(`${dir}/${name}`, `${dir}/qemu-${name}`);
      const mine = imgIn(dir, 'check', '-r', mode, `img-${name}`);
      const theirs = qemuIn(dir, 'check', '-r', mode, `qemu-${name}`);
      assert.equal(mine.status, theirs.status, mine.stderr);
      assert.equal(mine.stdout, theirs.stdout);
      assert.equal(qemuIn(dir, 'check', `img-${name}`).status, qemuIn(dir, 'check', `qemu-${name}`).status);
    });
  }

  it('an image with the corrupt bit set is checked and, with -r all, cleared as qemu-img does', () => {
    const INCOMPATIBLE_FEATURES = 72;
    const CORRUPT_BIT = 2n;
    for (const who of ['img', 'qemu']) {
      fs.copyFileSync(`${dir}/leak.qcow2`, `${dir}/${who}-flagged.qcow2`);
      const fd = fs.openSync(`${dir}/${who}-flagged.qcow2`, 'r+');
      const bits = Buffer.alloc(8);
      bits.writeBigUInt64BE(CORRUPT_BIT);
      fs.writeSync(fd, bits, 0, 8, INCOMPATIBLE_FEATURES);
      fs.closeSync(fd);
    }
    const plain = { img: imgIn(dir, 'check', 'img-flagged.qcow2'), qemu: qemuIn(dir, 'check', 'qemu-flagged.qcow2') };
    assert.equal(plain.img.status, plain.qemu.status, plain.img.stderr);
    const mine = imgIn(dir, 'check', '-r', 'all', 'img-flagged.qcow2');
    const theirs = qemuIn(dir, 'check', '-r', 'all', 'qemu-flagged.qcow2');
    assert.equal(mine.status, theirs.status, mine.stderr);
    assert.equal(mine.stdout, theirs.stdout);
    const corrupt = (f: string) => JSON.parse(qemuImg('info', '--output=json', `${dir}/${f}`))['format-specific'].data.corrupt;
    assert.equal(corrupt('img-flagged.qcow2'), corrupt('qemu-flagged.qcow2'));
    assert.equal(corrupt('img-flagged.qcow2'), false);
  });

  it('a missing file or a bad -r value: exit 1, one line', () => {
    for (const args of [['missing.qcow2'], ['-r', 'some', 'clean.qcow2']]) {
      const r = imgIn(dir, 'check', ...args);
      assert.equal(r.status, 1);
      assert.match(r.stderr, /^img: [^\n]+\n$/);
    }
  });
});
