/**
 * The OUTER side of the nested test bed (docs: /work/shared/notes/kvm-testbed.md). Where the host
 * has no hardware virtualisation (here /dev/kvm is kvm_pvm, far too slow for a real kernel), a
 * test script runs inside an outer Linux under qemu TCG with `-cpu max`, whose kvm_amd gives a
 * working /dev/kvm with nested paging. Everything the script needs travels in the outer
 * initramfs (node and its libraries, the project's built files, the inner kernel and
 * initramfs); the disk images travel as a tar on a second virtio disk (the transfer disk), in and
 * back out. With hardware KVM the same script runs directly on the host.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CpioWriter } from '../../../src/runner/cpio';
import { findKernel, KernelChoice } from '../../../src/runner/kernel';
import { resolveModules } from '../../../src/runner/modules';
import { kvmStatus } from '../../../src/runner/vm';
import { ROOT, tempDir } from '../../helpers';

import { BUSYBOX, innerInitramfs } from './inner';

const OUTER_TAG = '@@outer:';
const QEMU = 'qemu-system-x86_64';
/** Firmware qemu -enable-kvm loads for a -kernel boot of the pc machine. */
const QEMU_FIRMWARE = ['/usr/share/seabios/bios-256k.bin', '/usr/share/qemu/linuxboot_dma.bin', '/usr/share/qemu/kvmvapic.bin'];
/** Where things live inside the outer guest. */
const G = { root: '/img', work: '/tmp/work', initrd: '/boot/inner.cpio', node: '/usr/bin/node' };
/** What img boot's appliance loads for an ext4 filesystem on virtio-blk (OuterOptions.kernelModules). */
export const APPLIANCE_MODULES = ['virtio_pci', 'virtio_blk', 'ext4'];
/** The inner kernel inside the outer guest: where findKernel looks, by its release. */
const guestKernel = (k: KernelChoice) => `/boot/vmlinuz-${k.release}`;

/** The host's newest /boot/vmlinuz-* when it is readable and has its modules. */
export function stockKernel(): KernelChoice | undefined {
  try {
    const k = findKernel();
    return fs.existsSync(path.join(k.modulesDir, 'modules.dep')) ? k : undefined;
  } catch {
    return undefined;
  }
}

/** True when /dev/kvm is real hardware virtualisation (vmx/svm, not kvm_pvm). */
export function hardwareKvm(): boolean {
  const s = kvmStatus();
  return s.usable && s.hardware;
}

/** Why the nested test bed cannot run here, or undefined when it can. */
export function unavailable(): string | undefined {
  if (!stockKernel()) return 'no readable /boot/vmlinuz-* with modules (linux-image-cloud-amd64)';
  if (!fs.existsSync(BUSYBOX)) return `no ${BUSYBOX} (busybox-static)`;
  if (!hardwareKvm() && spawnSync(QEMU, ['--version']).status !== 0) return `no ${QEMU} (qemu-system-x86)`;
  return undefined;
}

/** A CpioWriter taking absolute guest paths, parents added as needed, each file once. */
class Tree {
  readonly cpio = new CpioWriter();
  private files = new Set<string>();

