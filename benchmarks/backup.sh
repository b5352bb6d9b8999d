#!/usr/bin/env bash
# Volume-backup benchmark (issue 7): Strata's backup engine vs restic 0.18.1
# on the same 1 GiB random image, alternating which tool goes first each
# round: full backup, incremental after a 10 MiB contiguous change,
# incremental after 1% scattered 4 KiB writes (time and bytes stored), and
# restore. Strata runs through the real volume store (snapshots and
# changed-block tracking) into an fs target, encrypted like restic's
# repository; restic backs up the image file into a local repository.
#
# Usage: benchmarks/backup.sh [-rounds N] [-size BYTES]
#
# Installs restic 0.18.1 with `go install` (into $(go env GOPATH)/bin) if
# it is missing, writes every round's JSON to benchmarks/out/backup-<time>/
# and prints summary.md (medians with min–max, speedups and upload
# amplification = bytes stored / bytes changed).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

GO="${GO:-go}"
ROUNDS=3
SIZE=$((1 << 30))
while [ $# -gt 0 ]; do
	case "$1" in
	-rounds) ROUNDS="$2"; shift 2 ;;
	-size) SIZE="$2"; shift 2 ;;
	*) echo "usage: $0 [-rounds N] [-size BYTES]" >&2; exit 2 ;;
	esac
done

RESTIC_VERSION=0.18.1
restic="$("$GO" env GOPATH)/bin/restic"
if ! "$restic" version 2>/dev/null | grep -q "restic $RESTIC_VERSION"; then
	echo "installing restic $RESTIC_VERSION" >&2
	"$GO" install "github.com/restic/restic/cmd/restic@v$RESTIC_VERSION"
fi

out="benchmarks/out/backup-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
"$GO" build -o "$out/benchbackup" ./backupd/internal/benchbackup
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

for r in $(seq 0 $((ROUNDS - 1))); do
	echo "round $((r + 1))/$ROUNDS" >&2
	"$out/benchbackup" -dir "$work/round" -size "$SIZE" -restic "$restic" -round "$r" >"$out/round-$r.json"
done

python3 - "$out" "$ROUNDS" "$SIZE" "$("$restic" version | head -1)" <<'PY' | tee "$out/summary.md"
import json, statistics, sys, glob, os, platform, subprocess
out, rounds, size, restic_version = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
runs = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(out, "round-*.json")))]
steps = [s["step"] for s in runs[0]["steps"]]
def col(name, key):
    return [next(s for s in r["steps"] if s["step"] == name)[key] for r in runs]
def fmt(xs, unit=""):
    return f"{statistics.median(xs):.2f}{unit} ({min(xs):.2f}–{max(xs):.2f})"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"Command: `benchmarks/backup.sh -rounds {rounds} -size {size}`; {restic_version}; "
      f"{cpu}, {os.cpu_count()} cores, kernel {platform.release()}.")
print()
print("| step | Strata s | restic s | Strata speedup | Strata MiB stored | restic MiB stored | changed MiB | Strata amplification | restic amplification |")
print("|---|---|---|---|---|---|---|---|---|")
for name in steps:
    a, b = col(name, "strata_s"), col(name, "restic_s")
    sb, rb, ch = col(name, "strata_bytes"), col(name, "restic_bytes"), col(name, "changed_bytes")
    speed = statistics.median(b) / statistics.median(a)
    if name == "restore":
        amp_s = amp_r = "–"; smb = rmb = "–"
    else:
        amp_s = f"{statistics.median(sb) / statistics.median(ch):.2f}×"
        amp_r = f"{statistics.median(rb) / statistics.median(ch):.2f}×"
        smb = f"{statistics.median(sb) / 2**20:.1f}"; rmb = f"{statistics.median(rb) / 2**20:.1f}"
    print(f"| {name} | {fmt(a)} | {fmt(b)} | {speed:.1f}× | {smb} | {rmb} | {statistics.median(ch) / 2**20:.1f} | {amp_s} | {amp_r} |")
print()
print(f"Medians over {len(runs)} rounds, min–max in brackets; restored images compared bit for bit with the source.")
PY
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/summary.md"
echo "results in $out" >&2
