# Shared helpers of the benchmark scripts (sourced, not run).
#
# A stage script (nbd.sh, fuse.sh, snaplat.sh, backup.sh, rss.sh,
# sysbackup.sh) measures one area and appends its raw figures to
# $out/samples.tsv, one line per measurement:
#
#	section  figure  system  round  metric  value
#
# e.g. "nbd randread4k strata-d3 2 iops 131072". benchmarks/report reads
# those lines and writes the tables, ratios and charts; nothing else turns
# a measurement into a figure. Every stage takes -out DIR (default
# benchmarks/out/<stage>-<time>) and -strata BIN (default: built here), so
# benchmarks/run.sh can run them all into one directory with one binary.

GO="${GO:-go}"
bench_pids=()
bench_work=""

bench_log() { echo "== $*" >&2; }
bench_die() {
	echo "${0##*/}: $*" >&2
	exit 1
}

# bench_need CMD...: fail unless every command is on PATH.
bench_need() {
	local c
	for c; do
		command -v "$c" >/dev/null || bench_die "needs $c (benchmarks/run.sh installs it)"
	done
}

# bench_setup STAGE OUT: sets $out (absolute, created) and $bench_work (a
# fresh temp dir removed by bench_cleanup) and installs the cleanup trap.
bench_setup() {
	local stage=$1
	out=${2:-"$PWD/benchmarks/out/$stage-$(date -u +%Y%m%dT%H%M%SZ)"}
	mkdir -p "$out"
	out=$(cd "$out" && pwd)
	bench_work=$(mktemp -d "${TMPDIR:-/tmp}/strata-bench-$stage.XXXXXX")
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
}

# bench_cleanup stops every process started with bench_bg (SIGTERM, then
# SIGKILL after 10 s), unmounts whatever is still mounted under the work
# directory, and removes it.
bench_cleanup() {
	set +e
	local p m i
	for p in "${bench_pids[@]}"; do
		kill -TERM "$p" 2>/dev/null
	done
	for p in "${bench_pids[@]}"; do
		for i in $(seq 100); do
			kill -0 "$p" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	bench_pids=()
	if [ -n "$bench_work" ] && [ -d "$bench_work" ]; then
		# Deepest first.
		for m in $(awk -v w="$bench_work" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r); do
			umount "$m" 2>/dev/null || umount -l "$m"
		done
		rm -rf "$bench_work"
	fi
}

# bench_bg CMD...: start CMD in the background, remember its pid for
# bench_cleanup, and leave it in $bench_pid.
bench_bg() {
	"$@" &
	bench_pid=$!
	bench_pids+=("$bench_pid")
}

# bench_stop PID: SIGTERM and wait (SIGKILL after 20 s).
bench_stop() {
	local p=$1 i rest=()
	kill -TERM "$p" 2>/dev/null || true
	for i in $(seq 200); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
	for i in "${bench_pids[@]}"; do
		[ "$i" = "$p" ] || rest+=("$i")
	done
	bench_pids=("${rest[@]}")
}

# bench_strata BIN: the strata binary to use: BIN if set, else one built
# from this tree into the work directory.
bench_strata() {
	if [ -n "${1:-}" ]; then
		echo "$1"
		return
	fi
	"$GO" build -o "$bench_work/bin/strata" ./cmd/strata
	echo "$bench_work/bin/strata"
}

# bench_report_tool: path of the report program (benchmarks/report, its own
# Go module so that its chart dependency stays out of Strata's go.mod),
# built once per work tree into benchmarks/out/.bin.
bench_report_tool() {
	local bin="$PWD/benchmarks/out/.bin/report"
	(cd benchmarks/report && "$GO" build -o "$bin" .) >&2
	echo "$bin"
}

# strata_start BIN DIR LOG [server flags...]: start `strata server` on data
# directory DIR and wait until its control API answers; sets $strata_pid.
strata_start() {
	local bin=$1 dir=$2 logf=$3 i
	shift 3
	mkdir -p "$dir"
	bench_bg "$bin" server --data-dir "$dir" "$@" >>"$logf" 2>&1
	strata_pid=$bench_pid
	for i in $(seq 300); do
		if curl -sf --unix-socket "$dir/strata.sock" http://strata/v1/status >/dev/null 2>&1; then
			return 0
		fi
		kill -0 "$strata_pid" 2>/dev/null || bench_die "strata server exited; see $logf"
		sleep 0.1
	done
	bench_die "strata server did not answer within 30 s; see $logf"
}

# bench_nbd_job: fio options of the four NBD jobs (nbd.sh, nbdab.sh).
declare -A bench_nbd_job=(
	[randread4k]="--rw=randread --bs=4k --iodepth=32"
	[randwrite4k]="--rw=randwrite --bs=4k --iodepth=32"
	[read1m]="--rw=read --bs=1M --iodepth=8"
	[write1m]="--rw=write --bs=1M --iodepth=8"
)

# bench_overlay_args K SIZE: qemu-io arguments writing overlay K of a
# depth-3 chain over an image of SIZE bytes (one per line, for mapfile):
# 1 MiB of byte 0x10+K every 16 MiB, shifted by 5 MiB per overlay.
bench_overlay_args() {
	local k=$1 size=$2 j off
	for j in $(seq 0 63); do
		off=$(((16 * j + 5 * k) << 20))
		[ $((off + (1 << 20))) -le "$size" ] || continue
		printf -- '-c\nwrite -q -P %d %d 1M\n' $((0x10 + k)) "$off"
	done
}

# strata_nbd_volumes BIN DIR SIZE IMAGE: on the server of data directory
# DIR, volumes d0 (IMAGE copied in by nbdcopy) and d3 (the same, then three
# snapshots each followed by its qemu-io overlay, bench_overlay_args).
strata_nbd_volumes() {
	local bin=$1 dir=$2 size=$3 image=$4 v k args
	for v in d0 d3; do
		"$bin" volume create --data-dir "$dir" "$v" --size "$size" >/dev/null
		nbdcopy "$image" "$(strata_nbd_uri "$dir" "$v")"
	done
	for k in 1 2 3; do
		"$bin" snapshot create --data-dir "$dir" d3 "s$k" >/dev/null
		mapfile -t args < <(bench_overlay_args "$k" "$size")
		qemu-io -f raw "${args[@]}" "$(strata_nbd_uri "$dir" d3)" >/dev/null
	done
}

# strata_nbd_uri DIR VOL
strata_nbd_uri() { echo "nbd+unix:///$2?socket=$1/nbd.sock"; }

# bench_sample SECTION FIGURE SYSTEM ROUND METRIC VALUE
bench_sample() {
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$out/samples.tsv"
}

# bench_fio_samples JSON SECTION FIGURE SYSTEM ROUND: IOPS, MiB/s and p99
# completion latency (µs) of the fio run's first job.
bench_fio_samples() {
	"$report" fio "$1" "$2" "$3" "$4" "$5" >>"$out/samples.tsv"
}

# bench_machine: one "key<TAB>value" line per fact about this machine.
bench_machine() {
	printf 'cpu\t%s\n' "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	printf 'nproc\t%s\n' "$(nproc)"
	printf 'memory\t%s\n' "$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
	printf 'kernel\t%s\n' "$(uname -r)"
	printf 'tmpfs\t%s\n' "$(df -T "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2}')"
	printf 'go\t%s\n' "$("$GO" env GOVERSION)"
}

# bench_load: the 1, 5 and 15 minute load averages.
bench_load() { cut -d' ' -f1-3 /proc/loadavg; }