  file(guestPath: string, data: Uint8Array, mode = 0o644): void {
    const p = guestPath.replace(/^\/+/, '');
    if (this.files.has(p)) return;
    this.files.add(p);
    this.cpio.parents(p).file(p, data, mode);
  }
  host(guestPath: string, hostPath: string): void {
    this.file(guestPath, fs.readFileSync(hostPath), fs.statSync(hostPath).mode & 0o777);
  }
  /** Every file under hostDir whose name passes keep, at the same relative path under guestDir. */
  tree(guestDir: string, hostDir: string, keep: (name: string) => boolean): void {
    for (const e of fs.readdirSync(hostDir, { withFileTypes: true })) {
      const h = path.join(hostDir, e.name);
      if (e.isDirectory()) this.tree(path.posix.join(guestDir, e.name), h, keep);
      else if (e.isFile() && keep(e.name)) this.host(path.posix.join(guestDir, e.name), h);
    }
  }
  /** A dynamically linked binary with the libraries and loader `ldd` lists, at their paths. */
  binary(guestPath: string, hostPath: string): void {
    this.host(guestPath, hostPath);
    const ldd = spawnSync('ldd', [hostPath], { encoding: 'utf8' });
    for (const m of ldd.stdout.matchAll(/(\/\S+) \(0x/g)) this.host(m[1], m[1]);
  }
}

const isJs = (n: string) => n.endsWith('.js') || n.endsWith('.json');

/** The project as node needs it at run time: built JS, the addons, commander and zstd-napi. */
function addProject(t: Tree): void {
  const at = (p: string) => path.posix.join(G.root, p);
  t.tree(at('dist/src'), path.join(ROOT, 'dist/src'), (n) => n.endsWith('.js'));
  t.tree(at('dist/test/runner/nested'), path.join(ROOT, 'dist/test/runner/nested'), (n) => n.endsWith('.js'));
  t.host(at('dist/test/helpers.js'), path.join(ROOT, 'dist/test/helpers.js'));
  for (const f of ['package.json', 'bin/img', 'build/Release/img_native.node']) t.host(at(f), path.join(ROOT, f));
  t.tree(at('node_modules/commander'), path.join(ROOT, 'node_modules/commander'), isJs);
  const zstd = path.join(ROOT, 'node_modules/zstd-napi');
  for (const f of ['package.json', 'binding.js', 'build/Release/binding.node']) t.host(at(`node_modules/zstd-napi/${f}`), path.join(zstd, f));
  t.tree(at('node_modules/zstd-napi/dist'), path.join(zstd, 'dist'), isJs);
}

/** The outer /init: modules, /dev/kvm, the files in, the test script, the files out, reboot. */
function outerInit(kernel: string, modules: string[], transfer: string[]): string {
  // The transfer disk holds a tar of the files, read in at the start and written back at the
  // end (busybox tar stops at the archive's end marker; what follows on the disk is ignored).
  const copyIn = transfer.length === 0 ? '' : `tar -xf /dev/vda -C ${G.work} || say transfer-in-failed 1\n`;
  const copyOut = transfer.length === 0 ? '' : `tar -cf /dev/vda -C ${G.work} ${transfer.join(' ')} && sync && say transfer-out ok\n`;
  return `#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp ${G.work}
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "${OUTER_TAG}$*"; }
for m in ${modules.join(' ')}; do insmod /lib/modules/$m.ko || say insmod-failed $m; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
[ -c /dev/kvm ] && say kvm 1
export NODE=${G.node} ROOT=${G.root} WORK=${G.work} KERNEL=${kernel} INITRD=${G.initrd} DISK=${G.work}/disk
export GUEST_RUN=${G.root}/dist/test/runner/nested/guest-run.js PATH=/bin:/usr/bin HOME=/tmp
${copyIn}sh /test.sh
rc=$?
sync
${copyOut}say exit $rc
reboot -f
`;
}

export interface OuterOptions {
  kernel: KernelChoice;
  script: string;
  /** Names of the files the script finds in $WORK (they travel in and back out on the transfer disk). */
  transfer?: string[];
  /** Also pack qemu-system-x86_64, its libraries and firmware (for the bench). */
  qemu?: boolean;
  /** Also pack the inner kernel's /lib/modules tree, cut down to these modules (for img boot). */
  kernelModules?: string[];
}

/** /lib/modules/<release> as resolveModules reads it, with only the modules `names` need. */
function addModuleTree(t: Tree, k: KernelChoice, names: string[]): void {
  const guestDir = `/lib/modules/${k.release}`;
  for (const f of ['modules.dep', 'modules.softdep', 'modules.alias', 'modules.builtin', 'modules.builtin.modinfo']) {
    if (fs.existsSync(path.join(k.modulesDir, f))) t.host(`${guestDir}/${f}`, path.join(k.modulesDir, f));
  }
  for (const m of resolveModules(k.release, names)) t.host(`${guestDir}/${path.relative(k.modulesDir, m.path)}`, m.path);
}

/** The outer initramfs (uncompressed newc). */
export function outerInitramfs(o: OuterOptions): Buffer {
  const t = new Tree();
  for (const d of ['dev', 'proc', 'sys', 'tmp']) t.cpio.dir(d);
  t.cpio.node('dev/console', 'c', 5, 1);
  t.host('/bin/busybox', BUSYBOX);
  const mods = resolveModules(o.kernel.release, ['kvm_amd', 'virtio_blk', 'virtio_pci']);
  for (const m of mods) t.host(`/lib/modules/${m.name}.ko`, m.path);
  t.binary(G.node, process.execPath);
  if (o.qemu) {
    const qemu = spawnSync('sh', ['-c', `command -v ${QEMU}`], { encoding: 'utf8' }).stdout.trim();
    t.binary('/usr/bin/' + QEMU, qemu);
    for (const f of QEMU_FIRMWARE) t.host(f, f);
  }
  addProject(t);
  t.host(guestKernel(o.kernel), o.kernel.kernel);
  if (o.kernelModules) addModuleTree(t, o.kernel, o.kernelModules);
  t.file(G.initrd, innerInitramfs(o.kernel.release));
  t.file('/test.sh', Buffer.from(o.script), 0o755);
  t.file('/init', Buffer.from(outerInit(guestKernel(o.kernel), mods.map((m) => m.name), o.transfer ?? [])), 0o755);
  return t.cpio.finish();
}

export interface ScriptResult {
  /** Where it ran: inside the outer TCG guest, or on the host (hardware KVM). */
  mode: 'nested' | 'host';
  /** Everything printed (the outer serial console, or the script's stdout and stderr). */
  output: string;
  /** The script's exit status; null when it never finished. */
  status: number | null;
}

export interface ScriptOptions {
  /** A shell script; it finds $NODE, $ROOT, $WORK, $KERNEL, $INITRD, $DISK and $GUEST_RUN. */
  script: string;
  /** A disk image on the host the script sees as $DISK ($WORK/disk); its new contents come back here. */
  disk?: string;
  /** More files on the host the script sees in $WORK under their base names; they come back too. */
  files?: string[];
  qemu?: boolean;
  kernelModules?: string[];
  timeoutMs?: number;
  /** Forces the outer TCG guest even when the host has hardware KVM. */
  nested?: boolean;
}

/** Runs a script where a real kernel can run under KVM, collects its output and status. */
export async function runScript(o: ScriptOptions): Promise<ScriptResult> {
  const kernel = stockKernel();
  if (!kernel) throw new Error('no stock kernel');
  const timeoutMs = o.timeoutMs ?? 300_000;
  if (!o.nested && hardwareKvm()) return runOnHost(o, kernel, timeoutMs);
  const dir = tempDir('img-nested-');
  const files = transferFiles(o);
  const names = [...files.keys()];
  const initrd = path.join(dir, 'outer.cpio');
  fs.writeFileSync(initrd, outerInitramfs({ kernel, script: o.script, transfer: names, qemu: o.qemu, kernelModules: o.kernelModules }));
  const transfer = path.join(dir, 'transfer.raw');
  writeTransfer(transfer, files);
  // Rarely (seen once in ~20 runs) the emulated outer guest goes silent for good after loading
  // kvm_amd, with neither the inner VM's own timeout nor anything else reported. A run that is
  // silent for SILENCE_MS is killed and tried once more (the transfer disk is rebuilt from the
  // untouched host files); a second stall fails the test.
  let output = '';
  for (let attempt = 1; ; attempt++) {
    if (attempt > 1) writeTransfer(transfer, files);
    const run = await collect(QEMU, outerArgs(kernel, initrd, transfer), process.env, timeoutMs, Math.min(timeoutMs, SILENCE_MS));
    output = run.output;
    if (!run.stalled || attempt === 2) break;
    const last = output.trimEnd().split('\n').pop() ?? '';
    process.stderr.write(`nested: the outer guest was silent for ${SILENCE_MS / 1000} s after "${last}"; trying once more\n`);
  }
  const reports = outerReports(output);
  if (reports.has('transfer-out')) {
    const back = path.join(dir, 'back');
    fs.mkdirSync(back);
    tar(['-xf', transfer, '-C', back]);
    for (const [name, host] of files) fs.copyFileSync(path.join(back, name), host);
  }
  fs.rmSync(dir, { recursive: true, force: true });
  const exit = reports.get('exit');
  return { mode: 'nested', output, status: exit === undefined ? null : Number(exit) };
}

/** How long an outer guest may print nothing before its run counts as stalled (IMG_NESTED_SILENCE_MS). */
const SILENCE_MS = Number(process.env.IMG_NESTED_SILENCE_MS) || 240_000;

function outerArgs(kernel: KernelChoice, initrd: string, transfer: string): string[] {
  return ['-accel', 'tcg', '-M', 'pc', '-cpu', 'max', '-m', '1536', '-nodefaults', '-display', 'none', '-serial', 'stdio', '-no-reboot',
    '-kernel', kernel.kernel, '-initrd', initrd, '-append', 'console=ttyS0 reboot=t panic=-1 rdinit=/init quiet',
    '-drive', `file=${transfer},format=raw,if=none,id=t,cache=unsafe`, '-device', 'virtio-blk-pci,drive=t'];
}

/** The transfer disk: a tar of the files at offset 0, room for them to grow (qcow2 allocations). */
function writeTransfer(transfer: string, files: Map<string, string>): void {
  const names = [...files.keys()];
  if (names.length > 0) {
    const stage = fs.mkdtempSync(path.join(path.dirname(transfer), 'in-'));
    for (const [name, host] of files) fs.symlinkSync(host, path.join(stage, name));
    tar(['-chf', transfer, '-C', stage, ...names]);
    fs.rmSync(stage, { recursive: true, force: true });
  } else fs.writeFileSync(transfer, '');
  fs.truncateSync(transfer, Math.max(fs.statSync(transfer).size * 2, 64 << 20));
}

/**
 * Runs a command to its end, or kills its whole process group after timeoutMs (a host-mode
 * script's node and img serve too); stdout and stderr interleaved, echoed to stderr with
 * IMG_NESTED_VERBOSE=1.
 */
function collect(
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv,
  timeoutMs: number,
  silenceMs = timeoutMs,
): Promise<{ output: string; status: number | null; stalled: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    const chunks: Buffer[] = [];
    let stalled = false;
    let silence: NodeJS.Timeout | undefined;
    const take = (b: Buffer) => {
      chunks.push(b);
      silence?.refresh();
      if (process.env.IMG_NESTED_VERBOSE) process.stderr.write(b);
    };
    child.stdout.on('data', take);
    child.stderr.on('data', take);
    const killGroup = () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(killGroup, timeoutMs);
    if (silenceMs < timeoutMs) silence = setTimeout(() => ((stalled = true), killGroup()), silenceMs);
    process.on('exit', killGroup);
    child.on('error', reject);
    child.on('close', (status) => {
      clearTimeout(timer);
      clearTimeout(silence);
      process.off('exit', killGroup);
      resolve({ output: Buffer.concat(chunks).toString('latin1'), status, stalled });
    });
  });
}

