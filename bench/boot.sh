#!/bin/sh
# img boot vs a hand-written qemu command line on the host: wall time from start to exit of
# `true` run in the image's filesystem, same kernel, same appliance (img's, built once with a
# fixed nonce for qemu), same machine (pc, TCG or KVM as img picks, 512 MiB, virtio-blk).
#   raw:   img boot disk.raw  (file backend)     vs  qemu -drive file=disk.raw,format=raw
#   qcow2: img boot disk.qcow2 (img's NBD server) vs  qemu -drive file=disk.qcow2,format=qcow2
# Runs alternate img and qemu, ROUNDS times (default 3), and keep the best of each.
# BENCH_DIR (default /tmp/img-bench-boot) holds the images.
set -e
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${BENCH_DIR:-/tmp/img-bench-boot}
ROUNDS=${ROUNDS:-3}
IMG="node $ROOT/bin/img"
KERNEL=$(ls /boot/vmlinuz-* | sort -V | tail -1)
RELEASE=${KERNEL#/boot/vmlinuz-}

mkdir -p "$DIR/tree"
echo "bench boot" >"$DIR/tree/hello.txt"
rm -f "$DIR/disk.raw" "$DIR/disk.qcow2"
truncate -s 256M "$DIR/disk.raw"
mke2fs -q -F -t ext4 -d "$DIR/tree" "$DIR/disk.raw"
qemu-img convert -O qcow2 "$DIR/disk.raw" "$DIR/disk.qcow2"

# The appliance img builds for `-- true` on this disk (nonce fixed: the hand-written run's
# console is not parsed).
node -e "
const fs = require('fs');
const { buildAppliance } = require('$ROOT/dist/src/runner/appliance');
fs.writeFileSync('$DIR/appliance.cpio.gz', buildAppliance({ nonce: 'bench', release: '$RELEASE', modulesRoot: '/lib/modules',
  fs: 'ext4', device: 'vda', readOnly: false, chroot: false, argv: ['true'] }));"

ACCEL=tcg
CPU=max
if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then ACCEL=kvm; CPU=host; fi

now() { date +%s.%N; }
# best NAME SECONDS: keeps the smallest time per name
best() { eval "cur=\${best_$1:-}"; if [ -z "$cur" ] || [ "$(echo "$2 < $cur" | bc)" = 1 ]; then eval "best_$1=$2"; fi; }

hand() { # format file
  qemu-system-x86_64 -machine pc,accel=$ACCEL -cpu $CPU -m 512 -nodefaults -no-user-config -display none -monitor none \
    -serial stdio -no-reboot -kernel "$KERNEL" -initrd "$DIR/appliance.cpio.gz" \
    -append 'console=ttyS0 acpi=off reboot=t panic=-1 quiet loglevel=0' \
    -drive "file=$2,format=$1,if=none,id=vda,cache=writeback" -device virtio-blk-pci,drive=vda </dev/null >"$DIR/hand.out"
  grep -q 'IMG-END-bench 0' "$DIR/hand.out"
}

echo "bench: kernel $KERNEL, accel $ACCEL, $ROUNDS rounds (machine shared with other jobs: best of each)"
i=0
while [ $i -lt "$ROUNDS" ]; do
  for f in raw qcow2; do
    t=$(now); $IMG boot --engine qemu "$DIR/disk.$f" -- true 2>/dev/null; best img_$f "$(echo "$(now) - $t" | bc)"
    t=$(now); hand $f "$DIR/disk.$f"; best qemu_$f "$(echo "$(now) - $t" | bc)"
  done
  i=$((i + 1))
done
for f in raw qcow2; do
  eval "a=\$best_img_$f b=\$best_qemu_$f"
  printf '%-6s img boot %6.2f s   hand-written qemu %6.2f s   img/qemu %.2f\n' "$f" "$a" "$b" "$(echo "$a / $b" | bc -l)"
done
rm -rf "$DIR"
