/** img boot's host-side parts without a VM: the console result reader, sh quoting, engine choice. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { test } from 'node:test';
import { buildAppliance } from '../../src/runner/appliance';
import { ConsoleResult } from '../../src/runner/console-result';
import { chooseEngine } from '../../src/runner/engine';
import { KvmStatus } from '../../src/runner/vm';
import { shellQuote } from '../../src/runner/init-script';
import { findKernel } from '../../src/runner/kernel';
import { prng, run, tempDir } from '../helpers';

const NONCE = '0123456789abcdef';

function readAll(chunks: Buffer[]): { out: string; noise: string; r: ConsoleResult; held: () => string } {
  const out: Buffer[] = [];
  const noise: Buffer[] = [];
  const r = new ConsoleResult(NONCE, (c) => out.push(Buffer.from(c)), (c) => noise.push(Buffer.from(c)));
  for (const c of chunks) r.feed(c);
  const seen = out.length;
  return { out: Buffer.concat(out).toString(), noise: Buffer.concat(noise).toString(), r, held: () => Buffer.concat(out.slice(seen)).toString() };
}

/** Splits a console transcript at random points, as a serial port delivers it. */
function splitRandomly(text: string, seed: number): Buffer[] {
  const buf = Buffer.from(text);
  const next = prng(seed);
  const chunks: Buffer[] = [];
  for (let at = 0; at < buf.length; ) {
    const n = 1 + (next() % 9);
    chunks.push(buf.subarray(at, at + n));
    at += n;
  }
  return chunks;
}

test('console: output between the markers comes back byte for byte, however the bytes are split', () => {
  const output = 'line 1\nIMG-END-not-the-nonce 3\n\nIMG-BEGIN-0123456789abcdef is not special here\nno newline at the end';
  const transcript = `[    0.1] kernel noise\r\nIMG-BEGIN-${NONCE}\n${output}\nIMG-END-${NONCE} 42\nreboot: Restarting system\r\n`;
  for (let seed = 1; seed <= 50; seed++) {
    const { out, noise, r } = readAll(splitRandomly(transcript, seed));
    assert.equal(out, output);
    assert.deepEqual(r.outcome, { kind: 'status', status: 42 });
    assert.match(noise, /kernel noise/);
    assert.match(noise, /Restarting/);
  }
});

test('console: an init failure before the command is a fail outcome with its message', () => {
  const { out, r } = readAll(splitRandomly(`noise\r\n\r\nIMG-FAIL-${NONCE} cannot mount /dev/vda1 (ext4): bad superblock\r\nmore\r\n`, 3));
  assert.equal(out, '');
  assert.deepEqual(r.outcome, { kind: 'fail', message: 'cannot mount /dev/vda1 (ext4): bad superblock' });
});

test('console: hostile or truncated transcripts give no status', () => {
  // Markers with another nonce, a status out of range, a guest that dies mid-output.
  assert.equal(readAll([Buffer.from(`IMG-BEGIN-ffffffffffffffff\nIMG-END-ffffffffffffffff 0\n`)]).r.outcome, undefined);
  assert.deepEqual(readAll([Buffer.from(`IMG-BEGIN-${NONCE}\nx\nIMG-END-${NONCE} 256\n`)]).r.outcome, { kind: 'fail', message: "bad result line '256'" });
  const cut = readAll([Buffer.from(`IMG-BEGIN-${NONCE}\npartial output\nIMG-END-${NONCE.slice(0, 5)}`)]);
  assert.equal(cut.r.outcome, undefined);
  cut.r.finish();
  assert.equal(cut.out + cut.held(), `partial output\nIMG-END-${NONCE.slice(0, 5)}`);
  // A result line that never ends is cut off rather than buffered without bound.
  const runaway = readAll([Buffer.from(`IMG-BEGIN-${NONCE}\n\nIMG-END-${NONCE} `), Buffer.alloc(10_000, 0x31)]);
  assert.equal(runaway.r.outcome?.kind, 'fail');
});

