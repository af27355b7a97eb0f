#!/bin/sh
# virtio-blk throughput seen by the tiny test guest in the KVM runner: sequential 1 MiB
# reads and writes (4 in flight) through the file backend, and through the NBD backend
# against img serve and against qemu-nbd (the peer) serving the same raw and qcow2
# images. Runs alternate between servers; each case is the best of RUNS (default 3).
# Prints MB/s per case and img serve / qemu-nbd per NBD case.
set -e
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${BENCH_DIR:-/tmp/img-bench-runner}
MIB=${MIB:-256}
RUNS=${RUNS:-3}
mkdir -p "$DIR"
[ -f dist/test/runner/guest.js ] || npx --no-install tsc -p .

RAW="$DIR/disk.raw"
QCOW="$DIR/disk.qcow2"
if [ ! -f "$RAW" ] || [ "$(stat -c %s "$RAW")" != $((MIB * 1048576)) ]; then
  head -c $((MIB * 1048576)) /dev/urandom >"$RAW"
fi
qemu-img convert -f raw -O qcow2 "$RAW" "$QCOW"

# guest DISK_JSON MODE: MB/s of one run
guest() { node bench/runner-guest.js "$1" "$2" "$MIB"; }
best() { printf '%s\n' "$@" | sort -g | tail -1; }

# serve img|qemu FORMAT FILE SOCKET: starts a server on SOCKET, sets PID
serve() {
  rm -f "$4"
  if [ "$1" = img ]; then
    node bin/img serve -f "$2" -k "$4" "$3" >/dev/null &
  else
    qemu-nbd -f "$2" -k "$4" "$3" &
  fi
  PID=$!
  i=0
  while [ ! -S "$4" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
}

printf '\n%-8s %-6s %-12s %10s %10s\n' mode format backend "MB/s" "vs qemu-nbd"
for mode in read write; do
  runs=""
  for r in $(seq "$RUNS"); do
    cp "$RAW" "$DIR/file.raw"
    cat "$DIR/file.raw" >/dev/null
    runs="$runs $(guest "{\"kind\":\"file\",\"path\":\"$DIR/file.raw\"}" $mode)"
  done
  printf '%-8s %-6s %-12s %10s\n' $mode raw file "$(best $runs)"
  for fmt in raw qcow2; do
    file=$RAW
    [ $fmt = qcow2 ] && file=$QCOW
    img="" peer=""
    for r in $(seq "$RUNS"); do
      for server in img qemu; do
        serve $server $fmt "$file" "$DIR/nbd.sock"
        v=$(guest "{\"kind\":\"nbd\",\"socket\":\"$DIR/nbd.sock\"}" $mode)
        kill $PID 2>/dev/null || true
        wait $PID 2>/dev/null || true
        if [ $server = img ]; then img="$img $v"; else peer="$peer $v"; fi
      done
    done
    a=$(best $img)
    b=$(best $peer)
    printf '%-8s %-6s %-12s %10s %10s\n' $mode $fmt "nbd img" "$a" "$(echo "$a $b" | awk '{ printf "%.2f", $1 / $2 }')"
    printf '%-8s %-6s %-12s %10s\n' $mode $fmt "nbd qemu" "$b"
  done
done
rm -f "$DIR/file.raw" "$DIR/nbd.sock"
