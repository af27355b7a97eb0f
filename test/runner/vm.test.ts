/**
 * The KVM runner with the tiny test guest (test/runner/guest): boot through the bzImage
 * loader, UART, PCI, virtio-blk through the file and NBD backends (img serve over qcow2
 * and raw, unix socket and TCP), hostile guests, stop/timeout, errors, and no leaks.
 */
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { ImageError } from '../../src/block/errors';
import { DiskConfig, kvmStatus, startVm, Vm, VmConfig, VmExit } from '../../src/runner/vm';
import { prng, qemuImg, randomBytes, ROOT, tempDir } from '../helpers';
import { imgServe } from '../nbd/servers';
import { setupHeader, tinyGuest } from './guest';

const kvm = kvmStatus();
const skip = kvm.usable ? false : `no usable /dev/kvm: ${kvm.why}`;
const DEBIAN_KERNEL = fs.readdirSync('/boot').filter((f) => f.startsWith('vmlinuz-')).map((f) => path.join('/boot', f))[0];

interface Run {
  out: string;
  exit: VmExit;
}

function collect(vm: Vm): Promise<Run> {
  let out = '';
  vm.console.on('data', (d: Buffer) => (out += d.toString('latin1')));
  return vm.exited.then(async (exit) => {
    await new Promise((r) => setImmediate(r)); // the stream's last batch
    return { out, exit };
  });
}

function guest(cmdline: string, disks: DiskConfig[] = [], extra: Partial<VmConfig> = {}): Promise<Run> {
  return collect(startVm({ kernel: tinyGuest(), cmdline, memoryMiB: 64, timeoutMs: 60_000, disks, ...extra }));
}

/** The guest's 64-bit sum of little-endian words, as it prints it. */
function guestSum(b: Buffer): string {
  let s = 0n;
  for (let i = 0; i + 8 <= b.length; i += 8) s = (s + b.readBigUInt64LE(i)) & 0xffffffffffffffffn;
  return s.toString(16).padStart(16, '0');
}

function line(out: string, prefix: string): string {
  const l = out.split('\n').find((x) => x.startsWith(prefix));
  if (l === undefined) assert.fail(`no "${prefix}" line in:\n${out}`);
  return l;
}

/** Checks the blk scenario's transcript: 16 sectors at 0 copied to `dst`, read back equal. */
function assertBlkTranscript(out: string, source: Buffer, id = 'img-disk-0'): void {
  const sum = guestSum(source.subarray(0, 16 * 512));
  assert.equal(line(out, 'id status'), `id status 0 ${id}`);
  assert.equal(line(out, 'read status'), `read status 0 sum ${sum}`);
  assert.equal(line(out, 'write status'), 'write status 0');
  assert.equal(line(out, 'flush status'), 'flush status 0');
  assert.equal(line(out, 'readback status'), `readback status 0 sum ${sum}`);
  assert.equal(line(out, 'past end status'), 'past end status 1');
  assert.equal(line(out, 'unknown type status'), 'unknown type status 2');
}

function threads(): number {
  return fs.readdirSync('/proc/self/task').length;
}
function fds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}
/** Virtual size of this process in MiB: a leaked guest RAM mapping shows here. */
function vmSizeMiB(): number {
  return Number(/^VmSize:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))![1]) / 1024;
}