test('init script: sh reads every quoted word back as it was', () => {
  const words = ['plain', '', "it's", 'a b\tc', '$HOME `id` $(id)', '"\\', 'line\nbreak', '-n', '*'];
  const r = run('/bin/busybox', ['sh', '-c', `set -- ${words.map(shellQuote).join(' ')}; for w in "$@"; do printf '%s\\0' "$w"; done`]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(r.stdout.split('\0').slice(0, -1), words);
});

test('engine choice: native only on hardware KVM; qemu with TCG otherwise, and a clear error without qemu', () => {
  const hw: KvmStatus = { usable: true, hardware: true };
  const pvm: KvmStatus = { usable: true, hardware: false, why: '/dev/kvm is a software hypervisor (kvm_pvm)' };
  const none: KvmStatus = { usable: false, hardware: false, why: '/dev/kvm is missing or not accessible' };
  const yes = () => true;
  const no = () => false;
  assert.deepEqual(chooseEngine(undefined, hw, yes), { engine: 'native', accel: 'kvm' });
  assert.deepEqual(chooseEngine('qemu', hw, yes), { engine: 'qemu', accel: 'kvm', note: undefined });
  const soft = chooseEngine(undefined, pvm, yes);
  assert.equal(soft.engine, 'qemu');
  assert.equal(soft.accel, 'tcg');
  assert.equal(soft.note, '/dev/kvm is a software hypervisor (kvm_pvm); using qemu-system-x86_64 with TCG');
  assert.equal(chooseEngine(undefined, none, yes).accel, 'tcg');
  assert.equal(chooseEngine('native', none, no).engine, 'native'); // the runner itself reports what is wrong
  assert.throws(() => chooseEngine(undefined, none, no), /not accessible, so the native runner cannot be used, and qemu-system-x86_64 is not installed: install qemu-system-x86/);
  assert.throws(() => chooseEngine('qemu', hw, no), /install qemu-system-x86/);
});

test('appliance: GNU cpio lists busybox, the console node, /init and the modules in the order init loads them', () => {
  const kernel = findKernel();
  const request = { nonce: NONCE, release: kernel.release, modulesRoot: path.dirname(kernel.modulesDir), device: 'vda1', readOnly: false, chroot: false, argv: ['sh', 'test.sh'] };
  const archive = path.join(tempDir(), 'appliance.cpio');
  fs.writeFileSync(archive, gunzipSync(buildAppliance({ ...request, fs: 'xfs' })));
  const list = run('sh', ['-c', `cpio -itv < ${archive}`]);
  assert.equal(list.status, 0, list.stderr);
  assert.match(list.stdout, /^-rwxr-xr-x .* bin\/busybox$/m);
  assert.match(list.stdout, /^crw------- .* 5, +1 .* dev\/console$/m);
  assert.match(list.stdout, /^-rwxr-xr-x .* init$/m);
  const init = run('sh', ['-c', `cpio -i --to-stdout init < ${archive}`]).stdout;
  const loaded = /for m in (.*); do/.exec(init)![1].split(' ').map((m) => path.basename(m, ".ko'"));
  // Dependencies first (modules.dep), the disk's driver, then the filesystem's.
  for (const [before, after] of [['virtio_ring', 'virtio_pci'], ['virtio', 'virtio_blk'], ['libcrc32c', 'xfs'], ['virtio_pci', 'virtio_blk']]) {
    assert.ok(loaded.indexOf(before) >= 0 && loaded.indexOf(before) < loaded.indexOf(after), `${before} before ${after}: ${loaded.join(' ')}`);
  }
  for (const m of loaded) assert.match(list.stdout, new RegExp(`lib/modules/${m}\\.ko$`, 'm'));
  assert.match(init, /mount -t xfs -o rw \/dev\/vda1 \/mnt/);
  assert.match(init, /set -- 'sh' 'test.sh'/);
  // ext4 is built into this kernel: nothing to load for it.
  const ext4Init = gunzipSync(buildAppliance({ ...request, fs: 'ext4', readOnly: true }));
  assert.doesNotMatch(ext4Init.toString('latin1'), /lib\/modules\/ext4\.ko/);
  assert.match(ext4Init.toString('latin1'), /mount -t ext4 -o ro,noload/);
  assert.throws(() => buildAppliance({ ...request, fs: 'ntfs' }), /the appliance cannot mount a ntfs filesystem/);
});
