/**
 * img mount, disk form: DIR/disk is the image's virtual disk byte for byte (qemu-img convert
 * -O raw is the oracle) through every format, compression and a backing chain; DIR/pN are the
 * partitions' byte ranges (MBR with logical partitions, GPT); writes reach the image.
 */
import * as assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { prng, qemuCheck, qemuImg, randomBytes, run, sha256File, tempDir } from '../helpers';
import { bytesOf, GuestDisk, haveFuse, img, isRoot, makeGuestDisk, mount, mountsUnder, unmount } from './guest-disk';

const skip = haveFuse ? false : 'no /dev/fuse';

describe('img mount: the disk and its partitions', { skip }, () => {
  const dir = tempDir('img-fuse-');
  const mnt = path.join(dir, 'mnt');
  let dos: GuestDisk;
  let gpt: GuestDisk;

  before(() => {
    fs.mkdirSync(mnt);
    dos = makeGuestDisk(dir, 'dos');
    gpt = makeGuestDisk(dir, 'gpt');
  });
  after(() => {
    if (mountsUnder(mnt).length) unmount(mnt);
  });

  /** Mounts `image`, checks disk and partitions against the raw oracle, unmounts. */
  function checkExport(image: string, oracle: string, disk: GuestDisk, ...opts: string[]): void {
    const paths = mount(...opts, image, mnt);
    try {
      const names = disk.partitions.map((p) => `p${p.number}`);
      assert.deepEqual(paths, ['disk', ...names].map((n) => path.join(mnt, n)));
      assert.deepEqual(fs.readdirSync(mnt).sort(), ['disk', ...names].sort());
      assert.equal(fs.statSync(path.join(mnt, 'disk')).size, fs.statSync(oracle).size);
      assert.equal(sha256File(path.join(mnt, 'disk')), sha256File(oracle));
      for (const p of disk.partitions) {
        const file = path.join(mnt, `p${p.number}`);
        assert.equal(fs.statSync(file).size, p.size, file);
        assert.ok(fs.readFileSync(file).equals(bytesOf(oracle, p.start, p.size)), `p${p.number} is not bytes ${p.start}+${p.size}`);
      }
    } finally {
      unmount(mnt);
    }
    assert.deepEqual(mountsUnder(mnt), []);
    assert.deepEqual(fs.readdirSync(mnt), []);
  }

  for (const [format, extra] of [
    ['qcow2', []],
    ['vmdk', []],
    ['vdi', []],
    ['qcow2', ['-c']],
    ['vmdk', ['-o', 'subformat=streamOptimized']],
  ] as const) {
    it(`${format} ${extra.join(' ')} from an MBR disk: disk equals qemu-img convert -O raw, pN the partitions`, () => {
      const image = path.join(dir, `dos-${extra.length ? 'c' : 'p'}.${format}`);
      qemuImg('convert', '-f', 'raw', '-O', format, ...extra, dos.raw, image);
      const oracle = `${image}.raw`;
      qemuImg('convert', '-O', 'raw', image, oracle);
      checkExport(image, oracle, dos);
    });
  }

  it('GPT disk in qcow2: partitions in entry order', () => {
    const image = path.join(dir, 'gpt.qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', gpt.raw, image);
    checkExport(image, gpt.raw, gpt, '-f', 'qcow2');
  });

  it('a qcow2 overlay on a compressed qcow2 base reads through the chain', () => {
    const base = path.join(dir, 'base.qcow2');
    const top = path.join(dir, 'top.qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-c', dos.raw, base);
    qemuImg('create', '-q', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top);
    execFileSync('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 30M 1M', top]);
    const oracle = path.join(dir, 'top.raw');
    qemuImg('convert', '-O', 'raw', top, oracle);
    checkExport(top, oracle, dos);
  });

  it('writes through disk and pN land in the image, durable at fsync; qemu-img check is clean', () => {
    const image = path.join(dir, 'rw.qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', '-c', dos.raw, image);
    const expected = fs.readFileSync(dos.raw);
    const rand = prng(99);
    mount(image, mnt);
    try {
      const fd = fs.openSync(path.join(mnt, 'disk'), 'r+');
      for (const [offset, length] of [
        [0, 512],
        [70_000, 5000], // unaligned, inside a compressed cluster
        [3 * 1048576 - 4096, 3 * 1048576], // several clusters, across a boundary
        [dos.partitions[0].start + 4 * 1048576, 2 * 1048576 + 17], // bigger than one FUSE request
        [expected.length - 1000, 1000], // the last bytes of the disk
      ]) {
        const data = randomBytes(rand, length);
        assert.equal(fs.writeSync(fd, data, 0, length, offset), length);
        data.copy(expected, offset);
      }
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      const p5 = dos.partitions.find((p) => p.number === 5)!;
      const data = randomBytes(rand, 100_000);
      const pfd = fs.openSync(path.join(mnt, 'p5'), 'r+');
      fs.writeSync(pfd, data, 0, data.length, 12345);
      fs.closeSync(pfd);
      data.copy(expected, p5.start + 12345);
      // The disk sees the partition's write at once (no stale page cache).
      assert.ok(bytesOf(path.join(mnt, 'disk'), p5.start + 12345, data.length).equals(data));
      // A write past the end is refused, never wraps or grows the disk.
      const efd = fs.openSync(path.join(mnt, 'p6'), 'r+');
      assert.throws(() => fs.writeSync(efd, Buffer.alloc(10), 0, 10, 4 * 1048576), { code: 'ENOSPC' });
      fs.closeSync(efd);
      assert.throws(() => fs.truncateSync(path.join(mnt, 'disk'), 1000), { code: 'EINVAL' });
      // Punching a hole and zeroing a range (what a loop device does for discard) read back as zeroes.
      for (const [mode, offset, length] of [
        ['-p', 2 * 1048576 + 4096, 300_000],
        ['-z', 9 * 1048576, 2 * 1048576 + 512],
      ] as const) {
        const r = run('fallocate', [mode, '-o', String(offset), '-l', String(length), path.join(mnt, 'disk')]);
        assert.equal(r.status, 0, r.stderr);
        expected.fill(0, offset, offset + length);
      }
      assert.ok(bytesOf(path.join(mnt, 'disk'), 2 * 1048576, 4 * 1048576).equals(expected.subarray(2 * 1048576, 6 * 1048576)));
    } finally {
      unmount(mnt);
    }
    assert.equal(qemuCheck(image).status, 0);
    const out = path.join(dir, 'rw.raw');
    qemuImg('convert', '-O', 'raw', image, out);
    assert.ok(fs.readFileSync(out).equals(expected));
  });

  it('--read-only: writes fail with EROFS and the image is unchanged', () => {
    const image = path.join(dir, 'ro.vdi');
    qemuImg('convert', '-f', 'raw', '-O', 'vdi', dos.raw, image);
    const before = sha256File(image);
    mount('--read-only', image, mnt);
    try {
      assert.equal((fs.statSync(path.join(mnt, 'disk')).mode & 0o777).toString(8), '444');
      assert.throws(() => fs.openSync(path.join(mnt, 'disk'), 'r+'), { code: 'EROFS' });
      assert.equal(sha256File(path.join(mnt, 'p1')), sha256File(path.join(dir, 'fs-dos.ext4')));
    } finally {
      unmount(mnt);
    }
    assert.equal(sha256File(image), before);
  });

  it('a broken partition table: disk alone, with a warning; --fs says what is wrong', () => {
    const broken = path.join(dir, 'broken.raw');
    fs.copyFileSync(dos.raw, broken);
    const ebr = dos.partitions.find((p) => p.number === 5)!.start - 2048 * 512; // the first EBR opens the extended partition
    const fd = fs.openSync(broken, 'r+');
    fs.writeSync(fd, Buffer.from([0, 0]), 0, 2, ebr + 510);
    fs.closeSync(fd);
    const image = path.join(dir, 'broken.qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', broken, image);
    const r = img('mount', '--daemon', image, mnt);
    assert.equal(r.status, 0, r.stderr);
    try {
      assert.match(r.stderr, /^img: warning: EBR at sector \d+ has no 0x55aa signature: exporting disk only\n$/);
      assert.deepEqual(fs.readdirSync(mnt), ['disk']);
      assert.equal(sha256File(path.join(mnt, 'disk')), sha256File(broken));
    } finally {
      unmount(mnt);
    }
    if (!isRoot) return;
    const f = img('mount', '--daemon', '--fs', image, mnt);
    assert.equal(f.status, 1);
    assert.match(f.stderr, /^img: EBR at sector \d+ has no 0x55aa signature\n$/);
    assert.deepEqual(mountsUnder(mnt), []);
  });

  it('a disk without a partition table exports only disk', () => {
    const image = path.join(dir, 'plain.qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', path.join(dir, 'fs-dos.ext4'), image);
    assert.deepEqual(mount(image, mnt), [path.join(mnt, 'disk')]);
    try {
      assert.equal(sha256File(path.join(mnt, 'disk')), sha256File(path.join(dir, 'fs-dos.ext4')));
    } finally {
      unmount(mnt);
    }
  });
});
