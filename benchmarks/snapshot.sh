#!/usr/bin/env bash
# Snapshot-store benchmarks (issue 2): I/O cost by chain depth, Snapshot()
# latency at 1 GiB and 1 TiB sparse, and index memory / open time of a
# 1 TiB sparse volume with 1 GiB written.
#
# Usage: benchmarks/snapshot.sh [-count N] [-snaps N]
#
# Raw `go test` output goes to benchmarks/out/snapshot-<time>/; a summary
# (medians over the -count runs, with min and max, and the depth ratios the
# acceptance asks for) is printed and written to summary.md there, ready to
# paste into benchmarks/RESULTS.md with this command line.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

GO="${GO:-go}"
COUNT=5
SNAPS=200
while [ $# -gt 0 ]; do
	case "$1" in
	-count) COUNT="$2"; shift 2 ;;
	-snaps) SNAPS="$2"; shift 2 ;;
	*) echo "usage: $0 [-count N] [-snaps N]" >&2; exit 2 ;;
	esac
done

out="benchmarks/out/snapshot-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"

machine() {
	echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ($(nproc) cores)"
	echo "- Memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
	echo "- Kernel: $(uname -r)"
	echo "- Filesystem of the temp dir: $(df -T "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2}')"
	echo "- Go: $("$GO" env GOVERSION)"
}

echo "== BenchmarkIO (count=$COUNT)" >&2
"$GO" test -run '^$' -bench '^BenchmarkIO$' -benchmem -count "$COUNT" -timeout 60m ./snapshot/ | tee "$out/io.txt" >&2
echo "== BenchmarkSnapshot (${SNAPS}x, count=$COUNT)" >&2
"$GO" test -run '^$' -bench '^BenchmarkSnapshot$' -benchtime "${SNAPS}x" -benchmem -count "$COUNT" -timeout 60m ./snapshot/ | tee "$out/snapshot.txt" >&2
echo "== TestIndexMemory1TiB" >&2
"$GO" test -run '^TestIndexMemory1TiB$' -v -count 1 -timeout 30m ./snapshot/ | tee "$out/memory.txt" >&2

# summarise FILE...: tables of the medians (and min–max) of every metric of
# every benchmark over its -count runs, with each I/O op's depth ratios.
summarise() {
	awk -v count="$COUNT" '
	function stats(key,   n, i, j, t, a) {
		n = split(vals[key], a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		med[key] = (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
		lo[key] = a[1]; hi[key] = a[n]
	}
	/^Benchmark/ {
		name = $1; sub(/-[0-9]+$/, "", name)
		for (i = 3; i < NF; i += 2) {
			key = name SUBSEP $(i + 1)
			vals[key] = vals[key] " " $i
			if (!(key in seen)) { seen[key] = 1; order[++nk] = key }
		}
	}
	END {
		for (k = 1; k <= nk; k++) stats(order[k])
		# I/O by depth.
		print "| op | depth | ns/op median (min–max) | MB/s median | allocs/op | depth-N / depth-1 |"
		print "|---|---|---|---|---|---|"
		for (k = 1; k <= nk; k++) {
			split(order[k], p, SUBSEP)
			if (p[2] != "ns/op" || p[1] !~ /^BenchmarkIO\//) continue
			split(p[1], parts, "/"); op = parts[2]; d = parts[3]
			sub(/^op=/, "", op); sub(/^depth=/, "", d)
			base = "BenchmarkIO/op=" op "/depth=1" SUBSEP "ns/op"
			ratio = (base in med && med[base] > 0) ? sprintf("%.2f×", med[order[k]] / med[base]) : "–"
			printf "| %s | %s | %.0f (%.0f–%.0f) | %.0f | %s | %s |\n", op, d, med[order[k]], lo[order[k]], hi[order[k]],
				med[p[1] SUBSEP "MB/s"], med[p[1] SUBSEP "allocs/op"], ratio
		}
		print ""
		print "| Snapshot() | p50 ms median (min–max) | p99 ms median (min–max) | mean ns/op median |"
		print "|---|---|---|---|"
		for (k = 1; k <= nk; k++) {
			split(order[k], p, SUBSEP)
			if (p[2] != "ns/op" || p[1] !~ /^BenchmarkSnapshot\//) continue
			sz = p[1]; sub(/^BenchmarkSnapshot\/size=/, "", sz)
			a = p[1] SUBSEP "ms/op-p50"; b = p[1] SUBSEP "ms/op-p99"
			printf "| %s | %.2f (%.2f–%.2f) | %.2f (%.2f–%.2f) | %.0f |\n", sz, med[a], lo[a], hi[a], med[b], lo[b], hi[b], med[order[k]]
		}
	}' "$@"
}

{
	echo "Command: \`benchmarks/snapshot.sh -count $COUNT -snaps $SNAPS\` ($(date -u +%Y-%m-%d))"
	echo
	machine
	echo
	summarise "$out/io.txt" "$out/snapshot.txt"
	echo
	echo "| index memory, 1 TiB sparse, 1 GiB written in 2 layers | heap MiB | live MiB | open ms (cold cache) | open ms (warm) | index runs |"
	echo "|---|---|---|---|---|---|"
	grep -o 'INDEX-MEMORY .*' "$out/memory.txt" | sed 's/INDEX-MEMORY //' | awk '{
		for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
		printf "| %s (%s blocks) | %s | %s | %s | %s | %s |\n", f["pattern"], f["blocks"], f["heap_mib"], f["live_mib"], f["open_ms"], f["open_warm_ms"], f["index_runs"]
	}'
} | tee "$out/summary.md"
echo "raw output and summary in $out" >&2
