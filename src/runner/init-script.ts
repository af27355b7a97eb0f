/**
 * The appliance's /init, a busybox sh script: mount the kernel filesystems, load the modules in
 * dependency order, wait for the disk, mount the image's filesystem, run the command there (or
 * chrooted into it) with stdin from /dev/null, print the result line (console-result.ts), flush
 * and unmount, and reboot — which, with reboot=t and no reboot allowed, ends the machine.
 */

export interface InitPlan {
  /** Marks the result lines of this boot. */
  nonce: string;
  /** Module files inside the initramfs, dependencies first. */
  modules: string[];
  /** The block device holding the filesystem, as /dev names it: vda, vda1, … */
  device: string;
  /** The filesystem type for mount -t. */
  fsType: string;
  readOnly: boolean;
  /** Run the command chrooted into the filesystem rather than in it with the appliance's tools. */
  chroot: boolean;
  /** The command and its arguments, run without a shell of its own. */
  argv: string[];
}

/** Seconds init waits for the disk to appear once the modules are loaded. */
const DEVICE_WAIT_S = 30;

/** One word for sh: single-quoted, a quote itself written as '\''. */
export function shellQuote(word: string): string {
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

export function initScript(plan: InitPlan): string {
  const dev = `/dev/${plan.device}`;
  // noload: a read-only disk cannot take an ext3/ext4 journal replay, so skip it.
  const mountOpts = plan.readOnly ? (plan.fsType === 'ext3' || plan.fsType === 'ext4' ? 'ro,noload' : 'ro') : 'rw';
  const run = plan.chroot ? 'chroot /mnt "$@"' : 'cd /mnt && "$@"';
  return `#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/ TERM=dumb
fail() { printf '\\nIMG-FAIL-${plan.nonce} %s\\n' "$1"; sync; reboot -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ${plan.modules.map(shellQuote).join(' ')}; do
  insmod "$m" 2>/dev/null || fail "cannot load the kernel module $m"
done
i=0
while [ ! -b ${dev} ]; do
  i=$((i + 1))
  [ $i -gt ${DEVICE_WAIT_S * 10} ] && fail "the disk ${dev} did not appear"
  usleep 100000
done
mount -t ${plan.fsType} -o ${mountOpts} ${dev} /mnt 2>/tmp/mount.err || fail "cannot mount ${dev} (${plan.fsType}): $(cat /tmp/mount.err)"
${plan.chroot ? 'for d in proc sys dev; do [ -d /mnt/$d ] && mount --bind /$d /mnt/$d; done' : ''}
set -- ${plan.argv.map(shellQuote).join(' ')}
stty -opost -echo
echo IMG-BEGIN-${plan.nonce}
(${run}) </dev/null
status=$?
printf '\\nIMG-END-${plan.nonce} %d\\n' $status
cd /
${plan.chroot ? 'for d in dev sys proc; do umount /mnt/$d 2>/dev/null; done' : ''}
sync
umount /mnt 2>/dev/null || mount -o remount,ro /mnt
sync
reboot -f
`;
}
