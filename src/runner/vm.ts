/**
 * The bundled KVM runner: boots a bzImage through its 64-bit entry with virtio-blk disks
 * (host files or NBD exports) and a serial console. The monitor itself is native
 * (native/runner/): a vCPU thread, an I/O thread, no JavaScript on the I/O path; this
 * module checks the configuration, maps errors and turns the native events into a
 * stream and promises.
 */
import * as fs from 'node:fs';
import { Readable } from 'node:stream';
import { ImageError } from '../block/errors';
import { NativeDisk, NativeVm, runnerAddon } from './native';

export type DiskConfig =
  | { kind: 'file'; path: string; readOnly?: boolean }
  | { kind: 'nbd'; socket: string; exportName?: string; readOnly?: boolean }
  | { kind: 'nbd'; host: string; port: number; exportName?: string; readOnly?: boolean };

export interface VmConfig {
  /** Path of a bzImage (boot protocol >= 2.12 with XLF_KERNEL_64). */
  kernel: string;
  /** Path of an initramfs (cpio, optionally gzip'd; passed as is). */
  initrd?: string;
  /** Default DEFAULT_CMDLINE. */
  cmdline?: string;
  /** Default 512. */
  memoryMiB?: number;
  /** virtio-blk devices in order (the first is /dev/vda); at most 6. */
  disks?: DiskConfig[];
  /** Host-side timeout; the VM ends with reason 'timeout' when it fires. */
  timeoutMs?: number;
  /** Hide XSAVE (and AVX) from the guest's CPUID: nested SVM under TCG lacks the XSETBV intercept. */
  maskXsave?: boolean;
}

/** `code` is 0 for 'shutdown' (the guest rebooted with reboot=t); 1 for 'error', 2 for 'stopped', 3 for 'timeout'. */
export interface VmExit {
  reason: 'shutdown' | 'timeout' | 'stopped' | 'error';
  code: number;
  message?: string;
}

export interface Vm {
  /** UART output bytes, in batches. */
  console: Readable;
  /** Bytes to the UART's receive side. */
  sendConsole(data: Uint8Array | string): void;
  /** Ends the VM (reason 'stopped'); resolves once all threads are joined. */
  stop(): Promise<VmExit>;
  exited: Promise<VmExit>;
}

export const DEFAULT_CMDLINE = 'console=ttyS0 acpi=off reboot=t panic=-1 quiet';
const DEFAULT_MEMORY_MIB = 512;

export interface KvmStatus {
  usable: boolean;
  hardware: boolean;
  /** Why /dev/kvm is not usable, or, when it is, why it is not hardware-backed. */
  why?: string;
}

/**
 * Whether KVM can run guests here, and whether it is hardware virtualization: not under
 * kvm_pvm (a software hypervisor, ~10,000 times slower in guest kernel mode), nor without a
 * vmx/svm CPU flag.
 */
export function kvmStatus(): KvmStatus {
  const unusable = runnerAddon().kvmUsable();
  if (unusable) return { usable: false, hardware: false, why: unusable };
  if (fs.existsSync('/sys/module/kvm_pvm')) return { usable: true, hardware: false, why: '/dev/kvm is a software hypervisor (kvm_pvm)' };
  let flags = false;
  try {
    flags = /^flags\s*:.*\b(vmx|svm)\b/m.test(fs.readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    // no /proc: treat as no flag
  }
  return flags ? { usable: true, hardware: true } : { usable: true, hardware: false, why: '/dev/kvm is not hardware-backed (no vmx or svm CPU flag)' };
}

function nativeDisk(d: DiskConfig, i: number): NativeDisk {
  const readOnly = d.readOnly ?? false;
  if (d.kind === 'file') {
    if (!fs.existsSync(d.path)) throw new ImageError('NOT_FOUND', `disk ${i}: no such file`, { file: d.path });
    return { kind: 'file', path: d.path, readOnly };
  }
  const exportName = d.exportName ?? '';
  if ('socket' in d) return { kind: 'nbd', socket: d.socket, exportName, readOnly };
  if (!Number.isInteger(d.port) || d.port <= 0 || d.port > 65535)
    throw new ImageError('INVALID_ARGUMENT', `disk ${i}: bad NBD port`, { field: 'port', value: d.port });
  return { kind: 'nbd', host: d.host, port: d.port, exportName, readOnly };
}

const NATIVE_CODES: Record<string, { code: 'UNSUPPORTED' | 'BAD_HEADER' | 'INVALID_ARGUMENT'; field: string }> = {
  NO_KVM: { code: 'UNSUPPORTED', field: '/dev/kvm' },
  BAD_KERNEL: { code: 'BAD_HEADER', field: 'kernel' },
  NO_MEMORY: { code: 'INVALID_ARGUMENT', field: 'memoryMiB' },
  BAD_CONFIG: { code: 'INVALID_ARGUMENT', field: 'config' },
};

/** Boots the kernel; throws ImageError for no /dev/kvm, a bad kernel file or too little memory. */
export function startVm(config: VmConfig): Vm {
  const memoryMiB = config.memoryMiB ?? DEFAULT_MEMORY_MIB;
  if (!Number.isInteger(memoryMiB) || memoryMiB <= 0)
    throw new ImageError('INVALID_ARGUMENT', `memoryMiB must be a positive integer`, { field: 'memoryMiB', value: memoryMiB });
  if (!fs.existsSync(config.kernel)) throw new ImageError('NOT_FOUND', 'no such kernel file', { file: config.kernel });
  if (config.initrd && !fs.existsSync(config.initrd)) throw new ImageError('NOT_FOUND', 'no such initrd file', { file: config.initrd });
  const disks = (config.disks ?? []).map(nativeDisk);

  const console = new Readable({ read() {} });
  let resolveExit!: (e: VmExit) => void;
  const exited = new Promise<VmExit>((r) => (resolveExit = r));
  let timer: NodeJS.Timeout | undefined;
  let done = false;
  let handle: NativeVm;
  try {
    handle = new (runnerAddon().RunnerVm)(
      { kernel: config.kernel, initrd: config.initrd ?? '', cmdline: config.cmdline ?? DEFAULT_CMDLINE, memoryMiB, disks, maskXsave: config.maskXsave ?? false },
      (event, a, code, message) => {
        if (event === 'console') {
          console.push(a as Buffer);
          return;
        }
        done = true;
        if (timer) clearTimeout(timer);
        console.push(null);
        const exit: VmExit = { reason: a as VmExit['reason'], code: code ?? 1 };
        if (message) exit.message = message;
        resolveExit(exit);
      },
    );
  } catch (err) {
    const e = err as Error & { code?: string };
    const m = e.code ? NATIVE_CODES[e.code] : undefined;
    if (!m) throw err;
    throw new ImageError(m.code, e.message, { field: m.field, cause: err });
  }
  if (config.timeoutMs !== undefined) timer = setTimeout(() => handle.stop('timeout'), config.timeoutMs);
  return {
    console,
    sendConsole(data) {
      if (!done) handle.sendConsole(Buffer.from(typeof data === 'string' ? Buffer.from(data, 'utf8') : data));
    },
    stop() {
      if (!done) handle.stop('stopped');
      return exited;
    },
    exited,
  };
}
