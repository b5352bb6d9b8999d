#!/usr/bin/env bash
# System backup vs single volume backups (issue 9): 16 volumes with DATA of
# random bytes each on a fresh `strata server` with an fs target. One side:
# `strata system backup create` of the whole system; the other: `strata
# backup create` of each volume, one after another (the slowest of the 16
# and their sum). Each side gets its own fresh server, volumes and target,
# so that neither reuses the other's backups; the side going first
# alternates per round.
#
# Usage: benchmarks/sysbackup.sh [-rounds N] [-data BYTES] [-out DIR]
#        [-strata BIN]
#
# Exits 3 without measuring anything when this build of strata has no
# `strata system backup create`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. benchmarks/lib.sh

ROUNDS=3 DATA=$((64 << 20)) OUT="" STRATA="" VOLS=16
while [ $# -gt 0 ]; do
	case "$1" in
	-rounds) ROUNDS="$2"; shift 2 ;;
	-data) DATA="$2"; shift 2 ;;
	-out) OUT="$2"; shift 2 ;;
	-strata) STRATA="$2"; shift 2 ;;
	*) echo "usage: $0 [-rounds N] [-data BYTES] [-out DIR] [-strata BIN]" >&2; exit 2 ;;
	esac
done
bench_need fio curl
bench_setup sysbackup "$OUT"
strata=$(bench_strata "$STRATA")
work=$bench_work
mkdir -p "$out/sysbackup"

if ! "$strata" system backup create --help >/dev/null 2>&1; then
	echo "sysbackup.sh: \`strata system backup create\` is not available in this build" >&2
	exit 3
fi
report=$(bench_report_tool)

now() { date +%s.%N; }

# prepare SIDE ROUND: fresh server, target and 16 volumes with DATA each;
# sets $d.
prepare() {
	local i args=()
	d="$work/$1-$2"
	strata_start "$strata" "$d" "$out/sysbackup/strata-server-$1-$2.log" --fuse off
	mkdir -p "$d/target"
	"$strata" target add --data-dir "$d" fs "file://$d/target" >/dev/null
	for i in $(seq -w 1 "$VOLS"); do
		"$strata" volume create --data-dir "$d" "v$i" --size "$DATA" >/dev/null
		args+=(--name="v$i" --uri="$(strata_nbd_uri "$d" "v$i")")
	done
	# Fresh random data in every block (no dedup between blocks or volumes).
	fio --ioengine=nbd --rw=write --bs=1M --iodepth=4 --size="$DATA" --refill_buffers \
		--randrepeat=0 --output=/dev/null "${args[@]}"
}

finish() {
	bench_stop "$strata_pid"
	rm -rf "$d"
}

side_single() {
	local r=$1 i t0 t slowest=0 sum=0
	prepare single "$r"
	for i in $(seq -w 1 "$VOLS"); do
		t0=$(now)
		"$strata" backup create --data-dir "$d" "v$i" --json >>"$out/sysbackup/single-$r.json"
		t=$(echo "$(now) - $t0" | bc -l)
		sum=$(echo "$sum + $t" | bc -l)
		slowest=$(echo "if ($t > $slowest) $t else $slowest" | bc -l)
	done
	bench_sample sysbackup 16vols single-slowest "$r" s "$slowest"
	bench_sample sysbackup 16vols single-sum "$r" s "$sum"
	finish
}

side_system() {
	local r=$1 t0
	prepare system "$r"
	t0=$(now)
	"$strata" system backup create --data-dir "$d" --json >"$out/sysbackup/system-$r.json"
	grep -q '"state":"committed"' "$out/sysbackup/system-$r.json" ||
		bench_die "system backup of round $r did not commit; see $out/sysbackup/system-$r.json"
	bench_sample sysbackup 16vols system "$r" s "$(echo "$(now) - $t0" | bc -l)"
	finish
}

for r in $(seq 1 "$ROUNDS"); do
	if [ $((r % 2)) = 1 ]; then
		side_system "$r"
		side_single "$r"
	else
		side_single "$r"
		side_system "$r"
	fi
	echo "round $r: $(grep -P "^sysbackup\t[^\t]+\t[^\t]+\t$r\t" "$out/samples.tsv" | awk '{printf "%s %.2fs; ", $3, $6}') load $(bench_load)" >&2
done

if [ -z "$OUT" ]; then
	"$report" -in "$out" -md -
fi
