#!/usr/bin/env bash
# NBD server benchmark (issue 3): the same four fio jobs (fio's nbd engine,
# libnbd) against
#   strata  - blockdev/nbd serving a 1 GiB volume with 3 snapshots below
#             the head (blockdev/nbd/internal/benchserve),
#   nbdkit  - nbdkit's file plugin on a flat raw file,
#   qemu    - qemu-nbd on a qcow2 chain of the same shape: base ← o1 ← o2 ←
#             top, i.e. 3 images below the served one,
# alternating the servers within every round (the first server rotates
# each round), for several rounds. All three start from the same random
# base image; the overlays write the same 3 × 64 MiB at the same offsets.
#
# Usage: benchmarks/nbd.sh [-rounds N] [-runtime SECONDS] [-size BYTES]
#        [-profile]
#
# Writes benchmarks/out/nbd-<time>/: the fio JSON of every run, results.tsv
# and summary.md (medians per job and server, ratios Strata/peer), ready to
# paste into benchmarks/RESULTS.md with this command line. -profile also
# records a CPU profile of the Strata server (cpu.pprof) over all its runs.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

GO="${GO:-go}"
ROUNDS=3
RUNTIME=10
SIZE=$((1 << 30))
PROFILE=0
while [ $# -gt 0 ]; do
	case "$1" in
	-rounds) ROUNDS="$2"; shift 2 ;;
	-runtime) RUNTIME="$2"; shift 2 ;;
	-size) SIZE="$2"; shift 2 ;;
	-profile) PROFILE=1; shift ;;
	*) echo "usage: $0 [-rounds N] [-runtime SECONDS] [-size BYTES] [-profile]" >&2; exit 2 ;;
	esac
done

for c in fio nbdkit qemu-nbd qemu-img qemu-io nbdinfo python3; do
	command -v "$c" >/dev/null || { echo "nbd.sh: $c not found; run scripts/deps.sh" >&2; exit 1; }
done

