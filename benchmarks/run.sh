#!/usr/bin/env bash
# The benchmark suite of issue 9: Strata against the tools users would pick
# instead, on this machine, in one run, written up as benchmarks/RESULTS.md
# with PNG charts of the ratios in benchmarks/charts/.
#
# Usage: benchmarks/run.sh [--quick] [--rounds N] [--runtime SECONDS]
#        [--rev REV] [--only STAGE,...] [--publish | --no-publish]
#        [--no-install]
#
# It installs what it needs when missing (Debian packages fio, nbdkit,
# qemu-utils, qemu-system-common, libnbd-bin, curl, bc; restic 0.18.1 with
# `go install`), builds strata from this tree (--rev: from that commit,
# exported with git archive, so that uncommitted changes stay out), and
# runs the stages, each alternating the systems it compares within every
# round:
#
#   nbd        fio over NBD: Strata depth 0 and 3, nbdkit file, qemu-nbd
#              qcow2 depth 3, and the raw file with io_uring (nbd.sh)
#   fuse       fio on Strata's FUSE file vs qemu-storage-daemon (fuse.sh)
#   snapshot   snapshot create latency under fio load, 1 GiB and 1 TiB
#              sparse (snaplat.sh)
#   backup     backups vs restic: full, two incrementals, restore (backup.sh)
#   rss        agent memory with 16 x 100 GiB volumes vs qsd (rss.sh)
#   sysbackup  system backup of 16 volumes vs single backups (sysbackup.sh)
#   plugin     fs target Put/Get of 4 MiB in-process vs through its plugin
#              process (plugin.sh)
#
# The full run (3 rounds, 1 GiB images) takes about 20 minutes on 2 cores;
# --quick (1 round, short fio runs, 256 MiB images) about 3 (6 when other
# work keeps the load average above 10). Everything
# goes to benchmarks/out/run-<time>/ (raw output, samples.tsv, meta.tsv,
# stages.tsv, RESULTS.md, charts/); a full run also publishes RESULTS.md
# and the charts into benchmarks/ (--no-publish: not; --publish: a quick
# run too). Needs root (FUSE mounts). A failing stage is reported as such
# and the others still run; the exit status is then 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. benchmarks/lib.sh

command_line="benchmarks/run.sh${*:+ $*}"
[ -n "${BENCH_COMMAND:-}" ] && command_line="$BENCH_COMMAND"
QUICK=0 ROUNDS="" RUNTIME="" ONLY="" PUBLISH="" INSTALL=1 REV=""
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) QUICK=1; shift ;;
	--rounds) ROUNDS="$2"; shift 2 ;;
	--runtime) RUNTIME="$2"; shift 2 ;;
	--only) ONLY="$2"; shift 2 ;;
	--rev) REV="$2"; shift 2 ;;
	--publish) PUBLISH=1; shift ;;
	--no-publish) PUBLISH=0; shift ;;
	--no-install) INSTALL=0; shift ;;
	*) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
	esac
done
if [ "$QUICK" = 1 ]; then
	mode=quick
	: "${ROUNDS:=1}" "${RUNTIME:=2}" "${PUBLISH:=0}"
	RAMP=1 SIZE=$((256 << 20)) SNAPS=20 BSIZE=$((256 << 20)) SYSDATA=$((16 << 20)) TIMEOUT=240 BENCHTIME=1s
else
	mode=full
	: "${ROUNDS:=3}" "${RUNTIME:=5}" "${PUBLISH:=1}"
	RAMP=1 SIZE=$((1 << 30)) SNAPS=30 BSIZE=$((1 << 30)) SYSDATA=$((64 << 20)) TIMEOUT=900 BENCHTIME=2s
fi
[ "$(id -u)" = 0 ] || bench_die "needs root (FUSE mounts, package installs)"

# ---- peers -------------------------------------------------------------

