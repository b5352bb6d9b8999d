#!/usr/bin/env bash
# Backup-target plugin overhead (issue 6): Put and Get of 4 MiB objects on
# the fs target called in-process and through its plugin process (go-plugin
# with AutoMTLS; the bytes through descriptors of the object's files that the
# plugin passes on its data plane, plugins/doc.go), with the Go benchmark
# BenchmarkTarget of plugins/fs. Each round runs Put then Get, each on both
# sides back to back; which side goes first alternates per round.
#
# Usage: benchmarks/plugin.sh [-rounds N] [-benchtime D] [-out DIR]
#
# Appends to DIR/samples.tsv (see lib.sh) and keeps each run's `go test`
# output there; standalone, prints the report's tables.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. benchmarks/lib.sh

ROUNDS=3 BENCHTIME=2s OUT=""
while [ $# -gt 0 ]; do
	case "$1" in
	-rounds) ROUNDS="$2"; shift 2 ;;
	-benchtime) BENCHTIME="$2"; shift 2 ;;
	-out) OUT="$2"; shift 2 ;;
	-strata) shift 2 ;; # accepted for run.sh's uniform call; the benchmark is a Go test binary
	*) echo "usage: $0 [-rounds N] [-benchtime D] [-out DIR]" >&2; exit 2 ;;
	esac
done

bench_setup plugin "$OUT"
report=$(bench_report_tool)
work=$bench_work
mkdir -p "$out/plugin"
# BENCH_SRC: the source tree run.sh built strata from (--rev). The test
# binary doubles as the plugin (`strata plugin serve fs`).
(cd "${BENCH_SRC:-$PWD}" && "$GO" test -c -o "$work/fs.test" ./plugins/fs)

for r in $(seq 1 "$ROUNDS"); do
	sides="inprocess plugin"
	[ $((r % 2)) = 0 ] && sides="plugin inprocess"
	res="$out/plugin/round-$r.txt"
	: >"$res"
	for op in Put Get; do
		for side in $sides; do
			# Temp files of the benchmark (b.TempDir) go under the work directory.
			(cd "$work" && TMPDIR="$work" ./fs.test -test.run '^$' -test.benchtime "$BENCHTIME" \
				-test.bench "^BenchmarkTarget\$/^$op\$/^4096KiB\$/^$side\$") >>"$res"
		done
	done
	"$report" plugin "$res" "$r" >>"$out/samples.tsv"
	echo "round $r: $(grep -P "^plugin\t[^\t]+\t[^\t]+\t$r\t" "$out/samples.tsv" | awk '{printf "%s %s %s MB/s; ", $2, $3, $6}') load $(bench_load)" >&2
done

if [ -z "$OUT" ]; then
	"$report" -in "$out" -md -
fi
