/**
 * Finding a kernel to boot and reading its bzImage setup header (Linux boot protocol,
 * Documentation/arch/x86/boot.rst). Offsets below are from the start of the file, which is
 * where the real-mode setup code (and its header at 0x1f1) begins.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError, badField } from '../block/errors';
import { cstring, le16, le32, le64, u8 } from '../io/bytes';

const SETUP_SECTS = 0x1f1;
const BOOT_FLAG = 0x1fe; // 0xaa55
const HEADER = 0x202; // "HdrS"
const VERSION = 0x206;
const KERNEL_VERSION = 0x20e; // pointer to a NUL-terminated string, minus 0x200
const LOADFLAGS = 0x211;
const INITRD_ADDR_MAX = 0x22c;
const RELOCATABLE_KERNEL = 0x234;
const XLOADFLAGS = 0x236;
const CMDLINE_SIZE = 0x238;
const PREF_ADDRESS = 0x258;
const INIT_SIZE = 0x260;
const HDRS_MAGIC = 0x53726448;
/** The header fields this file reads all lie below this offset. */
const HEADER_END = 0x268;

export const XLF_KERNEL_64 = 1 << 0;
export const LOADED_HIGH = 1 << 0;

export interface BzImageInfo {
  /** Boot protocol version, e.g. 0x20f for 2.15. */
  protocol: number;
  setupSects: number;
  /** Bytes of the protected-mode kernel: what is loaded at 1 MiB (or wherever). */
  kernelOffset: number;
  loadflags: number;
  xloadflags: number;
  initrdAddrMax: number;
  relocatable: boolean;
  cmdlineSize: number;
  prefAddress: number;
  initSize: number;
  /** The version string the kernel carries ("6.1.0-56-cloud-amd64 (debian-kernel@…) #1 SMP …"). */
  version: string;
}

/** Parses and checks a bzImage's setup header; the kernel must offer the 64-bit entry point. */
export function bzImageInfo(file: string): BzImageInfo {
  let data: Buffer;
  try {
    data = fs.readFileSync(file);
  } catch (err) {
    throw new ImageError('NOT_FOUND', `cannot read kernel: ${(err as Error).message}`, { file, cause: err });
  }
  if (data.length < HEADER_END || le32(data, HEADER) !== HDRS_MAGIC || le16(data, BOOT_FLAG) !== 0xaa55) {
    throw new ImageError('BAD_HEADER', 'not a Linux bzImage (no HdrS setup header)', { file });
  }
  const protocol = le16(data, VERSION);
  if (protocol < 0x20c) throw badField(file, 'boot protocol version', `${protocol >> 8}.${protocol & 0xff}`, 'img needs 2.12 or later (64-bit entry)');
  const xloadflags = le16(data, XLOADFLAGS);
  if (!(xloadflags & XLF_KERNEL_64)) throw badField(file, 'xloadflags', xloadflags, 'the kernel has no 64-bit entry point');
  // setup_sects 0 means 4 (boot.rst); the boot sector itself is one more sector.
  const setupSects = u8(data, SETUP_SECTS) || 4;
  const kernelOffset = (setupSects + 1) * 512;
  if (kernelOffset >= data.length) throw badField(file, 'setup_sects', setupSects, `the file is only ${data.length} bytes`);
  const versionPtr = le16(data, KERNEL_VERSION) + 0x200;
  const version = versionPtr > 0x200 && versionPtr < kernelOffset ? cstring(data, versionPtr, Math.min(256, kernelOffset - versionPtr)) : '';
  return {
    protocol,
    setupSects,
    kernelOffset,
    loadflags: u8(data, LOADFLAGS),
    xloadflags,
    initrdAddrMax: le32(data, INITRD_ADDR_MAX),
    relocatable: u8(data, RELOCATABLE_KERNEL) !== 0,
    cmdlineSize: le32(data, CMDLINE_SIZE),
    prefAddress: le64(data, PREF_ADDRESS),
    initSize: le32(data, INIT_SIZE),
    version,
  };
}

export interface KernelChoice {
  kernel: string;
  /** The release (`uname -r` of the booted kernel), from the version string or the file name. */
  release: string;
  /** Where its modules are: /lib/modules/<release> (may not exist for a custom kernel). */
  modulesDir: string;
}

/** Compares kernel releases the way `sort -V` would, enough for "6.1.0-9" < "6.1.0-56". */
function compareReleases(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

/**
 * The kernel to boot: `explicit` when given, else the newest /boot/vmlinuz-* of the host.
 * The release comes from the bzImage's version string.
 */
export function findKernel(explicit?: string, bootDir = '/boot', modulesRoot = '/lib/modules'): KernelChoice {
  let kernel = explicit;
  if (!kernel) {
    let names: string[] = [];
    try {
      names = fs.readdirSync(bootDir).filter((n) => n.startsWith('vmlinuz-'));
    } catch {
      // no /boot: reported below
    }
    names.sort((a, b) => compareReleases(b, a));
    if (!names.length) {
      throw new ImageError('NOT_FOUND', `no kernel found in ${bootDir} (install linux-image-cloud-amd64, or give --kernel)`);
    }
    kernel = path.join(bootDir, names[0]);
  }
  const info = bzImageInfo(kernel);
  const release = info.version.split(' ')[0] || path.basename(kernel).replace(/^vmlinuz-/, '');
  return { kernel, release, modulesDir: path.join(modulesRoot, release) };
}