describe('runner: tiny guest', { skip }, () => {
  const dir = tempDir('img-runner-');
  const source = randomBytes(prng(7), 1 << 20);

  it('boots through the bzImage loader, prints over the UART and ends on a triple fault', async () => {
    const r = await guest('test=hello extra=1');
    assert.deepEqual(r.exit, { reason: 'shutdown', code: 0 });
    assert.match(r.out, /^guest: test=hello extra=1\nhello from the tiny guest\nguest: done\n$/);
  });

  it('lists a host bridge and one legacy virtio-blk function per disk on PCI bus 0', async () => {
    const a = path.join(dir, 'pci-a.raw'), b = path.join(dir, 'pci-b.raw');
    fs.writeFileSync(a, Buffer.alloc(4096));
    fs.writeFileSync(b, Buffer.alloc(4096));
    const r = await guest('test=pci', [{ kind: 'file', path: a }, { kind: 'file', path: b, readOnly: true }]);
    assert.equal(r.exit.reason, 'shutdown');
    const pci = r.out.split('\n').filter((l) => l.startsWith('pci '));
    assert.deepEqual(pci, [
      'pci 00:00.0 8086:1237 class 060000 bar0 00000000 irq 0',
      'pci 00:01.0 1af4:1001 class 010000 bar0 0000c001 irq 10',
      'pci 00:02.0 1af4:1001 class 010000 bar0 0000c041 irq 11',
    ]);
  });

  it('passes an e820 map that moves RAM above the 32-bit PCI hole to 4 GiB', async () => {
    const r = await guest('test=e820', [], { memoryMiB: 4096 + 512 });
    assert.equal(r.exit.reason, 'shutdown');
    assert.deepEqual(r.out.split('\n').filter((l) => l.startsWith('e820 ')), [
      'e820 0000000000000000 000000000009fc00 1',
      'e820 000000000009fc00 0000000000060400 2',
      'e820 0000000000100000 00000000bff00000 1',
      'e820 0000000100000000 0000000060000000 1',
    ]);
  });

  it('reads, writes, flushes and answers GET_ID through the file backend', async () => {
    const file = path.join(dir, 'file.raw');
    fs.writeFileSync(file, source);
    const r = await guest('test=blk dst=1024', [{ kind: 'file', path: file }]);
    assert.deepEqual(r.exit, { reason: 'shutdown', code: 0 }, r.out);
    assert.match(r.out, /blk: features 00000244 capacity 2048 queue 256/);
    assertBlkTranscript(r.out, source);
    const after = fs.readFileSync(file);
    assert.ok(after.subarray(1024 * 512, 1024 * 512 + 16 * 512).equals(source.subarray(0, 16 * 512)), 'copied sectors');
    assert.ok(after.subarray(0, 1024 * 512).equals(source.subarray(0, 1024 * 512)), 'nothing else written');
    assert.ok(after.subarray((1024 + 16) * 512).equals(source.subarray((1024 + 16) * 512)), 'nothing else written');
  });

  it('drives the second disk when told to, and a read-only disk refuses OUT', async () => {
    const a = path.join(dir, 'ro-a.raw'), b = path.join(dir, 'ro-b.raw');
    fs.writeFileSync(a, Buffer.alloc(1 << 20));
    fs.writeFileSync(b, source);
    const r = await guest('test=blk disk=1', [{ kind: 'file', path: a }, { kind: 'file', path: b, readOnly: true }]);
    assert.equal(r.exit.reason, 'shutdown');
    assert.match(r.out, /blk: features 00000264 /); // VIRTIO_BLK_F_RO offered
    assert.equal(line(r.out, 'id status'), 'id status 0 img-disk-1');
    assert.equal(line(r.out, 'read status'), `read status 0 sum ${guestSum(source.subarray(0, 8192))}`);
    assert.equal(line(r.out, 'write status'), 'write status 1');
    assert.ok(fs.readFileSync(b).equals(source), 'read-only disk unchanged');
    assert.ok(fs.readFileSync(a).equals(Buffer.alloc(1 << 20)), 'first disk untouched');
  });

  for (const [format, transport] of [['qcow2', 'unix'], ['raw', 'tcp']] as const) {
    it(`reads, writes and flushes a ${format} image served by img serve over ${transport === 'unix' ? 'a unix socket' : 'TCP'}`, async () => {
      const raw = path.join(dir, `nbd-src-${format}.raw`), image = path.join(dir, `nbd-${format}.${format}`);
      fs.writeFileSync(raw, source);
      qemuImg('convert', '-f', 'raw', '-O', format, raw, image);
      const socket = path.join(dir, `nbd-${format}.sock`);
      const served = await imgServe(transport === 'unix' ? ['-f', format, '-k', socket, image] : ['-f', format, '-p', '0', image]);
      let disk: DiskConfig;
      if (transport === 'unix') disk = { kind: 'nbd', socket };
      else {
        const u = new URL(served.uris[0]);
        disk = { kind: 'nbd', host: u.hostname, port: Number(u.port) };
      }
      const r = await guest('test=blk dst=300', [disk]);
      await served.stop();
      assert.deepEqual(r.exit, { reason: 'shutdown', code: 0 }, r.out);
      assertBlkTranscript(r.out, source);
      if (format === 'qcow2') qemuImg('check', image);
      const back = path.join(dir, `nbd-back-${format}.raw`);
      qemuImg('convert', '-f', format, '-O', 'raw', image, back);
      const expect = Buffer.from(source);
      source.copy(expect, 300 * 512, 0, 16 * 512);
      assert.ok(fs.readFileSync(back).equals(expect), 'image holds the copied sectors and nothing else changed');
    });
  }

  it('ends with an error naming the export when the NBD server is not there', async () => {
    const r = await guest('test=blk', [{ kind: 'nbd', socket: path.join(dir, 'nobody.sock') }]);
    assert.equal(r.exit.reason, 'error');
    assert.match(r.exit.message ?? '', /nobody\.sock: cannot connect/);
  });

  it('ends with an error when the NBD server goes away mid-run', async () => {
    const image = path.join(dir, 'gone.raw');
    fs.writeFileSync(image, Buffer.alloc(64 << 20));
    const socket = path.join(dir, 'gone.sock');
    const served = await imgServe(['-f', 'raw', '-k', socket, image]);
    const vm = startVm({ kernel: tinyGuest(), cmdline: 'test=bench mode=read mib=100000', memoryMiB: 64, timeoutMs: 60_000, disks: [{ kind: 'nbd', socket }] });
    let out = '';
    vm.console.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('bench start')) void served.stop('SIGKILL');
    });
    const exit = await vm.exited;
    assert.equal(exit.reason, 'error', out);
    assert.match(exit.message ?? '', /NBD server closed the connection/);
  });

  const hostile: [string, RegExp][] = [
    ['baddesc', /descriptor points outside guest RAM/],
    ['loopchain', /descriptor chain loops/],
    ['badhead', /descriptor head 999 is out of range/],
    ['badidx', /available ring index moved by more than the queue size/],
    ['badring pfn=1048575', /virtqueue is outside guest RAM/],
  ];
  for (const [scenario, message] of hostile) {
    it(`a hostile guest (${scenario}) ends the VM with an error, and the next VM boots`, async () => {
      const file = path.join(dir, 'hostile.raw');
      fs.writeFileSync(file, source);
      const r = await guest(`test=${scenario}`, [{ kind: 'file', path: file }]);
      assert.equal(r.exit.reason, 'error', r.out);
      assert.notEqual(r.exit.code, 0);
      assert.match(r.exit.message ?? '', message);
      assert.ok(fs.readFileSync(file).equals(source));
      assert.equal((await guest('test=hello')).exit.reason, 'shutdown');
    });
  }

  it('ignores writes and reads of ports nothing decodes (reads float high)', async () => {
    const r = await guest('test=ports');
    assert.equal(r.exit.reason, 'shutdown');
    assert.equal(line(r.out, 'ports ok'), 'ports ok ffffffff');
  });

  for (const scenario of ['spin', 'halt']) {
    it(`a guest that never exits (${scenario}) ends on the host-side timeout`, async () => {
      const r = await guest(`test=${scenario}`, [], { timeoutMs: 1500 });
      assert.equal(r.exit.reason, 'timeout');
      assert.notEqual(r.exit.code, 0);
    });
  }

  it('stop() ends a running guest and resolves once it is over', async () => {
    const vm = startVm({ kernel: tinyGuest(), cmdline: 'test=spin', memoryMiB: 64 });
    const run = collect(vm);
    await new Promise((r) => setTimeout(r, 300));
    const exit = await vm.stop();
    assert.equal(exit.reason, 'stopped');
    assert.notEqual(exit.code, 0);
    assert.deepEqual((await run).exit, exit);
    assert.deepEqual(await vm.stop(), exit, 'stopping again is harmless');
  });

  it('delivers bytes from sendConsole to the UART receive side', async () => {
    const vm = startVm({ kernel: tinyGuest(), cmdline: 'test=echo', memoryMiB: 64, timeoutMs: 60_000 });
    let out = '';
    vm.console.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('echo ready\n') && !out.includes('ping')) vm.sendConsole('ping over serial\n');
    });
    const exit = await vm.exited;
    assert.equal(exit.reason, 'shutdown');
    assert.match(out, /echo ready\nping over serial\nguest: done\n/);
  });

  it('leaves no threads, file descriptors or guest memory behind', async () => {
    const file = path.join(dir, 'leak.raw');
    fs.writeFileSync(file, source);
    await guest('test=hello'); // the first VM installs the kick signal handler and loads the addon
    const before = { threads: threads(), fds: fds(), vm: vmSizeMiB() };
    for (let i = 0; i < 5; i++) {
      await guest('test=blk', [{ kind: 'file', path: file }], { memoryMiB: 256 });
      await guest('test=spin', [], { timeoutMs: 200, memoryMiB: 256 });
      await guest('test=baddesc', [{ kind: 'file', path: file }], { memoryMiB: 256 });
    }
    assert.equal(threads(), before.threads);
    assert.equal(fds(), before.fds);
    // 15 VMs of 256 MiB: leaking their RAM would add 3.75 GiB of address space.
    assert.ok(vmSizeMiB() - before.vm < 512, `address space grew by ${vmSizeMiB() - before.vm} MiB`);
  });
});

