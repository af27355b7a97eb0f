/**
 * img boot end to end: real kernels booted with real images. qemu-img, debugfs and e2fsck are
 * the oracles for what the guest wrote. The engine is chosen as img chooses it (qemu with TCG on
 * a host without hardware KVM); IMG_BOOT_ENGINE=native runs the same tests on the bundled runner.
 * Each boot combines several checks: under TCG one takes seconds to tens of seconds.
 */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { boot } from '../../src/index';
import { kvmStatus } from '../../src/runner/vm';
import { IMG, qemuCheck, qemuImg, run, RunResult, sha256File, tempDir } from '../helpers';

const ENGINE = process.env.IMG_BOOT_ENGINE as 'native' | 'qemu' | undefined;
const TIMEOUT_MS = 600_000;
const dir = tempDir('img-boot-test-');
/** img's own temporary files go here, so a test can see that none is left behind. */
const imgTmp = path.join(dir, 'tmp');
fs.mkdirSync(imgTmp);

const TEST_SH = `echo "running in $(pwd)"
cat data.txt
echo "$1" > written.txt
exit "$2"
`;
const DATA = 'data made on the host\n';

/** Runs img boot with the test engine, img's temp files under imgTmp. */
function imgBoot(...args: string[]): RunResult {
  const r = run('env', [`TMPDIR=${imgTmp}`, process.execPath, IMG, 'boot', ...(ENGINE ? ['--engine', ENGINE] : []), ...args]);
  assert.deepEqual(fs.readdirSync(imgTmp), [], 'img left temporary files behind');
  return r;
}

