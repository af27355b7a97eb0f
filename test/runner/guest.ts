/**
 * Builds the tiny test guest (test/runner/guest/) into a minimal bzImage: gcc and ld
 * link the 64-bit code at 1 MiB, objcopy flattens it, and a setup header in front
 * ("HdrS", protocol 2.15, XLF_KERNEL_64) makes the runner load it like a real kernel.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ROOT, tempDir } from '../helpers';

const SRC = path.join(ROOT, 'test', 'runner', 'guest');
const CFLAGS = ['-O2', '-ffreestanding', '-nostdlib', '-fno-pic', '-no-pie', '-static', '-mno-red-zone', '-mgeneral-regs-only',
  '-fno-stack-protector', '-fno-asynchronous-unwind-tables', '-Wall', '-Werror'];
const LOAD_ADDR = 0x100000;
const SETUP_SECTS = 1;

let built: string | undefined;

/** Path of the tiny guest's bzImage, built once per process. */
export function tinyGuest(): string {
  if (built) return built;
  const dir = tempDir('img-guest-');
  const obj = (n: string) => path.join(dir, n);
  execFileSync('gcc', [...CFLAGS, '-c', path.join(SRC, 'guest.c'), '-o', obj('guest.o')]);
  execFileSync('gcc', ['-c', path.join(SRC, 'entry.S'), '-o', obj('entry.o')]);
  execFileSync('ld', ['-T', path.join(SRC, 'guest.ld'), '-z', 'noexecstack', '--no-warn-rwx-segments', '-o', obj('guest.elf'), obj('entry.o'), obj('guest.o')]);
  execFileSync('objcopy', ['-O', 'binary', obj('guest.elf'), obj('guest.bin')]);
  const end = parseInt(/^([0-9a-f]+) \w _end$/m.exec(execFileSync('nm', [obj('guest.elf')], { encoding: 'utf8' }))![1], 16);
  const payload = fs.readFileSync(obj('guest.bin'));
  built = obj('bzImage');
  fs.writeFileSync(built, Buffer.concat([setupHeader(end - LOAD_ADDR), payload]));
  return built;
}

/** Boot sector + one setup sector holding the header of Documentation/arch/x86/boot.rst. */
export function setupHeader(initSize: number, over: { version?: number; xloadflags?: number; magic?: string } = {}): Buffer {
  const h = Buffer.alloc((SETUP_SECTS + 1) * 512);
  h[0x1f1] = SETUP_SECTS;
  h.writeUInt16LE(0xaa55, 0x1fe);
  h[0x200] = 0xeb; // jmp over the header; its offset byte also gives the header's length
  h[0x201] = 0x268 - 0x202;
  h.write(over.magic ?? 'HdrS', 0x202, 'latin1');
  h.writeUInt16LE(over.version ?? 0x020f, 0x206);
  h[0x211] = 0x01; // LOADED_HIGH
  h.writeUInt32LE(LOAD_ADDR, 0x214); // code32_start
  h.writeUInt32LE(0x7fffffff, 0x22c); // initrd_addr_max
  h.writeUInt32LE(0x200000, 0x230); // kernel_alignment
  h.writeUInt16LE(over.xloadflags ?? 0x01, 0x236); // XLF_KERNEL_64
  h.writeUInt32LE(2047, 0x238); // cmdline_size
  h.writeUInt32LE(LOAD_ADDR, 0x258); // pref_address (low half)
  h.writeUInt32LE((initSize + 0xfff) & ~0xfff, 0x260); // init_size
  return h;
}
