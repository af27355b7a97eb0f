/** img info and img map print what qemu-img prints for the same images, byte for byte. */
import * as assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { qemuImg, run, tempDir } from '../helpers';
import { makeSampleDisk } from '../convert/sample-disk';
import { both } from './run';

describe('img info and img map against qemu-img', () => {
  const dir = tempDir();
  before(() => {
    makeSampleDisk(`${dir}/disk.raw`);
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', `${dir}/disk.raw`, `${dir}/disk.qcow2`);
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-c', '-o', 'compression_type=zstd', `${dir}/disk.raw`, `${dir}/zstd.qcow2`);
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-o', 'compat=0.10,cluster_size=4096', `${dir}/disk.raw`, `${dir}/v2.qcow2`);
    qemuImg('create', '-f', 'qcow2', '-b', 'disk.qcow2', '-F', 'qcow2', `${dir}/top.qcow2`);
    qemuImg('create', '-f', 'qcow2', '-o', 'extended_l2=on,lazy_refcounts=on', `${dir}/empty.qcow2`, '1G');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-o', 'cluster_size=2M,refcount_bits=64', `${dir}/disk.raw`, `${dir}/big-cluster.qcow2`);
    qemuImg('snapshot', '-c', 'first', `${dir}/v2.qcow2`);
    // Preallocated metadata: every cluster mapped, most of them holes in the file, which qemu
    // reports as data that reads as zeroes. Some data, explicit zeroes and a zeroed range on top.
    qemuImg('create', '-f', 'qcow2', '-o', 'preallocation=metadata', `${dir}/prealloc.qcow2`, '64M');
    const io = (file: string, ...cmds: string[]) => run('qemu-io', ['-f', 'qcow2', ...cmds.flatMap((c) => ['-c', c]), file]);
    io(`${dir}/prealloc.qcow2`, 'write -P 0x11 1M 3M', 'write -P 0 8M 1M', 'write -z 20M 2M');
    qemuImg('create', '-f', 'qcow2', '-o', 'preallocation=metadata,extended_l2=on,cluster_size=128k', `${dir}/prealloc-l2.qcow2`, '64M');
    io(`${dir}/prealloc-l2.qcow2`, 'write -P 0x22 100k 50k');
  });

  const images = ['disk.raw', 'disk.qcow2', 'zstd.qcow2', 'v2.qcow2', 'top.qcow2', 'empty.qcow2', 'big-cluster.qcow2', 'prealloc.qcow2', 'prealloc-l2.qcow2'];

  for (const name of images) {
    it(`info --output=json of ${name} equals qemu-img's`, () => {
      const r = both(dir, 'info', '--output=json', name);
      assert.equal(r.img.status, 0, r.img.stderr);
      assert.equal(r.img.stdout, r.qemu.stdout);
    });
    it(`info (human) of ${name} equals qemu-img's`, () => {
      const r = both(dir, 'info', name);
      assert.equal(r.img.status, 0, r.img.stderr);
      assert.equal(r.img.stdout, r.qemu.stdout);
    });
    it(`map --output=json of ${name} equals qemu-img's`, () => {
      const r = both(dir, 'map', '--output=json', name);
      assert.equal(r.img.status, 0, r.img.stderr);
      assert.equal(r.img.stdout, r.qemu.stdout);
    });
    it(`map (human) of ${name} has qemu-img's output and status`, () => {
      const r = both(dir, 'map', name);
      assert.equal(r.img.status, r.qemu.status, r.img.stderr);
      assert.equal(r.img.stdout, r.qemu.stdout);
    });
  }

  it('map --start-offset/--max-length cut the map as qemu-img does', () => {
    for (const name of ['disk.raw', 'top.qcow2']) {
      const r = both(dir, 'map', '--output=json', '--start-offset=70000', '--max-length=5M', name);
      assert.equal(r.img.status, 0, r.img.stderr);
      assert.equal(r.img.stdout, r.qemu.stdout);
    }
  });

  it('info --backing-chain lists every layer like qemu-img', () => {
    for (const output of ['human', 'json']) {
      const r = both(dir, 'info', '--backing-chain', `--output=${output}`, 'top.qcow2');
      assert.equal(r.img.status, 0, r.img.stderr);
      assert.equal(r.img.stdout, r.qemu.stdout);
    }
  });

  it('info -f qcow2 on a raw file fails with one line, as qemu-img', () => {
    const r = both(dir, 'info', '-f', 'qcow2', 'disk.raw');
    assert.equal(r.img.status, r.qemu.status);
    assert.equal(r.img.stdout, '');
    assert.match(r.img.stderr, /^img: .*disk\.raw.*\n$/);
  });
});
