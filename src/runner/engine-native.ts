/** The native engine: the bundled KVM runner (src/runner/vm.ts, native/runner/). */
import { Machine, MachineSpec } from './engine';
import { startVm } from './vm';

export function startNative(spec: MachineSpec): Machine {
  return startVm({ kernel: spec.kernel, initrd: spec.initrd, cmdline: spec.cmdline, memoryMiB: spec.memoryMiB, disks: [spec.disk], timeoutMs: spec.timeoutMs });
}
