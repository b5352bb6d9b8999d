#!/usr/bin/env bash
# NBD A/B of two Strata builds (not part of run.sh): what a change to the
# NBD server or the snapshot store does, measured the way NOTES.md's
# before/after tables were.
#
#	benchmarks/nbdab.sh -a OLD_BIN -b NEW_BIN [-rounds N] [-runtime S]
#	    [-ramp S] [-size BYTES] [-jobs "randwrite4k write1m"]
#
# Each build runs its own `strata server` (no FUSE) with a depth-0 volume
# (the image copied in by nbdcopy) and a depth-3 one (three snapshots with
# qemu-io overlays, as nbd.sh makes them); nbdkit's file plugin serves a
# `cp` of the same image. Every round runs the jobs in order on the five
# systems (a-d0 b-d0 nbdkit a-d3 b-d3), the first rotating per round, with
# fio's nbd engine. For each run it prints the IOPS and the server's CPU
# time per request (utime+stime of the serving process from the end of the
# ramp to the end of the run, over the requests fio counted), then the
# medians.
# Build the binaries with `go build -o BIN ./cmd/strata` from the two
# trees; compare the builds only within one invocation (the machine's load
# moves absolute figures between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
. benchmarks/lib.sh

ROUNDS=3 RUNTIME=5 RAMP=1 SIZE=$((1 << 30)) A="" B="" JOBS="randwrite4k write1m"
while [ $# -gt 0 ]; do
	case "$1" in
	-a) A="$2"; shift 2 ;;
	-b) B="$2"; shift 2 ;;
	-rounds) ROUNDS="$2"; shift 2 ;;
	-runtime) RUNTIME="$2"; shift 2 ;;
	-ramp) RAMP="$2"; shift 2 ;;
	-size) SIZE="$2"; shift 2 ;;
	-jobs) JOBS="$2"; shift 2 ;;
	*) echo "usage: $0 -a BIN -b BIN [-rounds N] [-runtime S] [-ramp S] [-size BYTES] [-jobs \"JOB...\"]" >&2; exit 2 ;;
	esac
done
[ -x "$A" ] && [ -x "$B" ] || bench_die "-a and -b must name strata binaries"
bench_need fio nbdkit qemu-io nbdcopy nbdinfo curl jq
bench_setup nbdab ""
work=$bench_work

for jb in $JOBS; do
	[ -n "${bench_nbd_job[$jb]:-}" ] || bench_die "unknown job $jb (randread4k randwrite4k read1m write1m)"
done

bench_log "nbdab: preparing $((SIZE >> 20)) MiB images in $work"
head -c "$SIZE" /dev/urandom >"$work/base.raw"
cp "$work/base.raw" "$work/flat.raw"

declare -A uri pid
for x in a b; do
	bin=$A
	[ "$x" = b ] && bin=$B
	d="$work/$x"
	strata_start "$bin" "$d" "$work/$x.log" --fuse off
	pid[$x]=$strata_pid
	strata_nbd_volumes "$bin" "$d" "$SIZE" "$work/base.raw"
	uri[$x-d0]=$(strata_nbd_uri "$d" d0)
	uri[$x-d3]=$(strata_nbd_uri "$d" d3)
done
bench_bg nbdkit -f -U "$work/nbdkit.sock" file file="$work/flat.raw" 2>"$work/nbdkit.log"
pid[nbdkit]=$bench_pid
uri[nbdkit]="nbd+unix:///?socket=$work/nbdkit.sock"
for _ in $(seq 1 300); do
	nbdinfo --size "${uri[nbdkit]}" >/dev/null 2>&1 && break
	sleep 0.1
done

# cpu_ticks PID: utime + stime in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

systems=(a-d0 b-d0 nbdkit a-d3 b-d3)
n=${#systems[@]}
res="$work/results.tsv"
: >"$res"
for r in $(seq 1 "$ROUNDS"); do
	for jb in $JOBS; do
		for i in $(seq 0 $((n - 1))); do
			s=${systems[$(((i + r - 1) % n))]}
			p=${pid[${s%%-*}]}
			# shellcheck disable=SC2086
			fio --name="$jb" --ioengine=nbd --uri="${uri[$s]}" ${bench_nbd_job[$jb]} \
				--size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
				--norandommap --randrepeat=0 --output-format=json --output="$work/fio.json" >/dev/null &
			f=$!
			# The CPU of the measured part only: fio counts no request
			# of the ramp.
			sleep "$RAMP"
			c0=$(cpu_ticks "$p")
			wait "$f"
			c1=$(cpu_ticks "$p")
			read -r iops ios < <(jq -r '.jobs[0] | "\(.read.iops + .write.iops | floor) \(.read.total_ios + .write.total_ios)"' "$work/fio.json")
			us=$(((c1 - c0) * 1000000 / hz / (ios > 0 ? ios : 1)))
			printf '%s\t%s\t%s\t%s\t%s\n' "$jb" "$s" "$r" "$iops" "$us" >>"$res"
			echo "round $r $jb $s: $iops IOPS, server CPU $us µs per request, load $(cut -d' ' -f1 /proc/loadavg)"
		done
	done
done

echo
echo "medians over $ROUNDS rounds (IOPS, server CPU µs per request):"
for jb in $JOBS; do
	for s in "${systems[@]}"; do
		med() { awk -F'\t' -v j="$jb" -v s="$s" -v c="$1" '$1 == j && $2 == s {print $c}' "$res" | sort -n |
			awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
		printf '%-12s %-7s %8s IOPS %6s µs\n' "$jb" "$s" "$(med 4)" "$(med 5)"
	done
done
