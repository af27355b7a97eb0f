/**
 * The two ways img boots a kernel: `native`, the bundled KVM runner (src/runner/vm.ts), where
 * /dev/kvm is backed by hardware; `qemu`, qemu-system-x86_64 (TCG, or KVM where it is real),
 * everywhere else. Both take the same machine description and give the same handle, shaped as
 * the runner's `Vm`, so boot.ts never knows which one runs.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Readable } from 'node:stream';
import { ImageError } from '../block/errors';
import { KvmStatus, kvmStatus, VmExit } from './vm';

export type EngineName = 'native' | 'qemu';

/** The disk the guest sees as /dev/vda: a host file (raw) or an NBD export on a unix socket. */
export type MachineDisk = { kind: 'file'; path: string; readOnly: boolean } | { kind: 'nbd'; socket: string; readOnly: boolean };

export interface MachineSpec {
  kernel: string;
  initrd?: string;
  cmdline: string;
  memoryMiB: number;
  disk: MachineDisk;
  /** Host-side limit: the machine is ended with reason 'timeout' when it fires. */
  timeoutMs: number;
}

export type MachineExit = VmExit;

export interface Machine {
  /** The serial console's output bytes. */
  console: Readable;
  /** Ends the machine (reason 'stopped'); resolves once it is gone. */
  stop(): Promise<MachineExit>;
  exited: Promise<MachineExit>;
}

export const QEMU = 'qemu-system-x86_64';

/** Whether qemu-system-x86_64 is an executable on PATH (looked up, not run: that costs a tenth of a second). */
export function hasQemu(): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => {
    try {
      fs.accessSync(path.join(dir || '.', QEMU), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

export interface EngineChoice {
  engine: EngineName;
  /** qemu's accelerator: kvm only where /dev/kvm is hardware-backed. */
  accel: 'kvm' | 'tcg';
  /** Why the choice differs from the default, for one line on stderr. */
  note?: string;
}

/**
 * The engine to use: the one asked for, else native where /dev/kvm is hardware-backed, else
 * qemu. A missing engine is an error naming what to install.
 */
export function chooseEngine(requested: EngineName | undefined, kvm: KvmStatus = kvmStatus(), qemuInstalled: () => boolean = hasQemu): EngineChoice {
  const accel = kvm.hardware ? 'kvm' : 'tcg';
  if (requested === 'native') return { engine: 'native', accel };
  if (requested === 'qemu' || !kvm.hardware) {
    if (!qemuInstalled()) {
      const why = requested === 'qemu' ? '--engine qemu was asked for' : `${kvm.why}, so the native runner cannot be used`;
      throw new ImageError('UNSUPPORTED', `${why}, and ${QEMU} is not installed: install qemu-system-x86 (apt-get install qemu-system-x86)`);
    }
    const note = requested === 'qemu' ? undefined : `${kvm.why}; using ${QEMU} with ${accel.toUpperCase()}`;
    return { engine: 'qemu', accel, note };
  }
  return { engine: 'native', accel };
}
