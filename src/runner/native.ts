/** The runner's part of the native addon (native/runner/napi_vm.cc), typed. */
import { nativeSys } from '../io/native';

export interface NativeDisk {
  kind: 'file' | 'nbd';
  path?: string;
  socket?: string;
  host?: string;
  port?: number;
  exportName?: string;
  readOnly?: boolean;
}

export interface NativeVmConfig {
  kernel: string;
  initrd: string;
  cmdline: string;
  memoryMiB: number;
  disks: NativeDisk[];
  maskXsave: boolean;
}

/** ('console', bytes) batches, then ('exit', reason, code, message) once every thread is joined. */
export type NativeVmCallback = (event: 'console' | 'exit', a?: Buffer | string, code?: number, message?: string) => void;

export interface NativeVm {
  stop(reason: 'stopped' | 'timeout'): void;
  sendConsole(data: Buffer): void;
}

interface RunnerAddon {
  RunnerVm: new (config: NativeVmConfig, cb: NativeVmCallback) => NativeVm;
  /** '' when /dev/kvm opens and speaks API 12, else why not. */
  kvmUsable(): string;
}

export function runnerAddon(): RunnerAddon {
  return nativeSys() as unknown as RunnerAddon;
}
