/**
 * The life of a mount: SIGINT/SIGTERM to a foreground img mount undoes it and flushes the
 * image; an unmount of DIR ends img; after kill -9, img unmount leaves no mount, loop device or
 * state behind and the image passes qemu-img check (leaks allowed). Bad input: one line.
 */
import * as assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { IMG, prng, qemuCheck, qemuImg, randomBytes, run, tempDir } from '../helpers';
import { haveFuse, img, isRoot, loopsUnder, makeGuestDisk, mount, mountsUnder, servingPid, unmount } from './guest-disk';

const skip = haveFuse ? false : 'no /dev/fuse';
const NOBODY = 65534;

/** img mount in the foreground; resolves once it printed the mounted paths. */
function foreground(...args: string[]): Promise<{ child: ChildProcess; exited: Promise<number | null> }> {
  const child = spawn(process.execPath, [IMG, 'mount', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((resolve, reject) => {
    child.stdout!.once('data', () => resolve({ child, exited }));
    void exited.then((code) => reject(new Error(`img mount exited ${code}: ${err}`)));
  });
}

/** Leaks are allowed after a kill: qemu-img check says 0 (clean) or 3 (leaks only). */
function assertNoCorruption(image: string): void {
  const r = qemuCheck(image);
  assert.ok(r.status === 0 || r.status === 3, JSON.stringify(r.report));
}

describe('img mount lifecycle', { skip }, () => {
  const dir = tempDir('img-fuse-life-');
  const mnt = path.join(dir, 'mnt');
  let raw: string;
  before(() => {
    fs.mkdirSync(mnt);
    raw = makeGuestDisk(dir, 'dos').raw;
  });
  after(() => {
    if (mountsUnder(mnt).length) unmount(mnt);
  });
  const fresh = (name: string) => {
    const image = path.join(dir, name);
    qemuImg('convert', '-f', 'raw', '-O', 'qcow2', raw, image);
    return image;
  };

  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    it(`${signal} to a foreground img mount unmounts, flushes and exits 0`, async () => {
      const image = fresh(`sig-${signal}.qcow2`);
      const { child, exited } = await foreground(image, mnt);
      const data = randomBytes(prng(3), 1 << 20);
      const fd = fs.openSync(path.join(mnt, 'disk'), 'r+');
      fs.writeSync(fd, data, 0, data.length, 5 << 20);
      fs.closeSync(fd);
      child.kill(signal);
      assert.equal(await exited, 0);
      assert.deepEqual(mountsUnder(mnt), []);
      assert.equal(qemuCheck(image).status, 0);
      const out = path.join(dir, 'sig.raw');
      qemuImg('convert', '-O', 'raw', image, out);
      const back = Buffer.alloc(data.length);
      const rfd = fs.openSync(out, 'r');
      fs.readSync(rfd, back, 0, back.length, 5 << 20);
      fs.closeSync(rfd);
      assert.ok(back.equals(data));
    });
  }

  it('SIGTERM to a foreground img mount --fs undoes filesystem, loop device and FUSE', { skip: !isRoot && 'needs root' }, async () => {
    const image = fresh('sig-fs.qcow2');
    const { child, exited } = await foreground('--fs', image, mnt);
    fs.writeFileSync(path.join(mnt, 'f.txt'), 'data\n');
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
    assert.deepEqual(mountsUnder(mnt), []);
    assert.deepEqual(loopsUnder('/run/img'), []);
    assert.equal(qemuCheck(image).status, 0);
  });

  it('a busy DIR: SIGTERM reports it and keeps serving; once free, SIGTERM again unmounts', async () => {
    const image = fresh('busy.qcow2');
    const { child, exited } = await foreground(image, mnt);
    const fd = fs.openSync(path.join(mnt, 'disk'), 'r');
    const complaint = new Promise<string>((resolve) => child.stderr!.once('data', (d: Buffer) => resolve(d.toString())));
    child.kill('SIGTERM');
    assert.match(await complaint, /^img: cannot unmount .*mnt: target is busy\.?\n$/);
    assert.equal(fs.readSync(fd, Buffer.alloc(512), 0, 512, 0), 512);
    fs.closeSync(fd);
    child.kill('SIGTERM');
    assert.equal(await exited, 0);
    assert.deepEqual(mountsUnder(mnt), []);
  });

  it('unmounting DIR by hand ends img mount', async () => {
    const image = fresh('umount.qcow2');
    const { exited } = await foreground(image, mnt);
    const r = run('umount', [mnt]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(await exited, 0);
    assert.equal(qemuCheck(image).status, 0);
    assert.equal(img('unmount', mnt).status, 1);
  });

  for (const form of ['disk', 'fs'] as const) {
    it(`kill -9 while mounted (${form}), then img unmount: nothing left behind, image not corrupt`, { skip: form === 'fs' && !isRoot && 'needs root' }, () => {
      const image = fresh(`kill-${form}.qcow2`);
      mount(...(form === 'fs' ? ['--fs'] : []), image, mnt);
      const target = form === 'fs' ? path.join(mnt, 'big.bin') : path.join(mnt, 'p1');
      try {
        fs.writeFileSync(target, randomBytes(prng(4), 2 << 20));
      } finally {
        process.kill(servingPid(mnt), 'SIGKILL');
      }
      if (form === 'disk') {
        const again = img('mount', image, mnt);
        assert.equal(again.status, 1);
        assert.match(again.stderr, /^img: mount point .* is a dead FUSE mount: run img unmount .*\n$/);
      }
      const r = img('unmount', mnt);
      assert.equal(r.status, 0, r.stderr);
      assert.deepEqual(mountsUnder(mnt), []);
      assert.deepEqual(loopsUnder('/run/img'), []);
      assert.deepEqual(fs.readdirSync(mnt), []);
      assert.equal(fs.readdirSync('/run/img').filter((n) => n.startsWith('fs-') || n.startsWith('mount-')).length, 0);
      assertNoCorruption(image);
      assert.equal(img('unmount', mnt).status, 1);
    });
  }

  it('as a non-root user, through fusermount3', { skip: !isRoot && 'needs root to become another user' }, () => {
    // A directory the user (nobody) owns, outside the root-only temp directory.
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'img-fuse-user-'));
    try {
      const image = path.join(home, 'user.qcow2');
      qemuImg('convert', '-f', 'raw', '-O', 'qcow2', raw, image);
      fs.copyFileSync(raw, path.join(home, 'disk.raw'));
      for (const name of ['run', 'mnt']) fs.mkdirSync(path.join(home, name));
      for (const name of ['.', 'run', 'mnt', 'user.qcow2', 'disk.raw']) fs.chownSync(path.join(home, name), NOBODY, NOBODY);
      const asUser = (...args: string[]) =>
        run('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', 'env', `XDG_RUNTIME_DIR=${home}/run`, ...args]);
      const user = path.join(home, 'mnt');
      const m = asUser(process.execPath, IMG, 'mount', '--daemon', image, user);
      assert.equal(m.status, 0, m.stderr);
      assert.equal(mountsUnder(user).length, 1);
      const same = asUser('cmp', path.join(user, 'disk'), path.join(home, 'disk.raw'));
      assert.equal(same.status, 0, same.stdout + same.stderr);
      const u = asUser(process.execPath, IMG, 'unmount', user);
      assert.equal(u.status, 0, u.stderr);
      assert.deepEqual(mountsUnder(user), []);
      assert.deepEqual(fs.readdirSync(path.join(home, 'run', 'img')), []);
    } finally {
      if (mountsUnder(home).length) run('umount', ['-l', path.join(home, 'mnt')]);
      fs.rmSync(home, { recursive: true, force: true });
    }
  });

  describe('bad input: one clear line, nothing mounted', () => {
    const oneLine = (r: { status: number; stderr: string }, pattern: RegExp) => {
      assert.equal(r.status, 1);
      assert.match(r.stderr, /^img: [^\n]+\n$/);
      assert.match(r.stderr, pattern);
      assert.deepEqual(mountsUnder(mnt), []);
    };
    it('a missing image', () => oneLine(img('mount', path.join(dir, 'nope.qcow2'), mnt), /nope\.qcow2: no such file/));
    it('a corrupt image', () => {
      const image = fresh('corrupt.qcow2');
      const fd = fs.openSync(image, 'r+');
      fs.writeSync(fd, Buffer.from([0, 0, 0, 40]), 0, 4, 20); // cluster_bits 40
      fs.closeSync(fd);
      oneLine(img('mount', image, mnt), /cluster_bits/);
    });
    it('a missing or non-empty DIR', () => {
      const image = fresh('dirs.qcow2');
      oneLine(img('mount', image, path.join(dir, 'nodir')), /mount point .*nodir does not exist/);
      fs.writeFileSync(path.join(mnt, 'x'), '');
      try {
        oneLine(img('mount', image, mnt), /mount point .*mnt is not empty/);
      } finally {
        fs.rmSync(path.join(mnt, 'x'));
      }
    });
    it('no /dev/fuse, no loop devices, not root for --fs', { skip: !isRoot && 'needs root' }, () => {
      const image = fresh('host.qcow2');
      // A private /dev holding only null (and fuse, for the loop case).
      const inPrivateDev = (nodes: string, ...args: string[]) =>
        run('unshare', ['-m', 'sh', '-c', `mount -t tmpfs dev /dev && mknod -m 666 /dev/null c 1 3 ${nodes} && exec "$@"`, 'sh', process.execPath, IMG, ...args]);
      oneLine(inPrivateDev('', 'mount', image, mnt), /no \/dev\/fuse: FUSE is not available/);
      oneLine(inPrivateDev('&& mknod -m 666 /dev/fuse c 10 229', 'mount', '--fs', image, mnt), /loop devices are unavailable/);
      oneLine(run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, IMG, 'mount', '--fs', image, mnt]), /--fs needs root/);
    });
    it('img unmount of a directory img did not mount', () => oneLine(img('unmount', mnt), /is not mounted by img/));
  });
});