/** A raw ext4 filesystem (no partition table) holding test.sh and data.txt. */
function makeExt4(name: string): string {
  const tree = path.join(dir, `${name}.tree`);
  fs.mkdirSync(tree);
  fs.writeFileSync(path.join(tree, 'test.sh'), TEST_SH);
  fs.writeFileSync(path.join(tree, 'data.txt'), DATA);
  const raw = path.join(dir, `${name}.raw`);
  fs.writeFileSync(raw, '');
  fs.truncateSync(raw, 64 << 20);
  const r = run('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, raw]);
  assert.equal(r.status, 0, r.stderr);
  return raw;
}

/** What /written.txt holds in an image (read by debugfs from a raw copy), or null when absent. */
function writtenIn(image: string): string | null {
  const raw = path.join(dir, 'readback.raw');
  qemuImg('convert', '-O', 'raw', image, raw);
  const fsck = run('e2fsck', ['-fn', raw]);
  assert.equal(fsck.status, 0, `e2fsck: ${fsck.stdout}`);
  const r = run('debugfs', ['-R', 'cat /written.txt', raw]);
  fs.rmSync(raw);
  return /File not found/.test(r.stderr) ? null : r.stdout;
}

function assertRan(r: RunResult, status: number): void {
  assert.equal(r.status, status, `status ${r.status}, stderr: ${r.stderr}`);
  assert.equal(r.stdout, `running in /mnt\n${DATA}`);
}

test('qcow2: output and exit status come back, a written file is in the image; --snapshot discards it', { timeout: TIMEOUT_MS }, () => {
  const disk = path.join(dir, 'disk.qcow2');
  qemuImg('convert', '-O', 'qcow2', makeExt4('qcow2'), disk);
  assertRan(imgBoot(disk, '--', 'sh', 'test.sh', 'kept', '0'), 0);
  assert.equal(qemuCheck(disk).status, 0);
  assert.equal(writtenIn(disk), 'kept\n');

  const before = sha256File(disk);
  assertRan(imgBoot('--snapshot', disk, '--', 'sh', 'test.sh', 'discarded', '7'), 7);
  assert.equal(sha256File(disk), before);
  assert.equal(writtenIn(disk), 'kept\n');
});

test('vmdk: served over NBD like any format', { timeout: TIMEOUT_MS }, () => {
  const disk = path.join(dir, 'disk.vmdk');
  qemuImg('convert', '-O', 'vmdk', makeExt4('vmdk'), disk);
  assertRan(imgBoot(disk, '--', 'sh', 'test.sh', 'in a vmdk', '3'), 3);
  assert.equal(qemuCheck(disk).status, 0);
  assert.equal(writtenIn(disk), 'in a vmdk\n');
});

test('two-layer qcow2 chain: reads come through from the base, writes land in the top', { timeout: TIMEOUT_MS }, () => {
  const base = path.join(dir, 'base.qcow2');
  const top = path.join(dir, 'top.qcow2');
  qemuImg('convert', '-O', 'qcow2', makeExt4('chain'), base);
  qemuImg('create', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top);
  const baseHash = sha256File(base);
  assertRan(imgBoot(top, '--', 'sh', 'test.sh', 'on top', '0'), 0);
  assert.equal(sha256File(base), baseHash);
  assert.equal(qemuCheck(top).status, 0);
  assert.equal(writtenIn(top), 'on top\n');
  assert.equal(writtenIn(base), null);
});

test('GPT disk: the first partition with a filesystem (vfat) by default, -P 2 for the ext4 one', { timeout: TIMEOUT_MS }, () => {
  const disk = path.join(dir, 'gpt.raw');
  fs.writeFileSync(disk, '');
  fs.truncateSync(disk, 80 << 20);
  const table = run('sfdisk', ['-q', disk], 'label: gpt\nstart=2048, size=65536\nstart=69632, size=81920\n');
  assert.equal(table.status, 0, table.stderr);
  const fat = path.join(dir, 'fat.raw');
  assert.equal(run('mkfs.vfat', ['-C', fat, String(32 << 10)]).status, 0);
  assert.equal(run('dd', [`if=${fat}`, `of=${disk}`, 'bs=1M', 'seek=1', 'conv=notrunc,sparse']).status, 0);
  const tree = path.join(dir, 'gpt.tree');
  fs.mkdirSync(tree);
  fs.writeFileSync(path.join(tree, 'test.sh'), TEST_SH);
  fs.writeFileSync(path.join(tree, 'data.txt'), DATA);
  const mk = run('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, '-E', `offset=${69632 * 512}`, disk, '40M']);
  assert.equal(mk.status, 0, mk.stderr);

  const r = imgBoot(disk, '--', 'sh', '-c', 'echo on fat > note.txt && cat note.txt && grep -o " /mnt vfat rw" /proc/mounts');
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, 'on fat\n /mnt vfat rw\n');
  assert.equal(run('dd', [`if=${disk}`, `of=${fat}`, 'bs=1M', 'skip=1', 'count=32']).status, 0);
  const fsck = run('fsck.vfat', ['-n', fat]);
  assert.equal(fsck.status, 0, fsck.stdout);
  assert.match(fsck.stdout, /: 1 files/); // note.txt (an empty one says 0)

  assertRan(imgBoot('-P', '2', disk, '--', 'sh', 'test.sh', 'in partition 2', '0'), 0);
  const p2 = path.join(dir, 'p2.raw');
  assert.equal(run('dd', [`if=${disk}`, `of=${p2}`, 'bs=512', 'skip=69632', 'count=81920']).status, 0);
  assert.equal(run('e2fsck', ['-fn', p2]).status, 0);
  assert.equal(run('debugfs', ['-R', 'cat /written.txt', p2]).stdout, 'in partition 2\n');
});

test('library API on a raw file, read-only: a missing command is status 127 with sh\'s message', { timeout: TIMEOUT_MS }, async () => {
  const raw = makeExt4('raw');
  const before = sha256File(raw);
  const result = await boot(raw, { command: ['sh', '-c', 'ls; touch new; no-such-command'], readOnly: true, engine: ENGINE });
  assert.equal(result.exitCode, 127);
  assert.match(result.output, /data\.txt/);
  assert.match(result.output, /touch: new: Read-only file system/);
  assert.match(result.output, /no-such-command: not found/);
  assert.equal(sha256File(raw), before);
});

test('a guest that never ends: --timeout stops it with status 124 and a clear message', { timeout: TIMEOUT_MS }, () => {
  const raw = makeExt4('timeout');
  const r = imgBoot('--timeout', '2', raw, '--', 'sleep', '1000');
  assert.equal(r.status, 124);
  assert.match(r.stderr, /img: the guest did not finish within 2 s \(--timeout\): stopped it/);
  // The native runner's timeout, where /dev/kvm opens at all (here it may be too slow to boot).
  if (kvmStatus().usable) {
    const n = imgBoot('--engine', 'native', '--timeout', '2', raw, '--', 'sleep', '1000');
    assert.equal(n.status, 124, n.stderr);
  }
});

test('bad input fails before booting, with one clear line and nothing left behind', () => {
  const raw = makeExt4('bad');
  const blank = path.join(dir, 'blank.qcow2');
  qemuImg('create', '-f', 'qcow2', blank, '64M');
  const cases: [string[], RegExp][] = [
    [['--kernel', path.join(dir, 'no-such-kernel'), raw, '--', 'true'], /^img: .*no-such-kernel/m],
    [[blank, '--', 'true'], /^img: the image holds no filesystem \(and no partition table\)$/m],
    [['-P', '2', raw, '--', 'true'], /^img: the image has no partition 2/m],
    [['--read-only', '--snapshot', raw, '--', 'true'], /^img: --read-only and --snapshot exclude each other$/m],
    [[raw], /^img: nothing to do: give a command/m],
    [['--engine', 'kvm', raw, '--', 'true'], /^img: --engine must be native or qemu/m],
    [[path.join(dir, 'missing.qcow2'), '--', 'true'], /^img: .*missing\.qcow2: no such file$/m],
  ];
  for (const [args, message] of cases) {
    const r = imgBoot(...args);
    assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, message);
  }
  // No hardware KVM and no qemu on PATH: an error naming what to install.
  if (!kvmStatus().hardware) {
    const r = run('env', ['PATH=/nonexistent', `TMPDIR=${imgTmp}`, process.execPath, IMG, 'boot', raw, '--', 'true']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^img: \/dev\/kvm .*, so the native runner cannot be used, and qemu-system-x86_64 is not installed: install qemu-system-x86/m);
  }
});