/** The files a script finds in $WORK, by name, with where they come from on the host. */
function transferFiles(o: ScriptOptions): Map<string, string> {
  const files = new Map<string, string>();
  for (const [name, host] of [...(o.disk === undefined ? [] : [['disk', o.disk]]), ...(o.files ?? []).map((f) => [path.basename(f), f])]) {
    if (files.has(name) || !/^[\w.-]+$/.test(name)) throw new Error(`transfer: bad or repeated file name '${name}'`);
    files.set(name, path.resolve(host));
  }
  return files;
}

/** Runs the host's tar (GNU tar; ustar, so busybox tar in the outer guest reads it). */
function tar(args: string[]): void {
  const r = spawnSync('tar', ['--format=ustar', ...args], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`tar ${args.join(' ')}: ${r.stderr}`);
}

async function runOnHost(o: ScriptOptions, kernel: KernelChoice, timeoutMs: number): Promise<ScriptResult> {
  const dir = tempDir('img-nested-host-');
  const initrd = path.join(dir, 'inner.cpio');
  fs.writeFileSync(initrd, innerInitramfs(kernel.release));
  const files = transferFiles(o);
  for (const [name, host] of files) fs.copyFileSync(host, path.join(dir, name));
  const env = {
    ...process.env, NODE: process.execPath, ROOT, WORK: dir, KERNEL: kernel.kernel, INITRD: initrd, DISK: path.join(dir, 'disk'),
    GUEST_RUN: path.join(ROOT, 'dist/test/runner/nested/guest-run.js'),
  };
  const result = await collect('sh', ['-c', o.script], env, timeoutMs);
  for (const [name, host] of files) fs.copyFileSync(path.join(dir, name), host);
  fs.rmSync(dir, { recursive: true, force: true });
  return { mode: 'host', ...result };
}

/** The `@@outer:` reports in the serial text, by name (the last one wins). */
export function outerReports(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of text.matchAll(/@@outer:(\S+) ?([^\r\n]*)/g)) out.set(m[1], m[2].trim());
  return out;
}
