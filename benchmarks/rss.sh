#!/usr/bin/env bash
# Agent memory (issue 9): VmRSS of `strata server` started with no volume,
# then with 16 sparse 100 GiB
# volumes made with `strata volume create` (each exported over NBD and in
# the FUSE mount), then after fio wrote 2048 random 4 KiB blocks into each
# through NBD (16 jobs at once); against qemu-storage-daemon exporting 16
# sparse 100 GiB qcow2 images over NBD, measured the same way. Each round
# starts both afresh, the first alternating per round.
#
# Usage: benchmarks/rss.sh [-rounds N] [-out DIR] [-strata BIN]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. benchmarks/lib.sh

ROUNDS=3 OUT="" STRATA="" VOLS=16 VSIZE=100GiB IOS=2048
while [ $# -gt 0 ]; do
	case "$1" in
	-rounds) ROUNDS="$2"; shift 2 ;;
	-out) OUT="$2"; shift 2 ;;
	-strata) STRATA="$2"; shift 2 ;;
	*) echo "usage: $0 [-rounds N] [-out DIR] [-strata BIN]" >&2; exit 2 ;;
	esac
done
bench_need fio qemu-img qemu-storage-daemon curl
bench_setup rss "$OUT"
report=$(bench_report_tool)
strata=$(bench_strata "$STRATA")
work=$bench_work
mkdir -p "$out/rss"

# sample_rss FIGURE SYSTEM ROUND PID: VmRSS, and the anonymous part of it
# (RssAnon: heap, stacks; the rest is mapped files, mostly the binary).
sample_rss() {
	bench_sample rss "$1" "$2" "$3" rss_MiB "$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$4/status")"
	bench_sample rss "$1" "$2" "$3" anon_MiB "$(awk '/^RssAnon:/ {printf "%.1f", $2 / 1024}' "/proc/$4/status")"
}

# touch URI...: 2048 random 4 KiB writes into each URI, all at once.
touch_all() {
	local args=() u i=0
	for u; do
		i=$((i + 1))
		args+=(--name="v$i" --uri="$u")
	done
	fio --ioengine=nbd --rw=randwrite --bs=4k --iodepth=8 --size="$((100 << 30))" --number_ios="$IOS" \
		--norandommap --randrepeat=0 --output=/dev/null "${args[@]}"
}

side_strata() {
	local r=$1 d="$work/strata-$1" i uris=()
	strata_start "$strata" "$d" "$out/rss/strata-server-$r.log" --fuse on
	sleep 1
	sample_rss empty strata "$r" "$strata_pid"
	for i in $(seq -w 1 "$VOLS"); do
		"$strata" volume create --data-dir "$d" "v$i" --size "$VSIZE" >/dev/null
		uris+=("$(strata_nbd_uri "$d" "v$i")")
	done
	[ "$(ls "$d/mnt" | wc -l)" -ge "$VOLS" ] || bench_die "the FUSE mount does not show $VOLS volumes"
	sleep 1
	sample_rss open strata "$r" "$strata_pid"
	touch_all "${uris[@]}"
	sleep 1
	sample_rss touched strata "$r" "$strata_pid"
	bench_stop "$strata_pid"
	rm -rf "$d"
}

side_qsd() {
	local r=$1 d="$work/qsd-$1" i args=() uris=() pid
	mkdir -p "$d"
	for i in $(seq -w 1 "$VOLS"); do
		qemu-img create -q -f qcow2 "$d/v$i.qcow2" "$VSIZE" 2>/dev/null ||
			qemu-img create -q -f qcow2 "$d/v$i.qcow2" 100G
		args+=(--blockdev "driver=qcow2,node-name=n$i,file.driver=file,file.filename=$d/v$i.qcow2"
			--export "type=nbd,id=e$i,node-name=n$i,name=v$i,writable=on")
		uris+=("nbd+unix:///v$i?socket=$d/nbd.sock")
	done
	bench_bg qemu-storage-daemon --nbd-server "addr.type=unix,addr.path=$d/nbd.sock" "${args[@]}" \
		>>"$out/rss/qsd-$r.log" 2>&1
	pid=$bench_pid
	until [ -S "$d/nbd.sock" ]; do
		kill -0 "$pid" || bench_die "qemu-storage-daemon exited; see $out/rss/qsd-$r.log"
		sleep 0.1
	done
	sleep 1
	sample_rss open qsd "$r" "$pid"
	touch_all "${uris[@]}"
	sleep 1
	sample_rss touched qsd "$r" "$pid"
	bench_stop "$pid"
	rm -rf "$d"
}

for r in $(seq 1 "$ROUNDS"); do
	if [ $((r % 2)) = 1 ]; then
		side_strata "$r"
		side_qsd "$r"
	else
		side_qsd "$r"
		side_strata "$r"
	fi
	echo "round $r: $(grep -P "^rss\t[^\t]+\t[^\t]+\t$r\t" "$out/samples.tsv" | awk '{printf "%s %s %s MiB; ", $2, $3, $6}') load $(bench_load)" >&2
done

if [ -z "$OUT" ]; then
	"$report" -in "$out" -md -
fi
