/** img compare: exit status and message equal qemu-img compare's for equal and different images. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { before, describe, it } from 'node:test';
import { qemuImg, tempDir } from '../helpers';
import { makeSampleDisk, writeAt } from '../convert/sample-disk';
import { both } from './run';

describe('img compare against qemu-img compare', () => {
  const dir = tempDir();
  before(() => {
    makeSampleDisk(`${dir}/a.raw`);
    fs.copyFileSync(`${dir}/a.raw`, `${dir}/same.raw`);
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', `${dir}/a.raw`, `${dir}/a.qcow2`);
    fs.copyFileSync(`${dir}/a.raw`, `${dir}/byte.raw`);
    writeAt(`${dir}/byte.raw`, 5 * 1024 * 1024 + 300 * 1024 + 77, Buffer.from([1])); // inside a zero run
    fs.copyFileSync(`${dir}/a.raw`, `${dir}/hole.raw`);
    writeAt(`${dir}/hole.raw`, 9 * 1024 * 1024 + 1000, Buffer.from('data in a hole'));
    fs.copyFileSync(`${dir}/a.raw`, `${dir}/longer.raw`);
    fs.truncateSync(`${dir}/longer.raw`, fs.statSync(`${dir}/a.raw`).size + 1024 * 1024);
    fs.copyFileSync(`${dir}/longer.raw`, `${dir}/longer-data.raw`);
    writeAt(`${dir}/longer-data.raw`, fs.statSync(`${dir}/a.raw`).size + 4096 + 5, Buffer.from('tail'));
    fs.copyFileSync(`${dir}/a.raw`, `${dir}/shorter.raw`);
    fs.truncateSync(`${dir}/shorter.raw`, 8 * 1024 * 1024);
  });

  const pairs: [string, string, string[]][] = [
    ['a.raw', 'same.raw', []],
    ['a.raw', 'a.qcow2', []],
    ['a.qcow2', 'a.raw', []],
    ['a.raw', 'byte.raw', []],
    ['a.qcow2', 'byte.raw', []],
    ['a.raw', 'hole.raw', []],
    ['hole.raw', 'a.qcow2', []],
    ['a.raw', 'longer.raw', []],
    ['longer-data.raw', 'a.raw', []],
    ['a.qcow2', 'longer-data.raw', []],
    ['a.raw', 'shorter.raw', []],
    ['a.raw', 'same.raw', ['-s']],
    ['a.raw', 'a.qcow2', ['-s']],
    ['a.raw', 'longer.raw', ['-s']],
    ['a.raw', 'byte.raw', ['-q']],
    ['a.raw', 'same.raw', ['-q']],
    ['a.raw', 'a.qcow2', ['-f', 'raw', '-F', 'qcow2']],
  ];
  for (const [a, b, extra] of pairs) {
    it(`compare ${extra.join(' ')} ${a} ${b}: same status and output as qemu-img`, () => {
      const r = both(dir, 'compare', ...extra, a, b);
      assert.equal(r.img.status, r.qemu.status, r.img.stderr);
      assert.equal(r.img.stdout, r.qemu.stdout);
    });
  }

  it('errors exit 2 with one line: a missing file, a wrong -f', () => {
    for (const args of [['a.raw', 'missing.raw'], ['-f', 'qcow2', 'a.raw', 'same.raw']]) {
      const r = both(dir, 'compare', ...args);
      assert.equal(r.qemu.status, 2);
      assert.equal(r.img.status, 2);
      assert.equal(r.img.stdout, '');
      assert.match(r.img.stderr, /^img: [^\n]+\n$/);
    }
  });
});