test('root mode: a debootstrapped Debian boots with its initramfs loading virtio and runs the given init; --chroot runs its tools', { timeout: 2 * TIMEOUT_MS }, (t) => {
  if (process.getuid?.() !== 0) return t.skip('debootstrap needs root');
  const tree = path.join(dir, 'debian');
  const ds = run('debootstrap', ['--variant=minbase', 'bookworm', tree, 'http://deb.debian.org/debian']);
  assert.equal(ds.status, 0, `debootstrap: ${ds.stderr}`);
  fs.writeFileSync(
    path.join(tree, 'img-init'),
    '#!/bin/sh\necho "root mode ok: Debian $(cat /etc/debian_version)"\ngrep -o "^virtio_blk" /proc/modules\necho b > /proc/sysrq-trigger\n',
    { mode: 0o755 },
  );
  const rootfs = path.join(dir, 'debian.raw');
  fs.writeFileSync(rootfs, '');
  fs.truncateSync(rootfs, 1 << 30);
  const mk = run('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, rootfs]);
  fs.rmSync(tree, { recursive: true, force: true });
  assert.equal(mk.status, 0, mk.stderr);
  const r = imgBoot('--root', '--append', 'init=/img-init', rootfs);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^root mode ok: Debian 12\.\d+\r?$/m);
  assert.match(r.stdout, /^virtio_blk\r?$/m);

  // The same image in appliance mode, chrooted: the distribution's own tools run.
  const c = imgBoot('--snapshot', '--chroot', rootfs, '--', 'dpkg-query', '-W', '-f=${Package} ${Status}\\n', 'dpkg');
  assert.equal(c.status, 0, c.stderr);
  assert.equal(c.stdout, 'dpkg install ok installed\n');
});