out="benchmarks/out/nbd-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/nbdbench.XXXXXX")"
pids=()
cleanup() {
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

echo "== building benchserve; preparing images in $work" >&2
"$GO" build -o "$work/benchserve" ./blockdev/nbd/internal/benchserve
head -c "$SIZE" /dev/urandom >"$work/base.raw"
cp "$work/base.raw" "$work/flat.raw"

# The qcow2 chain: q0 has the base content; q1..q3 each hold one overlay
# (overlay k: 1 MiB of byte 0x10+k at MiB offsets 16j+5k, j = 0..63, as
# benchserve writes them).
qemu-img convert -q -f raw -O qcow2 "$work/base.raw" "$work/q0.qcow2"
for k in 1 2 3; do
	qemu-img create -q -f qcow2 -b "$work/q$((k - 1)).qcow2" -F qcow2 "$work/q$k.qcow2"
	args=()
	for j in $(seq 0 63); do
		off=$(((16 * j + 5 * k) << 20))
		[ $((off + (1 << 20))) -le "$SIZE" ] || continue
		args+=(-c "write -q -P $((0x10 + k)) $off 1M")
	done
	qemu-io -f qcow2 "${args[@]}" "$work/q$k.qcow2" >/dev/null
done

sock_strata="$work/strata.sock"
sock_nbdkit="$work/nbdkit.sock"
sock_qemu="$work/qemu.sock"
prof=()
[ "$PROFILE" = 1 ] && prof=(-cpuprofile "$out/cpu.pprof")
"$work/benchserve" -dir "$work/store" -socket "$sock_strata" -base "$work/base.raw" "${prof[@]}" 2>"$out/benchserve.log" &
strata_pid=$!
pids+=("$strata_pid")
nbdkit -f -U "$sock_nbdkit" file file="$work/flat.raw" 2>"$out/nbdkit.log" &
pids+=($!)
qemu-nbd -k "$sock_qemu" -f qcow2 -t -e 4 --cache=writeback "$work/q3.qcow2" 2>"$out/qemu-nbd.log" &
pids+=($!)

declare -A uri=(
	[strata]="nbd+unix:///vol?socket=$sock_strata"
	[nbdkit]="nbd+unix:///?socket=$sock_nbdkit"
	[qemu]="nbd+unix:///?socket=$sock_qemu"
)
for s in strata nbdkit qemu; do
	for _ in $(seq 1 600); do
		nbdinfo --size "${uri[$s]}" >/dev/null 2>&1 && break
		sleep 0.1
	done
	size=$(nbdinfo --size "${uri[$s]}")
	[ "$size" = "$SIZE" ] || { echo "nbd.sh: $s serves $size bytes, want $SIZE" >&2; exit 1; }
done

declare -A job=(
	[randread4k]="--rw=randread --bs=4k --iodepth=32"
	[randwrite4k]="--rw=randwrite --bs=4k --iodepth=32"
	[read1m]="--rw=read --bs=1M --iodepth=8"
	[write1m]="--rw=write --bs=1M --iodepth=8"
)
jobs=(randread4k randwrite4k read1m write1m)
servers=(strata nbdkit qemu)

printf 'round\tjob\tserver\tiops\tMiBps\n' >"$out/results.tsv"
for r in $(seq 1 "$ROUNDS"); do
	for jb in "${jobs[@]}"; do
		for i in 0 1 2; do
			s="${servers[$(((i + r - 1) % 3))]}"
			f="$out/$jb-$s-$r.json"
			# shellcheck disable=SC2086
			fio --name="$jb" --ioengine=nbd --uri="${uri[$s]}" ${job[$jb]} \
				--size="$SIZE" --time_based --runtime="$RUNTIME" --ramp_time=2 \
				--norandommap --randrepeat=0 --output-format=json --output="$f"
			python3 - "$f" "$r" "$jb" "$s" >>"$out/results.tsv" <<-'EOF'
				import json, sys
				f, r, jb, s = sys.argv[1:]
				j = json.load(open(f))["jobs"][0]
				d = j["write"] if "write" in jb else j["read"]
				print(f"{r}\t{jb}\t{s}\t{d['iops']:.0f}\t{d['bw_bytes'] / 2**20:.1f}")
			EOF
			tail -1 "$out/results.tsv" >&2
		done
	done
done

kill -INT "$strata_pid"
wait "$strata_pid" || true

python3 - "$out/results.tsv" "$ROUNDS" "$RUNTIME" >"$out/summary.md" <<'EOF'
import csv, statistics, sys
path, rounds, runtime = sys.argv[1:]
rows = list(csv.DictReader(open(path), delimiter="\t"))
jobs = ["randread4k", "randwrite4k", "read1m", "write1m"]
servers = ["strata", "nbdkit", "qemu"]
med = {}
for jb in jobs:
    for s in servers:
        v = [float(r["iops"]) for r in rows if r["job"] == jb and r["server"] == s]
        b = [float(r["MiBps"]) for r in rows if r["job"] == jb and r["server"] == s]
        med[jb, s] = (statistics.median(v), min(v), max(v), statistics.median(b))
print(f"{rounds} rounds × {runtime} s per run (plus 2 s ramp), servers alternating within each round.\n")
print("| job | Strata IOPS (min–max) | nbdkit file IOPS (min–max) | qemu-nbd qcow2 IOPS (min–max) | Strata MiB/s | Strata / nbdkit | Strata / qemu-nbd |")
print("|---|---|---|---|---|---|---|")
for jb in jobs:
    st, nk, qm = (med[jb, s] for s in servers)
    cell = lambda m: f"{m[0]:.0f} ({m[1]:.0f}–{m[2]:.0f})"
    print(f"| {jb} | {cell(st)} | {cell(nk)} | {cell(qm)} | {st[3]:.0f} | {st[0] / nk[0]:.2f}× | {st[0] / qm[0]:.2f}× |")
EOF
{
	echo
	echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ($(nproc) cores)"
	echo "- Memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
	echo "- Kernel: $(uname -r)"
	echo "- Filesystem of the temp dir: $(df -T "$work" | awk 'NR==2 {print $2}')"
	echo "- Go: $("$GO" env GOVERSION); $(fio --version); $(nbdkit --version); $(qemu-nbd --version | head -1)"
	echo "- Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} >>"$out/summary.md"
cat "$out/summary.md"
echo "nbd.sh: results in $out" >&2
