#!/bin/sh
# Time from start to the inner guest's init marker (the stock Debian cloud kernel with a busybox
# initramfs that loads the virtio modules, reads and writes /dev/vda and reboots): img's runner
# vs qemu-system-x86_64 -enable-kvm, same kernel, initramfs and disk. Without hardware KVM it
# runs on the nested test bed (an outer Linux under qemu TCG whose kvm_amd gives /dev/kvm; one
# fresh outer guest per boot); with hardware KVM directly on the host. Both engines are timed
# the same way, inside the same node process layout (test/runner/nested/guest-run.ts), from
# just before the start to the first console line of the inner init. Engines alternate; best
# of ROUNDS. Under TCG the figures are functional-test-bed figures, not real-world timings.
set -e
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
npx --no-install tsc -p .
node dist/test/runner/nested/bench.js "$ROUNDS"