describe('runner: configuration errors', { skip }, () => {
  const dir = tempDir('img-runner-err-');

  function startError(config: VmConfig): ImageError {
    try {
      void startVm(config);
    } catch (e) {
      if (e instanceof ImageError) return e;
      assert.fail(`not an ImageError: ${String(e)}`);
    }
    return assert.fail('startVm did not throw');
  }

  it('refuses a file that is not a bzImage', () => {
    const f = path.join(dir, 'junk');
    fs.writeFileSync(f, randomBytes(prng(3), 65536));
    const e = startError({ kernel: f });
    assert.equal(e.code, 'BAD_HEADER');
    assert.match(e.message, /not a bzImage/);
  });

  it('refuses an old boot protocol and a kernel without the 64-bit entry', () => {
    const body = Buffer.alloc(8192, 0xf4);
    const old = path.join(dir, 'old');
    fs.writeFileSync(old, Buffer.concat([setupHeader(8192, { version: 0x020a }), body]));
    assert.match(startError({ kernel: old }).message, /boot protocol 2\.10 is older than 2\.12/);
    const no64 = path.join(dir, 'no64');
    fs.writeFileSync(no64, Buffer.concat([setupHeader(8192, { xloadflags: 0 }), body]));
    assert.match(startError({ kernel: no64 }).message, /no 64-bit entry/);
  });

  it('names a missing kernel', () => {
    assert.equal(startError({ kernel: path.join(dir, 'nope') }).code, 'NOT_FOUND');
  });

  it('says when memory is too small for the kernel', () => {
    const big = path.join(dir, 'big');
    fs.writeFileSync(big, Buffer.concat([setupHeader(200 << 20), Buffer.alloc(8192, 0xf4)]));
    const e = startError({ kernel: big, memoryMiB: 128 });
    assert.equal(e.code, 'INVALID_ARGUMENT');
    assert.match(e.message, /too little memory: this kernel needs at least 201 MiB/);
    assert.match(startError({ kernel: tinyGuest(), memoryMiB: 4 }).message, /memory must be/);
  });

  it('loads the Debian cloud kernel and its initrd-less setup without an error', { skip: !DEBIAN_KERNEL && 'no /boot/vmlinuz-*' }, async () => {
    assert.match(startError({ kernel: DEBIAN_KERNEL, memoryMiB: 64 }).message, /too little memory/);
    const vm = startVm({ kernel: DEBIAN_KERNEL, memoryMiB: 256 });
    await new Promise((r) => setTimeout(r, 500));
    const exit = await vm.stop();
    assert.equal(exit.reason, 'stopped', exit.message); // still decompressing: no loader or KVM error
  });
});

