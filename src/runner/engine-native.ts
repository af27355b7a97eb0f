/**
 * The native engine: the bundled KVM runner (src/runner/vm.ts, native/). Loaded when used, so a
 * build without the runner still boots with qemu.
 */
import { ImageError } from '../block/errors';
import { Machine, MachineSpec } from './engine';

interface RunnerModule {
  startVm(config: {
    kernel: string;
    initrd?: string;
    cmdline?: string;
    memoryMiB?: number;
    disks?: ({ kind: 'file'; path: string; readOnly?: boolean } | { kind: 'nbd'; socket: string; readOnly?: boolean })[];
    timeoutMs?: number;
  }): Machine;
}

export function startNative(spec: MachineSpec): Machine {
  let runner: RunnerModule;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    runner = require('./vm') as RunnerModule;
  } catch (err) {
    throw new ImageError('UNSUPPORTED', 'the native runner is not part of this build: use --engine qemu', { cause: err });
  }
  return runner.startVm({ kernel: spec.kernel, initrd: spec.initrd, cmdline: spec.cmdline, memoryMiB: spec.memoryMiB, disks: [spec.disk], timeoutMs: spec.timeoutMs });
}
