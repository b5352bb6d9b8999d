#!/usr/bin/env bash
# Snapshot create latency under load (issue 9): a running `strata server`,
# fio (nbd engine, randrw 4k QD16) on a volume's NBD export, and meanwhile
# POST /v1/volumes/VOL/snapshots on the control socket every INTERVAL
# seconds, timed by curl (connect to response). Two volumes: 1 GiB fully
# written, and 1 TiB sparse with 1 GiB written as 1 MiB extents scattered
# over the whole range, both created afresh for every round; the two
# alternate per round. Per round: p50, p99
# (nearest rank) and max of the snapshots' latencies, their count, and the
# fio load's IOPS meanwhile.
#
# Usage: benchmarks/snaplat.sh [-rounds N] [-snaps N] [-interval SECONDS]
#        [-out DIR] [-strata BIN]
#
# (benchmarks/snapshot.sh measures the store's Snapshot() in process, with
# no server and no load.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. benchmarks/lib.sh

ROUNDS=3 SNAPS=60 INTERVAL=0.05 OUT="" STRATA=""
while [ $# -gt 0 ]; do
	case "$1" in
	-rounds) ROUNDS="$2"; shift 2 ;;
	-snaps) SNAPS="$2"; shift 2 ;;
	-interval) INTERVAL="$2"; shift 2 ;;
	-out) OUT="$2"; shift 2 ;;
	-strata) STRATA="$2"; shift 2 ;;
	*) echo "usage: $0 [-rounds N] [-snaps N] [-interval S] [-out DIR] [-strata BIN]" >&2; exit 2 ;;
	esac
done
bench_need fio curl
bench_setup snapshot "$OUT"
report=$(bench_report_tool)
strata=$(bench_strata "$STRATA")
work=$bench_work
mkdir -p "$out/snapshot"

sd="$work/strata"
strata_start "$strata" "$sd" "$out/snapshot/strata-server.log" --fuse off
declare -A vol

# fresh ROUND SIZE: a new volume for this round and size (so that rounds
# do not inherit each other's snapshots), with 1 GiB written; the previous
# round's volume of that size is removed.
fresh() {
	local r=$1 sz=$2 v i
	v="v$(echo "$sz" | tr 'A-Z' 'a-z')-r$r"
	if [ -n "${vol[$sz]:-}" ]; then
		# The server may not have seen fio's disconnect yet.
		for i in $(seq 50); do
			"$strata" volume rm --data-dir "$sd" "${vol[$sz]}" >/dev/null 2>&1 && break
			sleep 0.2
		done
	fi
	vol[$sz]=$v
	"$strata" volume create --data-dir "$sd" "$v" --size "$sz" >/dev/null
	if [ "$sz" = 1GiB ]; then
		fio --name=fill --ioengine=nbd --uri="$(strata_nbd_uri "$sd" "$v")" --rw=write --bs=1M --iodepth=8 \
			--size=1G --output=/dev/null
	else
		fio --name=fill --ioengine=nbd --uri="$(strata_nbd_uri "$sd" "$v")" --rw=randwrite --bs=1M --iodepth=8 \
			--size="$sz" --io_size=1G --norandommap --randrepeat=0 --output=/dev/null
	fi
}

# measure ROUND SIZE
measure() {
	local r=$1 sz=$2 v i t code lat="$out/snapshot/lat-$2-$1.txt" fpid
	fresh "$r" "$sz"
	v=${vol[$sz]}
	: >"$lat"
	fio --name=load --ioengine=nbd --uri="$(strata_nbd_uri "$sd" "$v")" --rw=randrw --bs=4k --iodepth=16 \
		--size="$sz" --time_based --runtime=3600 --norandommap --randrepeat=0 \
		--output-format=json --output="$out/snapshot/load-$sz-$r.json" &
	fpid=$!
	bench_pids+=("$fpid")
	sleep 1
	for i in $(seq 1 "$SNAPS"); do
		read -r code t < <(curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --unix-socket "$sd/strata.sock" \
			-X POST -H 'Content-Type: application/json' -d "{\"name\":\"r$r-$i\"}" \
			"http://strata/v1/volumes/$v/snapshots")
		[ "$code" = 201 ] || bench_die "snapshot create on $v answered HTTP $code"
		echo "$t" >>"$lat"
		sleep "$INTERVAL"
	done
	# fio ends on SIGINT and still writes its JSON.
	kill -INT "$fpid"
	wait "$fpid" || true
	bench_pids=("${bench_pids[@]/$fpid/}")
	sort -g "$lat" | awk -v r="$r" -v sz="$sz" '
		{ v[NR] = $1 * 1000 }
		END {
			n = NR
			i50 = int(0.5 * n); if (i50 < 0.5 * n) i50++
			i99 = int(0.99 * n); if (i99 < 0.99 * n) i99++
			printf "snapshot\t%s\tstrata\t%d\tp50ms\t%.3f\n", sz, r, v[i50]
			printf "snapshot\t%s\tstrata\t%d\tp99ms\t%.3f\n", sz, r, v[i99]
			printf "snapshot\t%s\tstrata\t%d\tmaxms\t%.3f\n", sz, r, v[n]
			printf "snapshot\t%s\tstrata\t%d\tn\t%d\n", sz, r, n
		}' >>"$out/samples.tsv"
	"$report" fio "$out/snapshot/load-$sz-$r.json" snapshot "$sz" strata "$r" |
		awk -F'\t' -v OFS='\t' '$5 == "iops" { $5 = "load_iops"; print }' >>"$out/samples.tsv"
	echo "round $r $sz: $(grep -P "^snapshot\t$sz\tstrata\t$r\t" "$out/samples.tsv" | cut -f5,6 | tr '\t\n' '= ') load $(bench_load)" >&2
}

for r in $(seq 1 "$ROUNDS"); do
	if [ $((r % 2)) = 1 ]; then
		measure "$r" 1GiB
		measure "$r" 1TiB
	else
		measure "$r" 1TiB
		measure "$r" 1GiB
	fi
done

if [ -z "$OUT" ]; then
	"$report" -in "$out" -md -
fi
