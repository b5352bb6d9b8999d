#!/usr/bin/env bash
# Volume-backup benchmark (issues 7 and 9): Strata's backup engine vs restic
# 0.18.1 on the same random image, alternating which tool goes first each
# round: full backup, incremental after a 10 MiB contiguous change,
# incremental after 1% scattered 4 KiB writes (time and bytes stored), and
# restore. Strata runs through the real volume store (snapshots and
# changed-block tracking) into an fs target, encrypted like restic's
# repository; restic backs up the image file into a local repository
# (backupd/internal/benchbackup runs one round).
#
# Usage: benchmarks/backup.sh [-rounds N] [-size BYTES] [-out DIR]
#
# Installs restic 0.18.1 with `go install` (into $(go env GOPATH)/bin) if
# it is missing. Appends to DIR/samples.tsv (see lib.sh) and keeps every
# round's JSON there; standalone, prints the report's tables.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. benchmarks/lib.sh

ROUNDS=3 SIZE=$((1 << 30)) OUT=""
while [ $# -gt 0 ]; do
	case "$1" in
	-rounds) ROUNDS="$2"; shift 2 ;;
	-size) SIZE="$2"; shift 2 ;;
	-out) OUT="$2"; shift 2 ;;
	-strata) shift 2 ;; # accepted for run.sh's uniform call; the engine runs in process
	*) echo "usage: $0 [-rounds N] [-size BYTES] [-out DIR]" >&2; exit 2 ;;
	esac
done

RESTIC_VERSION=0.18.1
restic="$("$GO" env GOPATH)/bin/restic"
if ! "$restic" version 2>/dev/null | grep -q "restic $RESTIC_VERSION"; then
	echo "installing restic $RESTIC_VERSION" >&2
	"$GO" install "github.com/restic/restic/cmd/restic@v$RESTIC_VERSION"
fi

bench_setup backup "$OUT"
report=$(bench_report_tool)
work=$bench_work
mkdir -p "$out/backup"
# BENCH_SRC: the source tree run.sh built strata from (--rev).
(cd "${BENCH_SRC:-$PWD}" && "$GO" build -o "$work/benchbackup" ./backupd/internal/benchbackup)
"$restic" version | head -1 >"$out/backup/versions.txt"

for r in $(seq 1 "$ROUNDS"); do
	# benchbackup's round 0, 2, ... runs Strata first; 1, 3, ... restic.
	"$work/benchbackup" -dir "$work/round" -size "$SIZE" -restic "$restic" -round "$((r - 1))" >"$out/backup/round-$r.json"
	"$report" backup "$out/backup/round-$r.json" "$r" >>"$out/samples.tsv"
	echo "round $r: $(grep -P "^backup\t[^\t]+\t[^\t]+\t$r\ts\t" "$out/samples.tsv" | awk '{printf "%s %s %ss; ", $2, $3, $6}') load $(bench_load)" >&2
	rm -rf "$work/round"
done

if [ -z "$OUT" ]; then
	"$report" -in "$out" -md -
fi
