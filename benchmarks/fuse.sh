#!/usr/bin/env bash
# FUSE export benchmark (issue 4): fio on the FUSE file of a Strata volume
# with 3 snapshots below its head, against qemu-storage-daemon's FUSE export
# of a qcow2 chain with 3 backing images below the active one.
#
# Usage: benchmarks/fuse.sh [-rounds N] [-runtime SECONDS]
#
# Both sides hold the same layout of a 1 GiB device: the bottom layer fully
# written, the second and third layers each overwriting a different 256 MiB
# quarter, and an empty writable top (Strata: snapshots s1, s2, s3 and the
# head; qcow2: base <- ov1 <- ov2 <- top). Four fio jobs (io_uring,
# direct=1, time-based, 1 GiB file): randread 4k QD32, randwrite 4k QD32,
# read 1M QD8, write 1M QD8. Each round runs every job on Strata then on
# qemu, alternating, so that load from elsewhere hits both alike; the
# summary gives medians over the rounds and Strata/qemu ratios.
#
# Strata is served by the blockdev/attach test binary re-executed as its
# serve child (the server the agent will be, minus the control API), with a
# CPU profile of the whole run; `go tool pprof -top` of it is saved.
#
# Needs root, fio, qemu-img, qemu-io, qemu-storage-daemon (scripts/deps.sh).
# Raw output goes to benchmarks/out/fuse-<time>/; summary.md there is ready
# for benchmarks/RESULTS.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

GO="${GO:-go}"
ROUNDS=3
RUNTIME=10
while [ $# -gt 0 ]; do
	case "$1" in
	-rounds) ROUNDS="$2"; shift 2 ;;
	-runtime) RUNTIME="$2"; shift 2 ;;
	*) echo "usage: $0 [-rounds N] [-runtime SECONDS]" >&2; exit 2 ;;
	esac
done
for tool in fio qemu-img qemu-io qemu-storage-daemon python3; do
	command -v "$tool" >/dev/null || { echo "$0: needs $tool (scripts/deps.sh)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "$0: needs root (FUSE mounts)" >&2; exit 1; }

out="$PWD/benchmarks/out/fuse-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/strata-fusebench.XXXXXX")
SIZE=$((1 << 30))
strata_pid="" qsd_pid=""

cleanup() {
	set +e
	[ -n "$strata_pid" ] && kill -TERM "$strata_pid" 2>/dev/null && wait "$strata_pid"
	[ -n "$qsd_pid" ] && kill -TERM "$qsd_pid" 2>/dev/null && wait "$qsd_pid"
	for m in "$work/strata/mnt" "$work/qemu/disk"; do
		mountpoint -q "$m" 2>/dev/null && umount -l "$m"
	done
	rm -rf "$work"
}
trap cleanup EXIT

"$GO" test -c -o "$work/attach.test" ./blockdev/attach

mkdir -p "$work/strata/mnt"
# start_strata [snapshot]: serve the volume (taking the snapshot first).
start_strata() {
	STRATA_ATTACH_SERVE=1 STRATA_SERVE_STORE="$work/strata/store" \
		STRATA_SERVE_MNT="$work/strata/mnt" STRATA_SERVE_SIZE=$SIZE \
		STRATA_SERVE_SNAPSHOT="${1:-}" STRATA_SERVE_CPUPROFILE="${2:-}" \
		"$work/attach.test" -test.run='^$' >"$work/strata.out" 2>>"$out/strata-server.log" &
	strata_pid=$!
	until grep -q '^READY' "$work/strata.out"; do
		kill -0 "$strata_pid" || { echo "strata server died; see $out/strata-server.log" >&2; exit 1; }
		sleep 0.1
	done
}
stop_strata() {
	kill -TERM "$strata_pid"
	wait "$strata_pid"
	strata_pid=""
}
fillfio() { # file offset size
	fio --name=fill --filename="$1" --offset="$2" --size="$3" --rw=write --bs=1M \
		--ioengine=io_uring --direct=1 --iodepth=8 --output=/dev/null
}

echo "== building the Strata volume: full base, two quarters, empty head" >&2
start_strata
fillfio "$work/strata/mnt/vol" 0 1G
stop_strata
start_strata s1
fillfio "$work/strata/mnt/vol" 256M 256M
stop_strata
start_strata s2
fillfio "$work/strata/mnt/vol" 512M 256M
stop_strata
start_strata s3 "$out/strata.cpu.pprof"
ls -l "$work/strata/mnt" >&2

