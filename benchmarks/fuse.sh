#!/usr/bin/env bash
# FUSE benchmark (issues 4 and 9): fio on the FUSE file of a `strata server`
# volume with 3 snapshots below its head, against qemu-storage-daemon's FUSE
# export of a qcow2 chain with 3 backing images below the active one.
#
# Usage: benchmarks/fuse.sh [-rounds N] [-runtime SECONDS] [-ramp SECONDS]
#        [-size BYTES] [-out DIR] [-strata BIN]
#
# Both sides hold the same layout: the bottom layer fully written, the
# second and third layers each overwriting a different quarter, and an empty
# writable top (Strata: snapshots s1, s2, s3 and the head; qcow2: base <- ov1
# <- ov2 <- top). Four fio jobs (io_uring, direct=1, time-based): randread
# 4k QD32, randwrite 4k QD32, read 1M QD8, write 1M QD8. Each round runs
# every job on both sides, the first alternating per round, so that load
# from elsewhere hits both alike.
#
# Needs root (FUSE mounts). Appends to DIR/samples.tsv (see lib.sh) and
# keeps the fio JSON there; standalone, prints the report's tables.
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
bench_need fio qemu-img qemu-io qemu-storage-daemon curl
[ "$(id -u)" = 0 ] || bench_die "needs root (FUSE mounts)"
[ $((SIZE % (4 << 20))) = 0 ] || bench_die "-size must be a multiple of 4 MiB"
bench_setup fuse "$OUT"
report=$(bench_report_tool)
strata=$(bench_strata "$STRATA")
work=$bench_work
mkdir -p "$out/fuse"
Q=$((SIZE / 4))

fillfio() { # file offset size
	fio --name=fill --filename="$1" --offset="$2" --size="$3" --rw=write --bs=1M \
		--ioengine=io_uring --direct=1 --iodepth=8 --output=/dev/null
}

bench_log "fuse: building the Strata volume: full base, two quarters, empty head"
sd="$work/strata"
strata_start "$strata" "$sd" "$out/fuse/strata-server.log" --fuse on
"$strata" volume create --data-dir "$sd" vol --size "$SIZE" >/dev/null
sfile="$sd/mnt/vol"
fillfio "$sfile" 0 "$SIZE"
"$strata" snapshot create --data-dir "$sd" vol s1 >/dev/null
fillfio "$sfile" "$Q" "$Q"
"$strata" snapshot create --data-dir "$sd" vol s2 >/dev/null
fillfio "$sfile" $((2 * Q)) "$Q"
"$strata" snapshot create --data-dir "$sd" vol s3 >/dev/null

bench_log "fuse: building the qcow2 chain: base <- ov1 <- ov2 <- top"
q="$work/qemu"
mkdir -p "$q"
qemu-img create -q -f qcow2 "$q/base.qcow2" "$SIZE"
qemu-io -f qcow2 -c "write -P 0x11 0 $SIZE" "$q/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b "$q/base.qcow2" -F qcow2 "$q/ov1.qcow2"
qemu-io -f qcow2 -c "write -P 0x22 $Q $Q" "$q/ov1.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b "$q/ov1.qcow2" -F qcow2 "$q/ov2.qcow2"
qemu-io -f qcow2 -c "write -P 0x33 $((2 * Q)) $Q" "$q/ov2.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b "$q/ov2.qcow2" -F qcow2 "$q/top.qcow2"
touch "$q/disk"
# qemu's defaults for a file node (cache=writeback: the host page cache,
# like Strata's layer files), aio=io_uring for its best case.
bench_bg qemu-storage-daemon \
	--blockdev "driver=qcow2,node-name=disk,file.driver=file,file.filename=$q/top.qcow2,file.aio=io_uring" \
	--export "type=fuse,id=exp0,node-name=disk,mountpoint=$q/disk,writable=on" \
	>"$out/fuse/qsd.log" 2>&1
qsd_pid=$bench_pid
until mountpoint -q "$q/disk"; do
	kill -0 "$qsd_pid" || bench_die "qemu-storage-daemon died; see $out/fuse/qsd.log"
	sleep 0.1
done

jobs=("randread4k randread 4k 32" "randwrite4k randwrite 4k 32" "read1m read 1M 8" "write1m write 1M 8")
echo "load before: $(bench_load)" >"$out/fuse/load.txt"
for r in $(seq 1 "$ROUNDS"); do
	sides=(strata qsd)
	[ $((r % 2)) = 0 ] && sides=(qsd strata)
	for jb in "${jobs[@]}"; do
		read -r name rw bs qd <<<"$jb"
		for side in "${sides[@]}"; do
			file=$sfile
			[ "$side" = qsd ] && file="$q/disk"
			f="$out/fuse/$name-$side-$r.json"
			fio --name="$name" --filename="$file" --size="$SIZE" --rw="$rw" --bs="$bs" --iodepth="$qd" \
				--ioengine=io_uring --direct=1 --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
				--norandommap --randrepeat=0 --output-format=json --output="$f"
			bench_fio_samples "$f" fuse "$name" "$side" "$r"
			echo "round $r $name $side: $(tail -3 "$out/samples.tsv" | awk '$5 == "iops" {print $6 " IOPS"}') load $(bench_load)" | tee -a "$out/fuse/load.txt" >&2
		done
	done
done
echo "load after: $(bench_load)" >>"$out/fuse/load.txt"
qemu-storage-daemon --version | head -1 >"$out/fuse/versions.txt"

if [ -z "$OUT" ]; then
	"$report" -in "$out" -md -
fi
