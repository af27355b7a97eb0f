/** create, resize, measure, amend and dd: the images and output qemu-img gives for the same commands. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { before, describe, it } from 'node:test';
import { qemuCheck, qemuImg, sha256File, tempDir } from '../helpers';
import { makeSampleDisk } from '../convert/sample-disk';
import { both, imgIn, qemuIn } from './run';

const virtualSize = (file: string): number => JSON.parse(qemuImg('info', '--output=json', file))['virtual-size'];

describe('img create, resize, measure, amend, dd', () => {
  const dir = tempDir();
  const ok = (...args: string[]) => {
    const r = imgIn(dir, ...args);
    assert.equal(r.status, 0, `img ${args.join(' ')}: ${r.stderr}`);
    return r;
  };
  before(() => makeSampleDisk(`${dir}/disk.raw`));

  for (const size of ['1M', '1.5M', '10k', '3G', '1T', '65537']) {
    for (const fmt of ['raw', 'qcow2']) {
      it(`create -f ${fmt} of size ${size}: same virtual size as qemu-img's`, () => {
        ok('create', '-q', '-f', fmt, `c.${fmt}`, size);
        qemuIn(dir, 'create', '-q', '-f', fmt, `q.${fmt}`, size);
        assert.equal(virtualSize(`${dir}/c.${fmt}`), virtualSize(`${dir}/q.${fmt}`));
        if (fmt === 'qcow2') assert.equal(qemuCheck(`${dir}/c.qcow2`).status, 0);
      });
    }
  }

  it('create with a backing file takes its size; the overlay reads through to it', () => {
    ok('convert', '-O', 'qcow2', 'disk.raw', 'base.qcow2');
    const r = ok('create', '-f', 'qcow2', '-b', 'base.qcow2', '-F', 'qcow2', 'overlay.qcow2');
    assert.match(r.stdout, /^Formatting 'overlay\.qcow2', fmt=qcow2/);
    assert.equal(virtualSize(`${dir}/overlay.qcow2`), virtualSize(`${dir}/disk.raw`));
    assert.match(qemuImg('compare', `${dir}/overlay.qcow2`, `${dir}/disk.raw`), /identical/);
    const info = JSON.parse(ok('info', '--output=json', 'overlay.qcow2').stdout);
    assert.equal(info['backing-filename'], 'base.qcow2');
    assert.equal(info['backing-filename-format'], 'qcow2');
  });

  it('create -u with a missing backing file needs a size and does not open it', () => {
    ok('create', '-f', 'qcow2', '-u', '-b', 'nowhere.qcow2', '-F', 'qcow2', 'unsafe.qcow2', '1M');
    assert.equal(JSON.parse(qemuImg('info', '-U', '--output=json', '--force-share', `${dir}/unsafe.qcow2`).replace(/^[^{]*/, ''))['backing-filename'], 'nowhere.qcow2');
  });

  it('create -o help and convert -o help list the format options', () => {
    for (const args of [['create', '-f', 'qcow2', '-o', 'help'], ['convert', '-O', 'qcow2', '-o', 'help']]) {
      const r = ok(...args);
      assert.match(r.stdout, /^Supported qcow2 options:\n/);
      assert.match(r.stdout, /\n {2}cluster_size=<size> {4}- /);
    }
  });

  for (const [fmt, steps] of [
    ['raw', ['+1M', '+3k', '--shrink -1M', '--shrink 8M']],
    ['qcow2', ['+1M', '20M', '--shrink -1M', '--shrink 8M']],
  ] as const) {
    it(`resize ${fmt} through ${steps.join(', ')}: sizes and content as qemu-img's`, () => {
      ok('convert', '-O', fmt, 'disk.raw', `r-img.${fmt}`);
      qemuIn(dir, 'convert', '-O', fmt, 'disk.raw', `r-qemu.${fmt}`);
      for (const step of steps) {
        const args = step.split(' ');
        const r = imgIn(dir, 'resize', '-f', fmt, ...args.slice(0, -1), `r-img.${fmt}`, args[args.length - 1]);
        assert.equal(r.stdout, 'Image resized.\n', r.stderr);
        qemuIn(dir, 'resize', '-f', fmt, ...args.slice(0, -1), `r-qemu.${fmt}`, args[args.length - 1]);
        assert.equal(virtualSize(`${dir}/r-img.${fmt}`), virtualSize(`${dir}/r-qemu.${fmt}`));
      }
      assert.match(qemuImg('compare', `${dir}/r-img.${fmt}`, `${dir}/r-qemu.${fmt}`), /identical/);
      if (fmt === 'qcow2') assert.equal(qemuCheck(`${dir}/r-img.qcow2`).status, 0);
    });
  }

  it('writing to an image probed as raw prints qemu-img\'s warning', () => {
    fs.copyFileSync(`${dir}/disk.raw`, `${dir}/probed.raw`);
    fs.copyFileSync(`${dir}/disk.raw`, `${dir}/probed-q.raw`);
    const mine = imgIn(dir, 'resize', 'probed.raw', '+1M');
    const theirs = qemuIn(dir, 'resize', 'probed-q.raw', '+1M');
    assert.equal(mine.status, 0, mine.stderr);
    assert.equal(mine.stderr, theirs.stderr.replace(/probed-q/g, 'probed'));
  });

  for (const args of [
    ['-O', 'raw', '--size', '1000'],
    ['-O', 'raw', 'disk.raw'],
    ['-O', 'qcow2', '--size', '10G'],
    ['-O', 'qcow2', 'disk.raw'],
    ['-O', 'qcow2', '-o', 'cluster_size=4k', 'disk.raw'],
    ['--output=json', '-O', 'qcow2', 'disk.raw'],
  ]) {
    it(`measure ${args.join(' ')} prints what qemu-img prints`, () => {
      const r = both(dir, 'measure', ...args);
      assert.equal(r.img.status, 0, r.img.stderr);
      assert.equal(r.img.stdout, r.qemu.stdout);
    });
  }

  it('amend -o compat=0.10 then compat=1.1: qemu-img check clean and content kept', () => {
    ok('convert', '-O', 'qcow2', 'disk.raw', 'amend.qcow2');
    for (const compat of ['0.10', '1.1']) {
      ok('amend', '-o', `compat=${compat}`, 'amend.qcow2');
      const info = JSON.parse(qemuImg('info', '--output=json', `${dir}/amend.qcow2`));
      assert.equal(info['format-specific'].data.compat, compat);
      assert.equal(qemuCheck(`${dir}/amend.qcow2`).status, 0);
      assert.match(qemuImg('compare', `${dir}/amend.qcow2`, `${dir}/disk.raw`), /identical/);
    }
  });

  for (const ops of [['bs=1024', 'count=4', 'skip=2'], ['bs=64k', 'skip=3'], ['count=100'], ['bs=1M', 'skip=99']]) {
    it(`dd ${ops.join(' ')} writes what qemu-img dd writes`, () => {
      const r = both(dir, 'dd', '-f', 'raw', ...ops, 'if=disk.raw', 'of=dd-out.img');
      assert.equal(r.img.status, r.qemu.status, r.img.stderr);
      ok('dd', '-f', 'raw', ...ops, 'if=disk.raw', 'of=dd-img.raw');
      qemuIn(dir, 'dd', '-f', 'raw', ...ops, 'if=disk.raw', 'of=dd-qemu.raw');
      assert.equal(fs.statSync(`${dir}/dd-img.raw`).size, fs.statSync(`${dir}/dd-qemu.raw`).size);
      assert.equal(sha256File(`${dir}/dd-img.raw`), sha256File(`${dir}/dd-qemu.raw`));
    });
  }

  it('dd -O qcow2 from a qcow2 source', () => {
    ok('dd', '-O', 'qcow2', 'bs=1M', 'skip=1', 'if=base.qcow2', 'of=dd.qcow2');
    qemuIn(dir, 'dd', '-O', 'raw', 'bs=1M', 'skip=1', 'if=base.qcow2', 'of=dd-ref.raw');
    assert.equal(qemuCheck(`${dir}/dd.qcow2`).status, 0);
    assert.match(qemuImg('compare', `${dir}/dd.qcow2`, `${dir}/dd-ref.raw`), /identical/);
  });
});