install_peers() {
	local -A pkg=(
		[fio]=fio [nbdkit]=nbdkit [qemu-img]=qemu-utils [qemu-nbd]=qemu-utils [qemu-io]=qemu-utils
		[qemu-storage-daemon]=qemu-system-common [nbdinfo]=libnbd-bin [nbdcopy]=libnbd-bin
		[curl]=curl [bc]=bc
	)
	local missing=() c
	for c in "${!pkg[@]}"; do
		command -v "$c" >/dev/null || missing+=("${pkg[$c]}")
	done
	# fio without its nbd engine (built without libnbd) is as good as missing.
	if command -v fio >/dev/null && ! fio --enghelp 2>/dev/null | grep -qw nbd; then
		bench_die "this fio has no nbd engine; install Debian's fio (built with libnbd)"
	fi
	if [ ${#missing[@]} -gt 0 ]; then
		mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
		bench_log "installing ${missing[*]}"
		DEBIAN_FRONTEND=noninteractive apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
	fi
	restic="$("$GO" env GOPATH)/bin/restic"
	if ! "$restic" version 2>/dev/null | grep -q "restic 0.18.1"; then
		bench_log "installing restic 0.18.1"
		"$GO" install github.com/restic/restic/cmd/restic@v0.18.1
	fi
}
if [ "$INSTALL" = 1 ]; then
	install_peers
fi
restic="$("$GO" env GOPATH)/bin/restic"

# ---- build and describe the run ---------------------------------------

run="$PWD/benchmarks/out/run-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$run/bin"
t_start=$(date +%s)
load_start=$(bench_load)
bench_log "run $mode into $run (load average $load_start)"
if [ -n "$REV" ]; then
	commit=$(git rev-parse --short=12 "$REV^{commit}") || bench_die "--rev $REV: no such commit"
	export BENCH_SRC="$run/src"
	mkdir -p "$BENCH_SRC"
	git archive "$commit" | tar -x -C "$BENCH_SRC"
	tree=" (built from \`git archive $commit\`: committed code only)"
else
	export BENCH_SRC="$PWD"
	commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
	dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | wc -l)
	tree=" (clean tree)"
	[ "$dirty" -gt 0 ] && tree=" plus uncommitted changes to $dirty tracked files in the tree that was built"
fi
(cd "$BENCH_SRC" && "$GO" build -o "$run/bin/strata" ./cmd/strata)
report=$(bench_report_tool)
{
	printf 'command\t%s\n' "$command_line"
	printf 'mode\t%s\n' "$mode"
	printf 'rounds\t%s\n' "$ROUNDS"
	printf 'runtime\t%s\n' "$RUNTIME"
	printf 'ramp\t%s\n' "$RAMP"
	printf 'size_human\t%s MiB (backups: %s MiB; system backup: 16 x %s MiB)\n' \
		$((SIZE >> 20)) $((BSIZE >> 20)) $((SYSDATA >> 20))
	printf 'started\t%s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	printf 'commit\t%s\n' "$commit"
	printf 'tree\t%s\n' "$tree"
	bench_machine
	printf 'load_start\t%s\n' "$load_start"
	printf 'fio\t%s\n' "$(fio --version)"
	printf 'nbdkit\t%s\n' "$(nbdkit --version)"
	printf 'qemu\t%s\n' "$(qemu-img --version | head -1)"
	printf 'libnbd\t%s\n' "$(nbdinfo --version | head -1)"
	printf 'restic\t%s\n' "$("$restic" version | head -1)"
} >"$run/meta.tsv"
: >"$run/stages.tsv"
: >"$run/samples.tsv"

# ---- stages -----------------------------------------------------------

stage_pid=""
on_exit() {
	# A stage cleans up after itself on SIGTERM (its own trap).
	if [ -n "$stage_pid" ]; then
		kill -TERM "$stage_pid" 2>/dev/null || true
		wait "$stage_pid" 2>/dev/null || true
	fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

failed=0
# stage NAME SCRIPT ARGS...: run a stage script with a time limit, into
# $run, and record its outcome in stages.tsv.
stage() {
	local name=$1 script=$2 t0 rc status note="" load
	shift 2
	if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then
		return 0
	fi
	load=$(bench_load)
	bench_log "stage $name (load average $load)"
	t0=$(date +%s)
	set +e
	timeout -s TERM "$TIMEOUT" "benchmarks/$script" -out "$run" -strata "$run/bin/strata" "$@" \
		2> >(tee "$run/$name.log" >&2) &
	stage_pid=$!
	wait "$stage_pid"
	rc=$?
	stage_pid=""
	set -e
	case $rc in
	0) status=ok ;;
	3) status=unavailable note="\`strata system backup create\` is not available in this build: nothing measured" ;;
	124) status=failed note="timed out after ${TIMEOUT} s; see out/$(basename "$run")/$name.log" failed=1 ;;
	*) status=failed note="exit status $rc; see out/$(basename "$run")/$name.log" failed=1 ;;
	esac
	printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" "$note" "$load" >>"$run/stages.tsv"
	bench_log "stage $name: $status in $(($(date +%s) - t0)) s"
}

stage nbd nbd.sh -rounds "$ROUNDS" -runtime "$RUNTIME" -ramp "$RAMP" -size "$SIZE"
stage fuse fuse.sh -rounds "$ROUNDS" -runtime "$RUNTIME" -ramp "$RAMP" -size "$SIZE"
stage snapshot snaplat.sh -rounds "$ROUNDS" -snaps "$SNAPS"
stage backup backup.sh -rounds "$ROUNDS" -size "$BSIZE"
stage rss rss.sh -rounds "$ROUNDS"
stage sysbackup sysbackup.sh -rounds "$ROUNDS" -data "$SYSDATA"
stage plugin plugin.sh -rounds "$ROUNDS" -benchtime "$BENCHTIME"

# ---- report -----------------------------------------------------------

t_end=$(date +%s)
{
	printf 'finished\t%s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	printf 'minutes\t%.1f\n' "$(echo "($t_end - $t_start) / 60" | bc -l)"
	printf 'load_end\t%s\n' "$(bench_load)"
	printf 'load_note\t%s\n' "The machine may be shared with other work: each stage's starting load is in the Stages table, every measurement's in out/$(basename "$run")/*.log."
} >>"$run/meta.tsv"
"$report" -in "$run" -md "$run/RESULTS.md" -charts "$run/charts"
if [ "$PUBLISH" = 1 ]; then
	"$report" -in "$run" -md benchmarks/RESULTS.md -charts benchmarks/charts
	bench_log "published benchmarks/RESULTS.md and benchmarks/charts/"
fi
rm -rf "$run/bin" "$run/src"
bench_log "done in $(((t_end - t_start) / 60)) min $(((t_end - t_start) % 60)) s: $run/RESULTS.md"
exit "$failed"