describe('runner: without a working /dev/kvm', () => {
  // A private mount namespace hides /dev/kvm (or puts /dev/null in its place) for one child.
  const canUnshare = process.getuid?.() === 0 && spawnSync('unshare', ['-m', 'true']).status === 0;
  const probe = `
    const { kvmStatus, startVm } = require(${JSON.stringify(path.join(ROOT, 'dist', 'src', 'runner', 'vm.js'))});
    let error;
    try { startVm({ kernel: process.argv[1] }); } catch (e) { error = { code: e.code, message: e.message }; }
    console.log(JSON.stringify({ status: kvmStatus(), error }));`;
  const cases: [string, string, RegExp][] = [
    ['missing', 'mount -t tmpfs none /dev', /^cannot open \/dev\/kvm: No such file or directory$/],
    ['not KVM', 'mount --bind /dev/null /dev/kvm', /^\/dev\/kvm is not a working KVM device: KVM_GET_API_VERSION: /],
  ];
  for (const [what, setup, why] of cases) {
    it(`kvmStatus and startVm say so in one sentence when /dev/kvm is ${what}`, { skip: !canUnshare && 'needs root and unshare' }, () => {
      const kernel = path.join(tempDir('img-nokvm-'), 'bzImage');
      fs.copyFileSync(tinyGuest(), kernel);
      const r = spawnSync('unshare', ['-m', 'sh', '-c', `${setup} && exec "$0" -e "$1" "$2"`, process.execPath, probe, kernel], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const { status, error } = JSON.parse(r.stdout);
      assert.equal(status.usable, false);
      assert.equal(status.hardware, false);
      assert.match(status.why, why);
      assert.equal(error.code, 'UNSUPPORTED');
      assert.match(error.message, why);
    });
  }
});
