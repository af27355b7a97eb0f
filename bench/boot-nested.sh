#!/bin/sh
# Issue 8's boot bench for the two engines: wall time from `img boot --engine native disk.qcow2
# -- true` to its exit vs `img boot --engine qemu disk.qcow2 -- true` (qemu-system-x86_64 with
# KVM), same image (a 32 MiB ext4 qcow2), same kernel and appliance. Without hardware KVM it
# runs on the nested test bed (an outer Linux under qemu TCG whose kvm_amd gives /dev/kvm; all
# boots in one outer guest), with hardware KVM directly on the host. Times include node's start
# (≈3 s under TCG). Engines alternate; best of ROUNDS (default 3). Under TCG the figures are
# functional-test-bed figures, not real-world timings. bench/boot.sh compares img boot with a
# hand-written qemu command line on the host.
set -e
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
npx --no-install tsc -p .
node dist/test/runner/nested/bench-boot.js "$ROUNDS"
