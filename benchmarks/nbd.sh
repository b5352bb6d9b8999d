#!/usr/bin/env bash
# NBD benchmark (issues 3 and 9): the same four fio jobs (fio's nbd engine,
# libnbd, one connection) against
#   strata-d0 - `strata server` serving a volume holding the base image in
#               its head, no snapshot,
#   strata-d3 - the same server serving a volume with 3 snapshots below the
#               head: base → s1, overlay 1 → s2, overlay 2 → s3, overlay 3
#               in the head,
#   nbdkit    - nbdkit's file plugin on a flat raw copy of the base,
#   qemu-d3   - qemu-nbd on a qcow2 chain of the same shape as strata-d3:
#               base ← o1 ← o2 ← top (3 images below the served one),
# and the limit: raw, fio's io_uring engine on another flat raw copy
# (buffered, through the page cache that every server above also uses).
# Overlay k writes 1 MiB of the byte 0x10+k at MiB offsets 16j+5k, j < 64.
# The systems alternate within every round, the first rotating per round.
#
# Usage: benchmarks/nbd.sh [-rounds N] [-runtime SECONDS] [-ramp SECONDS]
#        [-size BYTES] [-out DIR] [-strata BIN]
#
# Appends to DIR/samples.tsv (see lib.sh) and keeps every fio JSON there;
# standalone, prints the tables benchmarks/report makes of them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. benchmarks/lib.sh

ROUNDS=3 RUNTIME=10 RAMP=2 SIZE=$((1 << 30)) OUT="" STRATA=""
while [ $# -gt 0 ]; do
	case "$1" in
	-rounds) ROUNDS="$2"; shift 2 ;;
	-runtime) RUNTIME="$2"; shift 2 ;;
	-ramp) RAMP="$2"; shift 2 ;;
	-size) SIZE="$2"; shift 2 ;;
	-out) OUT="$2"; shift 2 ;;
	-strata) STRATA="$2"; shift 2 ;;
	*) echo "usage: $0 [-rounds N] [-runtime S] [-ramp S] [-size BYTES] [-out DIR] [-strata BIN]" >&2; exit 2 ;;
	esac
done
bench_need fio nbdkit qemu-nbd qemu-img qemu-io nbdinfo nbdcopy curl
bench_setup nbd "$OUT"
report=$(bench_report_tool)
strata=$(bench_strata "$STRATA")
work=$bench_work
mkdir -p "$out/nbd"

bench_log "nbd: preparing $((SIZE >> 20)) MiB images in $work"
head -c "$SIZE" /dev/urandom >"$work/base.raw"
cp "$work/base.raw" "$work/flat.raw"
cp "$work/base.raw" "$work/raw.raw"

qemu-img convert -q -f raw -O qcow2 "$work/base.raw" "$work/q0.qcow2"
for k in 1 2 3; do
	qemu-img create -q -f qcow2 -b "$work/q$((k - 1)).qcow2" -F qcow2 "$work/q$k.qcow2"
	mapfile -t args < <(bench_overlay_args "$k" "$SIZE")
	qemu-io -f qcow2 "${args[@]}" "$work/q$k.qcow2" >/dev/null
done

sd="$work/strata"
strata_start "$strata" "$sd" "$out/nbd/strata-server.log" --fuse off
strata_nbd_volumes "$strata" "$sd" "$SIZE" "$work/base.raw"

sock_nbdkit="$work/nbdkit.sock"
sock_qemu="$work/qemu.sock"
bench_bg nbdkit -f -U "$sock_nbdkit" file file="$work/flat.raw" 2>"$out/nbd/nbdkit.log"
bench_bg qemu-nbd -k "$sock_qemu" -f qcow2 -t -e 4 --cache=writeback "$work/q3.qcow2" 2>"$out/nbd/qemu-nbd.log"

declare -A uri=(
	[strata-d0]=$(strata_nbd_uri "$sd" d0)
	[strata-d3]=$(strata_nbd_uri "$sd" d3)
	[nbdkit]="nbd+unix:///?socket=$sock_nbdkit"
	[qemu-d3]="nbd+unix:///?socket=$sock_qemu"
)
for s in "${!uri[@]}"; do
	for _ in $(seq 1 300); do
		nbdinfo --size "${uri[$s]}" >/dev/null 2>&1 && break
		sleep 0.1
	done
	size=$(nbdinfo --size "${uri[$s]}")
	[ "$size" = "$SIZE" ] || bench_die "$s serves $size bytes, want $SIZE"
done

jobs=(randread4k randwrite4k read1m write1m)
systems=(strata-d0 strata-d3 nbdkit qemu-d3 raw)
n=${#systems[@]}

echo "load before: $(bench_load)" >"$out/nbd/load.txt"
for r in $(seq 1 "$ROUNDS"); do
	for jb in "${jobs[@]}"; do
		for i in $(seq 0 $((n - 1))); do
			s="${systems[$(((i + r - 1) % n))]}"
			f="$out/nbd/$jb-$s-$r.json"
			if [ "$s" = raw ]; then
				target=(--ioengine=io_uring --filename="$work/raw.raw")
			else
				target=(--ioengine=nbd --uri="${uri[$s]}")
			fi
			# shellcheck disable=SC2086
			fio --name="$jb" "${target[@]}" ${bench_nbd_job[$jb]} \
				--size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
				--norandommap --randrepeat=0 --output-format=json --output="$f"
			bench_fio_samples "$f" nbd "$jb" "$s" "$r"
			echo "round $r $jb $s: $(tail -3 "$out/samples.tsv" | awk '$5 == "iops" {print $6 " IOPS"}') load $(bench_load)" | tee -a "$out/nbd/load.txt" >&2
		done
	done
done
echo "load after: $(bench_load)" >>"$out/nbd/load.txt"
{
	echo "fio $(fio --version | sed 's/^fio-//')"
	nbdkit --version
	qemu-nbd --version | head -1
} >"$out/nbd/versions.txt"

if [ -z "$OUT" ]; then
	"$report" -in "$out" -md -
fi
