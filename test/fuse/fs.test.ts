/**
 * img mount --fs (root): the guest's ext4 mounted by the host kernel over a loop device on the
 * FUSE export. Files read back as written by mke2fs; files written through the mount are in
 * the image after unmount, which qemu-img check and e2fsck -fn find clean.
 */
import * as assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { prng, qemuCheck, qemuImg, randomBytes, sha256File, tempDir } from '../helpers';
import { bytesOf, GuestDisk, haveFuse, img, isRoot, loopsUnder, makeGuestDisk, mount, mountsUnder, unmount } from './guest-disk';

const skip = !isRoot ? 'needs root' : !haveFuse ? 'no /dev/fuse' : false;

/** The guest filesystem of an image, extracted from its raw conversion. */
function extractFs(dir: string, image: string, start: number, size: number): string {
  const raw = path.join(dir, 'check.raw');
  qemuImg('convert', '-O', 'raw', image, raw);
  const out = path.join(dir, 'check.ext4');
  fs.writeFileSync(out, bytesOf(raw, start, size));
  return out;
}

describe('img mount --fs: the guest filesystem', { skip }, () => {
  const dir = tempDir('img-fuse-fs-');
  const mnt = path.join(dir, 'mnt');
  let dos: GuestDisk;
  let gpt: GuestDisk;
  before(() => {
    fs.mkdirSync(mnt);
    dos = makeGuestDisk(dir, 'dos');
    gpt = makeGuestDisk(dir, 'gpt', 8);
  });
  after(() => {
    if (mountsUnder(mnt).length) unmount(mnt);
  });

  function assertFiles(disk: GuestDisk): void {
    for (const [name, data] of disk.files) assert.ok(fs.readFileSync(path.join(mnt, name)).equals(data), name);
  }

  for (const format of ['qcow2', 'vmdk', 'vdi']) {
    it(`${format}: files readable, a file written is in the image after unmount, e2fsck clean`, () => {
      const image = path.join(dir, `fs.${format}`);
      qemuImg('convert', '-f', 'raw', '-O', format, dos.raw, image);
      assert.deepEqual(mount('--fs', image, mnt), [mnt]);
      const written = randomBytes(prng(5), 1_500_000);
      try {
        assert.equal(loopsUnder('/run/img').length, 1);
        assertFiles(dos);
        fs.writeFileSync(path.join(mnt, 'written.bin'), written);
        fs.mkdirSync(path.join(mnt, 'newdir'));
        fs.writeFileSync(path.join(mnt, 'newdir', 'small.txt'), 'small\n');
        fs.rmSync(path.join(mnt, 'sub', 'deeper', 'zeros.bin'));
      } finally {
        unmount(mnt);
      }
      assert.deepEqual(mountsUnder(mnt), []);
      assert.deepEqual(loopsUnder('/run/img'), []);
      assert.deepEqual(fs.readdirSync(mnt), []);
      assert.equal(qemuCheck(image).status, 0);
      const ext4 = extractFs(dir, image, dos.partitions[0].start, dos.partitions[0].size);
      const fsck = spawnSync('e2fsck', ['-fn', ext4], { encoding: 'utf8' });
      assert.equal(fsck.status, 0, fsck.stdout + fsck.stderr);
      const back = execFileSync('debugfs', ['-R', 'cat /written.bin', ext4], { stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 16 << 20 });
      assert.ok(back.equals(written));
      assert.equal(execFileSync('debugfs', ['-R', 'cat /newdir/small.txt', ext4], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), 'small\n');
    });
  }

  it('GPT, -P 1 in a vmdk; --read-only refuses writes and leaves the image as it was', () => {
    const image = path.join(dir, 'gpt.vmdk');
    qemuImg('convert', '-f', 'raw', '-O', 'vmdk', gpt.raw, image);
    const before = sha256File(image);
    mount('--fs', '-P', '1', '--read-only', image, mnt);
    try {
      assertFiles(gpt);
      assert.throws(() => fs.writeFileSync(path.join(mnt, 'x'), 'x'), { code: 'EROFS' });
    } finally {
      unmount(mnt);
    }
    assert.equal(sha256File(image), before);
  });

  it('a partition without a filesystem: one clear line, nothing left mounted or attached', () => {
    const image = path.join(dir, 'nofs.qcow2');
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', gpt.raw, image);
    const r = img('mount', '--daemon', '--fs', '-P', '2', image, mnt);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^img: cannot mount the filesystem: .+\n$/);
    assert.deepEqual(mountsUnder(mnt), []);
    assert.deepEqual(loopsUnder('/run/img'), []);
    assert.equal(fs.readdirSync('/run/img').filter((n) => n.startsWith('fs-') || n.startsWith('mount-')).length, 0);
    const bad = img('mount', '--daemon', '--fs', '-P', '9', image, mnt);
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /^img: the image has no partition 9 \(partitions: 1, 2, 3\)\n$/);
  });
});
