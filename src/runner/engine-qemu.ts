/**
 * The qemu engine: qemu-system-x86_64 running the same kernel, initramfs and disk as the native
 * runner would. The machine is a plain `pc` with the serial console on qemu's stdout and one
 * virtio-blk-pci disk; `-no-reboot` makes the guest's `reboot -f` (a triple fault with
 * reboot=t) end qemu, as it ends the native runner.
 */
import { spawn } from 'node:child_process';
import { Machine, MachineDisk, MachineExit, MachineSpec, QEMU } from './engine';

/** qemu's -drive value for the disk: raw either way (an NBD export is the image's raw view). */
function driveArg(disk: MachineDisk): string {
  // Commas in a -drive value are escaped by doubling them.
  const file = disk.kind === 'file' ? disk.path.replace(/,/g, ',,') : `nbd:unix:${disk.socket.replace(/,/g, ',,')}`;
  return `file=${file},format=raw,if=none,id=vda,cache=writeback${disk.readOnly ? ',readonly=on' : ''}`;
}

export function qemuArgs(spec: MachineSpec, accel: 'kvm' | 'tcg'): string[] {
  const args = ['-machine', `pc,accel=${accel}`, '-cpu', accel === 'kvm' ? 'host' : 'max', '-m', String(spec.memoryMiB)];
  args.push('-nodefaults', '-no-user-config', '-display', 'none', '-monitor', 'none', '-serial', 'stdio', '-no-reboot');
  args.push('-kernel', spec.kernel, '-append', spec.cmdline);
  if (spec.initrd) args.push('-initrd', spec.initrd);
  args.push('-drive', driveArg(spec.disk), '-device', 'virtio-blk-pci,drive=vda');
  return args;
}

export function startQemu(spec: MachineSpec, accel: 'kvm' | 'tcg'): Machine {
  const child = spawn(QEMU, qemuArgs(spec, accel), { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s: string) => (stderr = (stderr + s).slice(-4096)));
  let ending: MachineExit['reason'] | undefined;
  const timer = setTimeout(() => {
    ending = 'timeout';
    child.kill('SIGKILL');
  }, spec.timeoutMs);
  const exited = new Promise<MachineExit>((resolve) => {
    child.once('error', (err) => {
      clearTimeout(timer);
      resolve({ reason: 'error', code: 1, message: `cannot run ${QEMU}: ${err.message}` });
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      if (ending) resolve({ reason: ending, code: 1 });
      else if (code === 0) resolve({ reason: 'shutdown', code: 0 });
      else resolve({ reason: 'error', code: code ?? 1, message: `${QEMU} failed (${signal ?? `exit ${code}`}): ${stderr.trim().split('\n').pop() ?? ''}` });
    });
  });
  return {
    console: child.stdout,
    exited,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        ending ??= 'stopped';
        child.kill('SIGKILL');
      }
      return exited;
    },
  };
}
