/** The appliance toolkit: cpio newc (read back by GNU cpio), module resolution (vs modprobe), bzImage headers. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { CpioWriter } from '../../src/runner/cpio';
import { bzImageInfo, findKernel, XLF_KERNEL_64 } from '../../src/runner/kernel';
import { resolveModules } from '../../src/runner/modules';
import { prng, randomBytes, run, tempDir } from '../helpers';

test('cpio: GNU cpio extracts what CpioWriter wrote, byte for byte', () => {
  const dir = tempDir();
  const blob = randomBytes(prng(7), 100_003);
  const w = new CpioWriter();
  w.parents('usr/bin/x').file('usr/bin/data', blob, 0o600).file('usr/bin/empty', new Uint8Array(0)).file('a', Buffer.from('odd'), 0o755);
  w.symlink('usr/bin/link', 'data').dir('dev').node('dev/console', 'c', 5, 1);
  const archive = path.join(dir, 'a.cpio');
  fs.writeFileSync(archive, w.finish());
  const list = run('sh', ['-c', `cpio -itv < ${archive}`]);
  assert.equal(list.status, 0, list.stderr);
  assert.match(list.stdout, /crw------- .* 5, +1 .*dev\/console/);
  assert.match(list.stdout, /lrwxrwxrwx .*usr\/bin\/link -> data/);
  const out = path.join(dir, 'out');
  fs.mkdirSync(out);
  // --no-absolute-filenames and no device nodes: extract as a normal user would.
  const x = run('sh', ['-c', `cd ${out} && cpio -id --no-absolute-filenames < ${archive} 2>&1`]);
  assert.equal(x.status, 0, x.stdout);
  assert.deepEqual(fs.readFileSync(path.join(out, 'usr/bin/data')), Buffer.from(blob));
  assert.equal(fs.statSync(path.join(out, 'usr/bin/data')).mode & 0o777, 0o600);
  assert.equal(fs.statSync(path.join(out, 'a')).mode & 0o777, 0o755);
  assert.equal(fs.readFileSync(path.join(out, 'a'), 'utf8'), 'odd');
  assert.equal(fs.statSync(path.join(out, 'usr/bin/empty')).size, 0);
  assert.equal(fs.readlinkSync(path.join(out, 'usr/bin/link')), 'data');
});

test('cpio: refuses absolute, dotted and duplicate paths', () => {
  const w = new CpioWriter();
  for (const bad of ['/etc', 'a/../b', 'a//b', '', 'a/', './a']) assert.throws(() => w.file(bad, new Uint8Array(1)), /bad path/);
  w.dir('etc');
  assert.throws(() => w.dir('etc'), /added twice/);
});

const release = fs.existsSync('/lib/modules') ? fs.readdirSync('/lib/modules').sort().pop() : undefined;

test('modules: the virtio-blk and filesystem closure holds what modprobe would load, in order', { skip: !release && 'no /lib/modules' }, () => {
  for (const names of [['virtio_blk'], ['virtio_pci', 'virtio_blk'], ['btrfs'], ['xfs'], ['vfat'], ['kvm_amd']]) {
    const mine = resolveModules(release!, names).map((m) => m.path);
    const theirs: string[] = [];
    for (const name of names) {
      const r = run('modprobe', ['--show-depends', '-S', release!, name]);
      assert.equal(r.status, 0, r.stderr);
      for (const line of r.stdout.split('\n')) {
        const m = /^insmod (\S+)/.exec(line);
        if (m && !theirs.includes(m[1])) theirs.push(m[1]);
      }
    }
    // kmod follows only the first softdep line of a module; img follows all (a superset).
    for (const p of theirs) assert.ok(mine.includes(p), `${names}: ${p} missing`);
    if (!names.includes('btrfs')) assert.deepEqual([...mine].sort(), [...theirs].sort(), names.join(','));
    for (const [i, p] of mine.entries()) {
      // every module comes after everything modules.dep says it needs
      const need = resolveModules(release!, [path.basename(p, '.ko')]).map((m) => m.path).slice(0, -1);
      for (const n of need) assert.ok(mine.indexOf(n) < i, `${n} before ${p}`);
    }
  }
});

test('modules: built-ins skipped, unknown names and cycles refused', () => {
  const root = tempDir();
  const dir = path.join(root, '9.9');
  fs.mkdirSync(dir);
  fs.writeFileSync(path.join(dir, 'modules.dep'), 'kernel/a.ko: kernel/b-x.ko\nkernel/b-x.ko:\nkernel/c.ko: kernel/d.ko\nkernel/d.ko: kernel/c.ko\n');
  fs.writeFileSync(path.join(dir, 'modules.builtin'), 'kernel/e.ko\n');
  fs.writeFileSync(path.join(dir, 'modules.softdep'), 'softdep a pre: crypto-f nothere post: b\n');
  fs.writeFileSync(path.join(dir, 'modules.alias'), 'alias crypto-f f\nalias pci:v* a\n');
  fs.appendFileSync(path.join(dir, 'modules.dep'), 'kernel/f.ko:\n');
  assert.deepEqual(resolveModules('9.9', ['a', 'e'], root).map((m) => m.name), ['f', 'b_x', 'a']);
  assert.throws(() => resolveModules('9.9', ['zz'], root), /no module 'zz'/);
  assert.throws(() => resolveModules('9.9', ['c'], root), /cycle/);
  assert.throws(() => resolveModules('8.8', ['a'], root), /cannot read .*modules.dep/);
});

test('kernel: the host kernel offers the 64-bit entry; hostile headers are refused', { skip: !fs.existsSync('/boot') && 'no /boot' }, (t) => {
  let choice;
  try {
    choice = findKernel();
  } catch {
    return t.skip('no kernel in /boot');
  }
  const info = bzImageInfo(choice.kernel);
  assert.ok(info.protocol >= 0x20c);
  assert.ok(info.xloadflags & XLF_KERNEL_64);
  assert.ok(choice.release.length > 0 && fs.existsSync(choice.modulesDir), choice.modulesDir);
  assert.ok(info.version.startsWith(choice.release));

  const dir = tempDir();
  const good = fs.readFileSync(choice.kernel).subarray(0, 64 << 10);
  const variant = (name: string, edit: (b: Buffer) => Buffer): string => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, edit(Buffer.from(good)));
    return file;
  };
  assert.throws(() => bzImageInfo(variant('short', (b) => b.subarray(0, 0x220))), /not a Linux bzImage/);
  assert.throws(() => bzImageInfo(variant('nohdrs', (b) => (b.writeUInt32LE(0, 0x202), b))), /not a Linux bzImage/);
  assert.throws(() => bzImageInfo(variant('old', (b) => (b.writeUInt16LE(0x20a, 0x206), b))), /boot protocol version 2.10/);
  assert.throws(() => bzImageInfo(variant('no64', (b) => (b.writeUInt16LE(0, 0x236), b))), /no 64-bit entry/);
  assert.throws(() => bzImageInfo(variant('sects', (b) => (b.writeUInt8(255, 0x1f1), b.subarray(0, 0x1000)))), /setup_sects 255/);
  assert.throws(() => findKernel(path.join(dir, 'missing')), /cannot read kernel/);
  assert.throws(() => findKernel(undefined, dir), /no kernel found/);
});
