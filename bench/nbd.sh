#!/bin/sh
# img serve vs qemu-nbd and nbdkit, same files, same run: nbdcopy read throughput (export ->
# null:, 1 and 4 connections) and a write workload (a raw file -> the export, 4 connections)
# on a qcow2 and a raw image. Prints the best of RUNS wall times, the data rate, the server's CPU
# time per run (user+sys: a fairer figure than wall time when other work shares the machine),
# and the throughput ratio img/peer; checks that every written image equals the source.
#
# The source is a 1 GiB raw disk: 300 MiB of files from /usr (as a tar stream), 200 MiB of
# random bytes, holes elsewhere. nbdkit (installed if missing) has no qcow2 reader in Debian
# 12, so it runs on the raw file only. BENCH_DIR (default /tmp/img-bench-nbd) keeps the source.
set -e
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${BENCH_DIR:-/tmp/img-bench-nbd}
RUNS=${RUNS:-3}
MiB=1048576

if ! command -v nbdkit >/dev/null 2>&1; then
  echo "bench: installing nbdkit"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nbdkit >/dev/null
fi

mkdir -p "$DIR"
SRC="$DIR/source.raw"
if [ ! -f "$SRC" ] || [ "$(stat -c %s "$SRC")" != $((1024 * MiB)) ]; then
  echo "bench: building $SRC (1 GiB virtual: files, random data, holes)"
  rm -f "$SRC"
  truncate -s $((1024 * MiB)) "$SRC"
  tar -cf - -C / usr 2>/dev/null | head -c $((300 * MiB)) | dd of="$SRC" bs=1M seek=8 conv=notrunc,sparse status=none
  head -c $((200 * MiB)) /dev/urandom | dd of="$SRC" bs=1M seek=600 conv=notrunc status=none
fi
[ -f "$DIR/source.qcow2" ] || qemu-img convert -f raw -O qcow2 "$SRC" "$DIR/source.qcow2"
cat "$SRC" "$DIR/source.qcow2" >/dev/null # a warm page cache for every server
DATA_MIB=$(qemu-img map --output=json "$SRC" | awk -F'[:,]' '/"data": true/ { s += $4 } END { printf "%d", s / 1048576 }')
SOCK="$DIR/nbd.sock"
PID=""

# start SERVER FMT FILE [ro]: starts one server on $SOCK and waits until it listens
start() {
  rm -f "$SOCK"
  ro=""
  case $1 in
    img) [ "$4" = ro ] && ro="-r"; node "$ROOT/bin/img" serve -k "$SOCK" -e 4 -t $ro -f "$2" "$3" >/dev/null & ;;
    qemu-nbd) [ "$4" = ro ] && ro="-r"; qemu-nbd -k "$SOCK" -e 4 -t $ro -f "$2" "$3" & ;;
    nbdkit) [ "$4" = ro ] && ro="-r"; nbdkit -f -U "$SOCK" $ro file file="$3" & ;;
  esac
  PID=$!
  i=0
  until nbdinfo --size "nbd+unix:///?socket=$SOCK" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -lt 200 ] || { echo "bench: $1 did not start" >&2; exit 1; }
    sleep 0.05
  done
}
stop() { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; }
# the server's CPU time so far, in seconds (utime + stime from /proc)
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$PID/stat"; }
trap 'stop; rm -f "$SOCK"' EXIT INT TERM

now() { date +%s.%N; }
# best CMD...: runs CMD $RUNS times; sets best (the shortest wall time in seconds)
best() {
  best=""
  r=0
  while [ $r -lt "$RUNS" ]; do
    t0=$(now)
    "$@" >/dev/null
    t=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
    best=$(awk -v a="$best" -v b="$t" 'BEGIN { print (a == "" || b < a) ? b : a }')
    r=$((r + 1))
  done
}
rate() { awk -v t="$1" -v m="$DATA_MIB" 'BEGIN { printf "%.0f", m / t }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "-" }'; }

