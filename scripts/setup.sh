#!/bin/sh
# Makes a fresh Debian clone ready: Debian packages the project and its tests need, npm
# packages (which builds the native addon), and the TypeScript build. Quiet when all is there.
set -e
cd "$(dirname "$0")/.."

need=""
command -v qemu-img >/dev/null 2>&1 || need="$need qemu-utils"
command -v nbdinfo >/dev/null 2>&1 || need="$need libnbd-bin"
command -v openssl >/dev/null 2>&1 || need="$need openssl" # certificates for the NBD TLS tests
command -v g++ >/dev/null 2>&1 || need="$need g++"
command -v make >/dev/null 2>&1 || need="$need make"
command -v python3 >/dev/null 2>&1 || need="$need python3"
command -v e2fsck >/dev/null 2>&1 || need="$need e2fsprogs"
# img boot: a kernel with its modules, busybox for the appliance, qemu as the engine where
# /dev/kvm is missing or software-only; cpio and modprobe are the tests' oracles.
ls /boot/vmlinuz-* >/dev/null 2>&1 || need="$need linux-image-cloud-amd64"
[ -x /bin/busybox ] || need="$need busybox-static"
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
command -v cpio >/dev/null 2>&1 || need="$need cpio"
command -v modprobe >/dev/null 2>&1 || need="$need kmod"
# partition and filesystem oracles for src/guestfs (sfdisk, blkid and the mkfs tools)
command -v sfdisk >/dev/null 2>&1 || need="$need fdisk"
command -v mkfs.vfat >/dev/null 2>&1 || need="$need dosfstools"
command -v mkfs.xfs >/dev/null 2>&1 || need="$need xfsprogs"
command -v mkfs.btrfs >/dev/null 2>&1 || need="$need btrfs-progs"
command -v debootstrap >/dev/null 2>&1 || need="$need debootstrap" # img boot --root tests: a Debian root filesystem
command -v fusermount3 >/dev/null 2>&1 || need="$need fuse3" # img mount as non-root
if [ -n "$need" ]; then
  echo "setup: installing Debian packages:$need"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
fi

if [ ! -f node_modules/.package-lock.json ] || [ package.json -nt node_modules/.package-lock.json ] || [ ! -f build/Release/img_native.node ]; then
  echo "setup: installing npm packages (builds the native addon)"
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; else npm install --no-audit --no-fund --loglevel=error; fi
fi

# A checkout whose native sources changed since the addon was built: rebuild it.
if [ -n "$(find native binding.gyp -newer build/Release/img_native.node 2>/dev/null | head -1)" ]; then
  echo "setup: rebuilding the native addon"
  npm run --silent native >/dev/null
fi

npx --no-install tsc -p .
