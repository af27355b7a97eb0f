#!/bin/sh
# img convert vs qemu-img convert on the same image, same run: raw->qcow2, qcow2->raw, and
# compressed qcow2 with zlib and zstd, vmdk (sparse, streamOptimized, and a stream to a pipe). Prints wall time, CPU time (user+sys) and peak RSS of
# each tool and the img/qemu-img ratio, and checks that both outputs compare equal.
#
# The source is a 1.5 GiB raw disk with real content: 400 MiB of files from /usr (as a tar
# stream), 160 MiB of random bytes, 96 MiB of written zeroes, holes everywhere else.
# BENCH_DIR (default /tmp/img-bench) keeps it between runs.
set -e
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${BENCH_DIR:-/tmp/img-bench}
IMG="node $ROOT/bin/img"
MiB=1048576

if [ ! -x /usr/bin/time ]; then
  echo "bench: installing GNU time"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq time >/dev/null
fi

mkdir -p "$DIR"
SRC="$DIR/source.raw"
if [ ! -f "$SRC" ] || [ "$(stat -c %s "$SRC")" != $((1536 * MiB)) ]; then
  echo "bench: building $SRC (1.5 GiB virtual, real content, zeroes and holes)"
  rm -f "$SRC"
  truncate -s $((1536 * MiB)) "$SRC"
  tar -cf - -C / usr 2>/dev/null | head -c $((400 * MiB)) | dd of="$SRC" bs=1M seek=16 conv=notrunc,sparse status=none
  head -c $((160 * MiB)) /dev/urandom | dd of="$SRC" bs=1M seek=600 conv=notrunc status=none
  dd if=/dev/zero of="$SRC" bs=1M seek=900 count=96 conv=notrunc status=none
  head -c $((32 * MiB)) /dev/urandom | dd of="$SRC" bs=1M seek=1400 conv=notrunc status=none
fi
qemu-img convert -f raw -O qcow2 "$SRC" "$DIR/source.qcow2"
cat "$SRC" "$DIR/source.qcow2" >/dev/null # both tools start with a warm page cache

# measure NAME CMD...: runs CMD under /usr/bin/time -v; sets wall, cpu, rss. Dirty pages left by
# the previous run are written out first, so no tool pays for another's writeback.
measure() {
  sync
  /usr/bin/time -v -o "$DIR/time.txt" "$@" >/dev/null 2>"$DIR/err.txt" || {
    echo "bench: failed: $*" >&2
    cat "$DIR/err.txt" >&2
    exit 1
  }
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; print s }' "$DIR/time.txt")
  cpu=$(awk -F': ' '/User time/ { u = $2 } /System time/ { s = $2 } END { print u + s }' "$DIR/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$DIR/time.txt")
}

printf '\n%-22s %-18s %9s %9s %10s   %s\n' "case" "tool" "wall s" "cpu s" "peak MiB" "output MiB"
row() { printf '%-22s %-18s %9.2f %9.2f %10s   %s\n' "$1" "$2" "$3" "$4" "$5" "$6"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
size_mib() { du -m "$1" | cut -f1; }

# run CASE SRC OUT_FMT ARGS...: both tools, same input, outputs compared with qemu-img compare.
# img makes its output durable (fdatasync before the rename into place); qemu-img's default
# cache mode for convert is 'unsafe' (nothing synced), so the peer runs with -t writeback,
# which syncs the same way, and qemu-img's unsynced default is shown on its own row.
run_case() {
  name=$1; src=$2; fmt=$3; shift 3
  measure qemu-img convert -O "$fmt" "$@" "$src" "$DIR/out-qemu.$fmt"
  row "$name" "qemu-img -t unsafe" "$wall" "$cpu" "$rss" "(default, output not synced)"
  measure qemu-img convert -t writeback -O "$fmt" "$@" "$src" "$DIR/out-qemu.$fmt"
  qw=$wall; qc=$cpu; qr=$rss
  measure $IMG convert -O "$fmt" "$@" "$src" "$DIR/out-img.$fmt"
  iw=$wall; ic=$cpu; ir=$rss
  row "" "qemu-img -t writeback" "$qw" "$qc" "$qr" "$(size_mib "$DIR/out-qemu.$fmt")"
  row "" "img" "$iw" "$ic" "$ir" "$(size_mib "$DIR/out-img.$fmt")"
  same=$(qemu-img compare "$DIR/out-img.$fmt" "$DIR/out-qemu.$fmt" >/dev/null 2>&1 && echo "outputs equal" || echo "OUTPUTS DIFFER")
  printf '%-22s %-18s %9s %9s %10s   %s\n' "" "img/qemu" "$(ratio "$iw" "$qw")" "$(ratio "$ic" "$qc")" "$(ratio "$ir" "$qr")" "$same"
  [ "$same" = "outputs equal" ] || exit 1
}

run_case "raw -> qcow2" "$SRC" qcow2
run_case "qcow2 -> raw" "$DIR/source.qcow2" raw
run_case "raw -> qcow2 -c zlib" "$SRC" qcow2 -c -o compression_type=zlib
run_case "raw -> qcow2 -c zstd" "$SRC" qcow2 -c -o compression_type=zstd
qemu-img check -q "$DIR/out-img.qcow2" && printf "\nimg's zstd qcow2 passes qemu-img check\n"
qemu-img convert -f raw -O vdi "$SRC" "$DIR/source.vdi"
run_case "raw -> vdi" "$SRC" vdi
run_case "vdi -> raw" "$DIR/source.vdi" raw
run_case "raw -> vmdk" "$SRC" vmdk
run_case "raw -> vmdk stream" "$SRC" vmdk -o subformat=streamOptimized
# To a pipe: img only (qemu-img cannot write a stream without seeking); same bytes as the file.
measure sh -c "$IMG convert -O vmdk -o subformat=streamOptimized '$SRC' - | cat > '$DIR/out-pipe.vmdk'"
same=$(cmp -s "$DIR/out-pipe.vmdk" "$DIR/out-img.vmdk" && echo "same bytes as img's file" || echo "DIFFERS from img's file")
row "raw -> vmdk stream, -" "img | cat" "$wall" "$cpu" "$rss" "$(size_mib "$DIR/out-pipe.vmdk") ($same)"
rm -f "$DIR"/out-*.vmdk
rm -f "$DIR"/out-*.qcow2 "$DIR"/out-*.raw "$DIR"/out-*.vdi "$DIR/time.txt" "$DIR/err.txt"
echo "(machine: $(nproc) CPUs; source kept in $DIR)"
