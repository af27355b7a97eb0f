/**
 * Bad input gives one line on stderr, `img: …` naming the file and the problem, and the exit
 * status qemu-img gives for the same mistake; --debug adds the stack.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { before, describe, it } from 'node:test';
import { setBe32 } from '../../src/io/bytes';
import { qemuImg, tempDir } from '../helpers';
import { both, imgIn } from './run';

const CLUSTER_BITS_OFFSET = 20;

describe('img errors', () => {
  const dir = tempDir();
  before(() => {
    qemuImg('create', '-f', 'raw', `${dir}/ok.raw`, '1M');
    qemuImg('create', '-f', 'qcow2', `${dir}/ok.qcow2`, '1M');
    fs.copyFileSync(`${dir}/ok.qcow2`, `${dir}/hostile.qcow2`);
    const fd = fs.openSync(`${dir}/hostile.qcow2`, 'r+');
    const field = Buffer.alloc(4);
    setBe32(field, 0, 40); // cluster_bits 40
    fs.writeSync(fd, field, 0, 4, CLUSTER_BITS_OFFSET);
    fs.closeSync(fd);
    qemuImg('create', '-q', '-f', 'qcow2', '-u', '-b', 'gone.qcow2', '-F', 'qcow2', `${dir}/orphan.qcow2`, '1M');
  });

  const cases: [string, string[]][] = [
    ['info of a missing file', ['info', 'missing.qcow2']],
    ['info with an unknown format', ['info', '-f', 'vhdz', 'ok.raw']],
    ['info of a hostile header', ['info', 'hostile.qcow2']],
    ['map of a missing file', ['map', 'missing.qcow2']],
    ['map of an image whose backing file is missing', ['map', 'orphan.qcow2']],
    ['check of an image whose backing file is missing', ['check', 'orphan.qcow2']],
    ['info --backing-chain of an image whose backing file is missing', ['info', '--backing-chain', 'orphan.qcow2']],
    ['check of a missing file', ['check', 'missing.qcow2']],
    ['create with a bad size', ['create', '-f', 'raw', 'new.raw', '12Q']],
    ['create with a negative size', ['create', '-f', 'qcow2', 'new.qcow2', '--', '-5']],
    ['create without a size', ['create', '-f', 'qcow2', 'new.qcow2']],
    ['create with an unknown format', ['create', '-f', 'vhdz', 'new.img', '1M']],
    ['create in a missing directory', ['create', '-f', 'raw', 'no/such/dir.raw', '1M']],
    ['create with a backing file but no backing format', ['create', '-f', 'qcow2', '-b', 'ok.qcow2', 'new.qcow2']],
    ['convert of a missing file', ['convert', '-O', 'raw', 'missing.qcow2', 'out.raw']],
    ['convert to an unknown format', ['convert', '-O', 'vhdz', 'ok.raw', 'out.img']],
    ['convert of a hostile header', ['convert', '-O', 'raw', 'hostile.qcow2', 'out.raw']],
    ['convert with a bad -S', ['convert', '-S', '1000', '-O', 'raw', 'ok.raw', 'out.raw']],
    ['convert -c to a format without compression', ['convert', '-c', '-O', 'raw', 'ok.raw', 'out.raw']],
    ['resize of a missing file', ['resize', 'missing.qcow2', '2M']],
    ['resize with a bad size', ['resize', '-f', 'raw', 'ok.raw', '2X']],
    ['resize shrinking without --shrink', ['resize', '-f', 'raw', 'ok.raw', '512k']],
    ['amend of raw', ['amend', '-f', 'raw', '-o', 'compat=0.10', 'ok.raw']],
    ['amend without -o', ['amend', 'ok.qcow2']],
    ['measure without size or file', ['measure', '-O', 'qcow2']],
    ['measure of a missing file', ['measure', '-O', 'qcow2', 'missing.qcow2']],
    ['dd with an unknown operand', ['dd', 'foo=1', 'if=ok.raw', 'of=out.raw']],
    ['dd without of=', ['dd', 'if=ok.raw']],
    ['dd with bs=0', ['dd', 'bs=0', 'if=ok.raw', 'of=out.raw']],
  ];
  for (const [what, args] of cases) {
    it(`${what}: one line and qemu-img's exit status`, () => {
      const r = both(dir, ...args);
      assert.notEqual(r.qemu.status, 0, `qemu-img accepted ${args.join(' ')}`);
      assert.equal(r.img.status, r.qemu.status, r.img.stderr);
      const lines = r.img.stderr.split('\n').filter((l) => l && !l.startsWith('WARNING') && !l.startsWith('         ') && !l.includes('warning:'));
      assert.equal(lines.length, 1, r.img.stderr);
      assert.match(lines[0], /^img: /);
    });
  }

  it('info without --backing-chain shows an image whose backing file is missing, as qemu-img', () => {
    const r = both(dir, 'info', 'orphan.qcow2');
    assert.equal(r.img.status, 0, r.img.stderr);
    assert.equal(r.img.stdout, r.qemu.stdout);
  });

  it('messages name the file and the field', () => {
    assert.match(imgIn(dir, 'info', 'missing.qcow2').stderr, /missing\.qcow2/);
    assert.match(imgIn(dir, 'info', 'hostile.qcow2').stderr, /hostile\.qcow2.*cluster/i);
    assert.match(imgIn(dir, 'create', '-f', 'raw', 'x.raw', '12Q').stderr, /12Q/);
    assert.match(imgIn(dir, 'convert', '-c', '-O', 'raw', 'ok.raw', 'out.raw').stderr, /^img: out\.raw: .*compression/);
  });

  it('unknown options and subcommands are usage errors with exit 1', () => {
    for (const args of [['info', '--bogus', 'ok.raw'], ['frobnicate'], ['convert', '-Z', 'a', 'b']]) {
      const r = imgIn(dir, ...args);
      assert.equal(r.status, 1);
      assert.match(r.stderr, /error: unknown (option|command)/);
    }
  });

  it('--debug shows the stack', () => {
    const r = imgIn(dir, '--debug', 'info', 'hostile.qcow2');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^img: .*\n[\s\S]*\n\s+at /);
  });

  it('compare reports errors with exit 2', () => {
    const r = both(dir, 'compare', 'ok.raw', 'missing.raw');
    assert.equal(r.img.status, 2);
    assert.equal(r.qemu.status, 2);
  });

  it('check of a format without checks exits 63', () => {
    const r = both(dir, 'check', 'ok.raw');
    assert.equal(r.img.status, 63);
    assert.equal(r.qemu.status, 63);
  });
});
