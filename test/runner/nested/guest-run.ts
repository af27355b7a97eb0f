/**
 * Boots the inner guest once and reports on stdout, for the nested test bed. Runs inside the
 * outer guest (or on a host with hardware KVM), so it imports nothing but node and the project.
 *   node guest-run.js --engine qemu|runner --kernel K --initrd I [--cmdline C]
 *                     [--disk file:PATH | --disk file-ro:PATH | --disk nbd:SOCKET] [--timeout MS]
 * Prints the guest console as it comes, then `@@vm:init-ms N` (start to the inner init's first
 * report) and `@@vm:exit {"reason":…,"code":…}`.
 */
import { spawn } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { Readable } from 'node:stream';
import { DiskConfig, startVm } from '../../../src/runner/vm';

interface Args {
  engine: string;
  kernel: string;
  initrd: string;
  cmdline: string;
  disks: string[];
  timeoutMs: number;
}

interface Exit {
  reason: string;
  code: number;
  message?: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { engine: 'runner', kernel: '', initrd: '', cmdline: 'console=ttyS0 acpi=off reboot=t panic=-1 quiet', disks: [], timeoutMs: 240_000 };
  for (let i = 0; i < argv.length; i += 2) {
    const v = argv[i + 1];
    switch (argv[i]) {
      case '--engine': a.engine = v; break;
      case '--kernel': a.kernel = v; break;
      case '--initrd': a.initrd = v; break;
      case '--cmdline': a.cmdline = v; break;
      case '--disk': a.disks.push(v); break;
      case '--timeout': a.timeoutMs = Number(v); break;
      default: throw new Error(`guest-run: unknown argument ${argv[i]}`);
    }
  }
  return a;
}

/** qemu-system-x86_64 -enable-kvm with the runner's device model: legacy virtio-blk-pci, no ACPI. */
function startQemu(a: Args): { console: Readable; exited: Promise<Exit> } {
  const drives = a.disks.flatMap((d, i) => {
    const [kind, arg] = [d.slice(0, d.indexOf(':')), d.slice(d.indexOf(':') + 1)];
    const file = kind === 'nbd' ? `nbd:unix:${arg}` : arg;
    const ro = kind === 'file-ro' ? ',readonly=on' : '';
    return ['-drive', `file=${file},format=raw,if=none,id=d${i}${ro}`, '-device', `virtio-blk-pci,disable-modern=on,drive=d${i}`];
  });
  const child = spawn(
    'qemu-system-x86_64',
    ['-enable-kvm', '-M', 'pc', '-cpu', 'host,-xsave', '-m', '512', '-nodefaults', '-display', 'none', '-serial', 'stdio',
      '-no-reboot', '-kernel', a.kernel, '-initrd', a.initrd, '-append', a.cmdline, ...drives],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const timer = setTimeout(() => child.kill('SIGKILL'), a.timeoutMs);
  const exited = new Promise<Exit>((resolve) => {
    child.on('close', (status, signal) => {
      clearTimeout(timer);
      // -no-reboot turns the guest's reboot into a clean qemu exit.
      if (signal) resolve({ reason: 'timeout', code: 1, message: signal });
      else resolve({ reason: status === 0 ? 'shutdown' : 'error', code: status ?? 1 });
    });
  });
  return { console: child.stdout, exited };
}

/** img's runner. XSAVE is masked: nested SVM under TCG lacks the XSETBV intercept. */
function startRunner(a: Args): { console: Readable; exited: Promise<Exit> } {
  const disks = a.disks.map((d): DiskConfig => {
    const [kind, arg] = [d.slice(0, d.indexOf(':')), d.slice(d.indexOf(':') + 1)];
    if (kind === 'nbd') return { kind: 'nbd', socket: arg };
    return { kind: 'file', path: arg, readOnly: kind === 'file-ro' };
  });
  const vm = startVm({ kernel: a.kernel, initrd: a.initrd, cmdline: a.cmdline, memoryMiB: 512, disks, timeoutMs: a.timeoutMs, maskXsave: true });
  return { console: vm.console, exited: vm.exited };
}

async function main(): Promise<void> {
  const a = parseArgs(process.argv.slice(2));
  const t0 = performance.now();
  if (a.engine !== 'qemu' && a.engine !== 'runner') throw new Error(`guest-run: unknown engine ${a.engine}`);
  const vm = a.engine === 'qemu' ? startQemu(a) : startRunner(a);
  let text = '';
  let initMs: number | undefined;
  vm.console.on('data', (b: Buffer) => {
    process.stdout.write(b);
    if (initMs !== undefined) return;
    text += b.toString('latin1');
    if (text.includes('@@inner:init')) initMs = performance.now() - t0;
  });
  const exit = await vm.exited;
  if (initMs !== undefined) process.stdout.write(`\n@@vm:init-ms ${Math.round(initMs)}\n`);
  process.stdout.write(`\n@@vm:exit ${JSON.stringify(exit)}\n`);
}

main().catch((e: Error) => {
  process.stdout.write(`\n@@vm:exit ${JSON.stringify({ reason: 'error', code: 1, message: e.message })}\n`);
  process.exitCode = 1;
});
