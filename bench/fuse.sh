#!/bin/sh
# Sequential read and write throughput of a qcow2's virtual disk exported as a file through FUSE:
# img mount vs qemu-storage-daemon's FUSE export vs nbdfuse over qemu-nbd, on the same data in
# the same run. Runs alternate between the three; the best of ROUNDS is kept.
#   sh bench/fuse.sh [SIZE_MIB] [ROUNDS]      (root: qemu-storage-daemon and img mount as root)
# Reads: dd bs=1M of the whole disk of a qcow2 holding SIZE_MIB of random data (host file warm in
# the page cache), iflag=direct so no run reads another's page cache. Writes: dd bs=1M of SIZE_MIB
# of random data into a fresh empty qcow2 (allocation included), oflag=direct, conv=fsync.
set -e
cd "$(dirname "$0")/.."
size=${1:-1024}
rounds=${2:-3}
work=$(mktemp -d /var/tmp/img-bench-fuse.XXXXXX)
mkdir "$work/img" "$work/nbd"
qsd_pid=""
nbdfuse_pid=""

cleanup() {
  node bin/img unmount "$work/img" 2>/dev/null || true
  [ -n "$qsd_pid" ] && kill "$qsd_pid" 2>/dev/null || true
  fusermount3 -u "$work/nbd" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

now() { date +%s.%N; }
# MB/s for $1 MiB in the seconds between $2 and $3.
mbps() { echo "$1 $2 $3" | awk '{ printf "%.0f", $1 * 1048576 / ($3 - $2) / 1e6 }'; }

# Mounts $2 with tool $1; sets FILE to the exported disk.
mount_with() {
  case $1 in
    img)
      node bin/img mount --daemon -f qcow2 "$2" "$work/img" >/dev/null
      FILE=$work/img/disk ;;
    qsd)
      : > "$work/qsd.file"
      qemu-storage-daemon --daemonize --pidfile "$work/qsd.pid" \
        --blockdev driver=file,node-name=file,filename="$2" \
        --blockdev driver=qcow2,node-name=disk,file=file \
        --export type=fuse,id=exp,node-name=disk,mountpoint="$work/qsd.file",writable=on
      qsd_pid=$(cat "$work/qsd.pid")
      FILE=$work/qsd.file ;;
    nbd)
      qemu-nbd --fork -f qcow2 -k "$work/nbd.sock" "$2"
      nbdfuse "$work/nbd/disk" --unix "$work/nbd.sock" &
      nbdfuse_pid=$!
      while [ ! -e "$work/nbd/disk" ]; do sleep 0.05; done
      FILE=$work/nbd/disk ;;
  esac
}

unmount_with() {
  case $1 in
    img) node bin/img unmount "$work/img" ;;
    qsd)
      kill "$qsd_pid"
      while kill -0 "$qsd_pid" 2>/dev/null; do sleep 0.05; done
      qsd_pid="" ;;
    nbd)
      fusermount3 -u "$work/nbd"
      wait "$nbdfuse_pid" || true # qemu-nbd exits with its last client
      while [ -e "$work/nbd.sock" ]; do sleep 0.05; done ;;
  esac
}

echo "fuse bench: $size MiB, best of $rounds rounds (machine shared with other jobs: figures are noisy)"
head -c "${size}M" /dev/urandom > "$work/data.raw"
qemu-img convert -O qcow2 "$work/data.raw" "$work/src.qcow2"
cat "$work/src.qcow2" "$work/data.raw" > /dev/null

best_read_img=0; best_read_qsd=0; best_read_nbd=0
best_write_img=0; best_write_qsd=0; best_write_nbd=0
keep_best() { eval "cur=\$best_$1"; [ "$2" -gt "$cur" ] && eval "best_$1=$2"; return 0; }

for round in $(seq "$rounds"); do
  for tool in img qsd nbd; do
    mount_with $tool "$work/src.qcow2"
    t0=$(now); dd if="$FILE" of=/dev/null bs=1M count="$size" iflag=direct status=none; t1=$(now)
    unmount_with $tool
    keep_best read_$tool "$(mbps "$size" "$t0" "$t1")"

    qemu-img create -q -f qcow2 "$work/dst.qcow2" "${size}M"
    mount_with $tool "$work/dst.qcow2"
    t0=$(now); dd if="$work/data.raw" of="$FILE" bs=1M count="$size" oflag=direct conv=notrunc,fsync status=none; t1=$(now)
    unmount_with $tool
    keep_best write_$tool "$(mbps "$size" "$t0" "$t1")"
    qemu-img compare -q -f raw -F qcow2 "$work/data.raw" "$work/dst.qcow2"
  done
  echo "round $round: read img $best_read_img qsd $best_read_qsd nbdfuse $best_read_nbd; write img $best_write_img qsd $best_write_qsd nbdfuse $best_write_nbd (best so far, MB/s)"
done

ratio() { echo "$1 $2" | awk '{ printf "%.2f", $1 / $2 }'; }
echo "sequential read  MB/s: img $best_read_img  qemu-storage-daemon $best_read_qsd  nbdfuse $best_read_nbd  img/qsd $(ratio $best_read_img $best_read_qsd)  img/nbdfuse $(ratio $best_read_img $best_read_nbd)"
echo "sequential write MB/s: img $best_write_img  qemu-storage-daemon $best_write_qsd  nbdfuse $best_write_nbd  img/qsd $(ratio $best_write_img $best_write_qsd)  img/nbdfuse $(ratio $best_write_img $best_write_nbd)"