echo "== building the qcow2 chain: base <- ov1 <- ov2 <- top" >&2
mkdir -p "$work/qemu"
q="$work/qemu"
qemu-img create -q -f qcow2 "$q/base.qcow2" 1G
qemu-io -f qcow2 -c "write -P 0x11 0 1G" "$q/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b "$q/base.qcow2" -F qcow2 "$q/ov1.qcow2"
qemu-io -f qcow2 -c "write -P 0x22 256M 256M" "$q/ov1.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b "$q/ov1.qcow2" -F qcow2 "$q/ov2.qcow2"
qemu-io -f qcow2 -c "write -P 0x33 512M 256M" "$q/ov2.qcow2" >/dev/null
qemu-img create -q -f qcow2 -b "$q/ov2.qcow2" -F qcow2 "$q/top.qcow2"
touch "$q/disk"
# qemu's defaults for a file node (cache=writeback: the host page cache,
# like Strata's layer files), aio=io_uring for its best case.
qemu-storage-daemon \
	--blockdev "driver=qcow2,node-name=disk,file.driver=file,file.filename=$q/top.qcow2,file.aio=io_uring" \
	--export "type=fuse,id=exp0,node-name=disk,mountpoint=$q/disk,writable=on" \
	>"$out/qsd.log" 2>&1 &
qsd_pid=$!
until mountpoint -q "$q/disk"; do
	kill -0 "$qsd_pid" || { echo "qemu-storage-daemon died; see $out/qsd.log" >&2; exit 1; }
	sleep 0.1
done
qemu-img info --backing-chain "$q/top.qcow2" -U >"$out/qcow2-chain.txt" 2>&1 || true

jobs=("randread 4k 32" "randwrite 4k 32" "read 1M 8" "write 1M 8")
echo "load before: $(cat /proc/loadavg)" >"$out/load.txt"
for round in $(seq 1 "$ROUNDS"); do
	for job in "${jobs[@]}"; do
		set -- $job
		for side in strata qemu; do
			file="$work/strata/mnt/vol"
			[ "$side" = qemu ] && file="$q/disk"
			echo "== round $round: $side $1 bs=$2 QD$3" >&2
			fio --name="$1" --filename="$file" --size=1G --rw="$1" --bs="$2" --iodepth="$3" \
				--ioengine=io_uring --direct=1 --time_based --runtime="$RUNTIME" \
				--randrepeat=0 --output-format=json \
				--output="$out/$side-$1-r$round.json"
			echo "$side $1 r$round load $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/load.txt"
		done
	done
done
echo "load after: $(cat /proc/loadavg)" >>"$out/load.txt"
stop_strata
"$GO" tool pprof -top -nodecount=30 "$work/attach.test" "$out/strata.cpu.pprof" >"$out/strata.cpu.top.txt" 2>&1 || true

machine() {
	echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ($(nproc) cores)"
	echo "- Memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
	echo "- Kernel: $(uname -r)"
	echo "- Filesystem of the temp dir: $(df -T "$work" | awk 'NR==2 {print $2}')"
	echo "- Go: $("$GO" env GOVERSION); fio: $(fio --version); $(qemu-storage-daemon --version | head -1)"
}

{
	echo "Command: \`benchmarks/fuse.sh -rounds $ROUNDS -runtime $RUNTIME\` ($(date -u +%Y-%m-%d))"
	echo
	machine
	echo
	python3 - "$out" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
jobs = [("randread", "4k", 32), ("randwrite", "4k", 32), ("read", "1M", 8), ("write", "1M", 8)]
def load(side, job, r):
    j = json.load(open(f"{out}/{side}-{job}-r{r}.json"))["jobs"][0]
    d = j["read"] if j["read"]["io_bytes"] else j["write"]
    return d["iops"], d["bw"] / 1024, d["clat_ns"]["percentile"].get("99.000000", 0) / 1000
print("| job | Strata IOPS median (min–max) | qemu IOPS median (min–max) | Strata MiB/s | qemu MiB/s | Strata p99 µs | qemu p99 µs | Strata / qemu |")
print("|---|---|---|---|---|---|---|---|")
for job, bs, qd in jobs:
    s = [load("strata", job, r) for r in range(1, rounds + 1)]
    q = [load("qemu", job, r) for r in range(1, rounds + 1)]
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    rng = lambda xs: f"{min(x[0] for x in xs):.0f}–{max(x[0] for x in xs):.0f}"
    print(f"| {job} {bs} QD{qd} | {med(s,0):.0f} ({rng(s)}) | {med(q,0):.0f} ({rng(q)}) | "
          f"{med(s,1):.0f} | {med(q,1):.0f} | {med(s,2):.0f} | {med(q,2):.0f} | {med(s,0)/med(q,0):.2f}× |")
EOF
	echo
	echo "Load average (1/5/15 min) before and after: $(head -1 "$out/load.txt" | cut -d' ' -f3-5) → $(tail -1 "$out/load.txt" | cut -d' ' -f3-5)"
} | tee "$out/summary.md"
echo "raw output: $out" >&2
