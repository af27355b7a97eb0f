/**
 * The INNER guest of the nested test bed: the stock Debian cloud kernel with a busybox initramfs
 * that loads the virtio-pci modules, finds /dev/vda, reads a known pattern, writes one, and
 * reboots. Everything it does is reported on the console as `@@inner:<what> <value>` lines.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import { prng, randomBytes } from '../../helpers';
import { CpioWriter } from '../../../src/runner/cpio';
import { resolveModules } from '../../../src/runner/modules';

export const BUSYBOX = '/bin/busybox';
/** Console line prefix of everything the inner init reports. */
export const INNER_TAG = '@@inner:';
/** The disk the inner guest sees: a pattern at READ_OFFSET, its write lands at WRITE_OFFSET. */
export const DISK_BYTES = 16 << 20;
export const READ_OFFSET = 0;
export const READ_BYTES = 1 << 20;
export const WRITE_OFFSET = 4 << 20;
export const WRITE_BYTES = 256 << 10;
const VIRTIO_MODULES = ['virtio_blk', 'virtio_pci'];
export const INNER_CMDLINE = 'console=ttyS0 acpi=off reboot=t panic=-1 quiet';

/** The bytes the host puts at READ_OFFSET (deterministic, so failures reproduce). */
export function readPattern(seed = 7): Buffer {
  return randomBytes(prng(seed), READ_BYTES);
}

/** The bytes the inner guest writes at WRITE_OFFSET: `img-nested <nonce>\n` repeated. */
export function writePattern(nonce: string): Buffer {
  const line = Buffer.from(`img-nested ${nonce}\n`);
  const out = Buffer.alloc(WRITE_BYTES);
  for (let i = 0; i < WRITE_BYTES; i += line.length) line.copy(out, i);
  return out;
}

export function md5(data: Uint8Array): string {
  return createHash('md5').update(data).digest('hex');
}

/** A raw disk image of DISK_BYTES holding readPattern() at READ_OFFSET. */
export function writeTestDisk(file: string): void {
  const fd = fs.openSync(file, 'w');
  try {
    fs.writeSync(fd, readPattern(), 0, READ_BYTES, READ_OFFSET);
    fs.ftruncateSync(fd, DISK_BYTES);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The inner /init. The nonce comes from the kernel command line (`nested.nonce=`), so a stale
 * image cannot pass for a fresh write. Block sizes are 4 KiB so every offset is exact.
 */
function initScript(modules: string[]): string {
  const kib4 = (n: number) => n / 4096;
  return `#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "${INNER_TAG}$*"; }
say init 1
for m in ${modules.join(' ')}; do insmod /lib/modules/$m.ko || say insmod-failed $m; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do usleep 100000; i=$((i+1)); done
if [ ! -b /dev/vda ]; then say novda 1; reboot -f; fi
say sectors $(cat /sys/block/vda/size)
say read $(dd if=/dev/vda bs=4096 skip=${kib4(READ_OFFSET)} count=${kib4(READ_BYTES)} 2>/dev/null | md5sum | cut -d' ' -f1)
nonce=$(sed -n 's/.*nested\\.nonce=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
yes "img-nested $nonce" | head -c ${WRITE_BYTES} > /tmp/w
dd if=/tmp/w of=/dev/vda bs=4096 seek=${kib4(WRITE_OFFSET)} conv=fsync 2>/dev/null || say write-failed 1
sync
echo 3 > /proc/sys/vm/drop_caches
say written $(dd if=/dev/vda bs=4096 skip=${kib4(WRITE_OFFSET)} count=${kib4(WRITE_BYTES)} 2>/dev/null | md5sum | cut -d' ' -f1)
say done 1
reboot -f
`;
}

/** The inner initramfs (uncompressed newc) for this kernel release. */
export function innerInitramfs(release: string): Buffer {
  const mods = resolveModules(release, VIRTIO_MODULES);
  const w = new CpioWriter();
  for (const d of ['bin', 'dev', 'proc', 'sys', 'tmp', 'lib', 'lib/modules']) w.dir(d);
  w.node('dev/console', 'c', 5, 1);
  w.file('bin/busybox', fs.readFileSync(BUSYBOX), 0o755);
  for (const m of mods) w.file(`lib/modules/${m.name}.ko`, fs.readFileSync(m.path));
  w.file('init', Buffer.from(initScript(mods.map((m) => m.name))), 0o755);
  return w.finish();
}

/** The `@@inner:` reports in console text, by name (the last one wins). */
export function innerReports(text: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of text.matchAll(/@@inner:(\S+) ?([^\r\n]*)/g)) out.set(m[1], m[2].trim());
  return out;
}