URI="nbd+unix:///?socket=$SOCK"
printf '\n%-26s %-9s %9s %10s %10s   %s\n' "case ($DATA_MIB MiB of data)" "server" "best s" "MiB/s" "cpu s/run" "throughput img/peer"

# read CONNECTIONS FMT FILE SERVERS...
read_case() {
  conns=$1; fmt=$2; file=$3; shift 3
  for server in "$@"; do
    start "$server" "$fmt" "$file" ro
    c0=$(cpu)
    best nbdcopy -C "$conns" "$URI" null:
    c=$(awk -v a="$c0" -v b="$(cpu)" -v n="$RUNS" 'BEGIN { printf "%.2f", (b - a) / n }')
    stop
    eval "t_$(echo "$server" | tr - _)=$best"
    printf '%-26s %-9s %9s %10s %10s\n' "read $fmt -C $conns" "$server" "$best" "$(rate "$best")" "$c"
  done
}

# write FMT SERVERS...: nbdcopy the raw source into a fresh image served writable. The servers
# take turns run by run: the VM's disk drifts (writeback of earlier runs), and a server whose
# runs all came first or last would be charged for that drift.
write_case() {
  fmt=$1; shift
  target="$DIR/target.$fmt"
  r=0
  while [ $r -lt "$RUNS" ]; do
    for server in "$@"; do
      v=$(echo "$server" | tr - _)
      rm -f "$target"
      qemu-img create -q -f "$fmt" "$target" 1G
      sync # the previous run's dirty pages would throttle this one's writes
      start "$server" "$fmt" "$target"
      t0=$(now)
      c0=$(cpu)
      nbdcopy -C 4 "$SRC" "$URI"
      one=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }')
      c1=$(cpu)
      stop
      qemu-img compare -q -f raw -F "$fmt" "$SRC" "$target" || { echo "bench: $server wrote a different image" >&2; exit 1; }
      if [ "$fmt" = qcow2 ]; then qemu-img check -q "$target" || { echo "bench: $server left an inconsistent qcow2" >&2; exit 1; }; fi
      eval "prev=\${t_$v:-}; cpu_sum=\${c_$v:-0}"
      eval "t_$v=$(awk -v a="$prev" -v b="$one" 'BEGIN { print (a == "" || b < a) ? b : a }')"
      eval "c_$v=$(awk -v s="$cpu_sum" -v a="$c0" -v b="$c1" 'BEGIN { print s + b - a }')"
    done
    r=$((r + 1))
  done
  for server in "$@"; do
    v=$(echo "$server" | tr - _)
    eval "t=\$t_$v; c=\$c_$v"
    printf '%-26s %-9s %9s %10s %10.2f\n' "write $fmt" "$server" "$t" "$(rate "$t")" "$(awk -v c="$c" -v n="$RUNS" 'BEGIN { print c / n }')"
  done
}

summary() { printf '%-26s %-9s %9s %10s %10s   %s\n' "" "" "" "" "" "vs qemu-nbd $(ratio "$t_img" "$t_qemu_nbd")${1:+, vs nbdkit $(ratio "$t_img" "$t_nbdkit")}"; }

for conns in 1 4; do
  read_case "$conns" qcow2 "$DIR/source.qcow2" img qemu-nbd; summary
  read_case "$conns" raw "$SRC" img qemu-nbd nbdkit; summary nbdkit
done
unset t_img t_qemu_nbd t_nbdkit c_img c_qemu_nbd c_nbdkit
write_case qcow2 img qemu-nbd; summary
unset t_img t_qemu_nbd t_nbdkit c_img c_qemu_nbd c_nbdkit
write_case raw img qemu-nbd nbdkit; summary nbdkit
rm -f "$DIR"/target.*
echo "(machine: $(nproc) CPUs; source kept in $DIR; ratios above 1 mean img is faster)"
