/**
 * The appliance: an initramfs img builds per boot from the host's busybox-static and the host
 * kernel's modules (virtio-pci, virtio-blk, and the filesystem's), with init-script.ts as /init.
 * Written as cpio newc, gzip'd.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gzipSync } from 'node:zlib';
import { ImageError } from '../block/errors';
import { FsInfo } from '../guestfs/fs-probe';
import { CpioWriter } from './cpio';
import { initScript, InitPlan } from './init-script';
import { resolveModules } from './modules';

export const BUSYBOX = '/bin/busybox';

/** The disk's driver, in the order the runner's notes list it (resolveModules adds the rest). */
const DISK_MODULES = ['virtio_pci', 'virtio_blk'];

/** The modules (beyond those built in) each filesystem needs, and the type mount -t takes. */
const FILESYSTEMS: Partial<Record<FsInfo['type'], { modules: string[]; mountType: string }>> = {
  ext2: { modules: ['ext4'], mountType: 'ext2' },
  ext3: { modules: ['ext4'], mountType: 'ext3' },
  ext4: { modules: ['ext4'], mountType: 'ext4' },
  xfs: { modules: ['xfs'], mountType: 'xfs' },
  btrfs: { modules: ['btrfs'], mountType: 'btrfs' },
  vfat: { modules: ['vfat', 'nls_cp437', 'nls_ascii', 'nls_utf8'], mountType: 'vfat' },
  iso9660: { modules: ['isofs'], mountType: 'iso9660' },
};

export interface ApplianceRequest extends Omit<InitPlan, 'modules' | 'fsType'> {
  /** The kernel's release: its modules are under `modulesRoot`/release. */
  release: string;
  modulesRoot: string;
  fs: FsInfo['type'];
}

/** The mount type of a filesystem the appliance can mount; an ImageError for one it cannot. */
export function mountType(type: FsInfo['type']): string {
  const known = FILESYSTEMS[type];
  if (!known) throw new ImageError('UNSUPPORTED', `the appliance cannot mount a ${type} filesystem`);
  return known.mountType;
}

export function buildAppliance(req: ApplianceRequest): Buffer {
  const fsType = mountType(req.fs);
  let busybox: Buffer;
  try {
    busybox = fs.readFileSync(BUSYBOX);
  } catch {
    throw new ImageError('NOT_FOUND', `${BUSYBOX} is missing: install busybox-static (apt-get install busybox-static)`);
  }
  const modules = resolveModules(req.release, [...DISK_MODULES, ...FILESYSTEMS[req.fs]!.modules], req.modulesRoot);
  const cpio = new CpioWriter();
  for (const d of ['bin', 'dev', 'proc', 'sys', 'mnt', 'tmp', 'lib', 'lib/modules']) cpio.dir(d);
  // The kernel opens /dev/console for init before devtmpfs is mounted.
  cpio.node('dev/console', 'c', 5, 1, 0o600);
  cpio.node('dev/null', 'c', 1, 3, 0o666);
  cpio.file('bin/busybox', busybox, 0o755);
  cpio.symlink('bin/sh', 'busybox');
  const inside: string[] = [];
  for (const m of modules) {
    const at = `lib/modules/${path.basename(m.path)}`;
    cpio.file(at, fs.readFileSync(m.path), 0o644);
    inside.push(`/${at}`);
  }
  cpio.file('init', Buffer.from(initScript({ ...req, fsType, modules: inside })), 0o755);
  return gzipSync(cpio.finish(), { level: 1 });
}
