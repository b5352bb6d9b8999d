#!/usr/bin/env bash
# Run every Go fuzz target in the module for FUZZTIME (default 10s).
#
# Targets are discovered with `go test -list '^Fuzz' ./...`, so a new Fuzz
# function is picked up without editing this script. Exits non-zero if
# discovery fails (for example a package does not compile) or any target
# fails; a failing input is written under the package's testdata/fuzz/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

GO="${GO:-go}"
FUZZTIME="${FUZZTIME:-10s}"

if ! listing="$("$GO" test -list '^Fuzz' ./... 2>&1)"; then
	echo "fuzz-smoke: listing fuzz targets failed:" >&2
	echo "$listing" >&2
	exit 1
fi

# `go test -list` prints a package's matching names, then "ok <pkg> <time>".
targets=()
pending=()
while IFS= read -r line; do
	case "$line" in
	Fuzz*)
		pending+=("$line")
		;;
	ok*)
		pkg="$(awk '{print $2}' <<<"$line")"
		for name in "${pending[@]+"${pending[@]}"}"; do
			targets+=("$pkg $name")
		done
		pending=()
		;;
	*)
		pending=()
		;;
	esac
done <<<"$listing"

if [ "${#targets[@]}" -eq 0 ]; then
	echo "fuzz-smoke: no fuzz targets found; nothing to do"
	exit 0
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

# fuzz_one PKG NAME runs one target and succeeds if it passes.
#
# Go 1.26's fuzz coordinator can report "context deadline exceeded" when
# -fuzztime expires while a worker is mid-call, without any failing input
# (go.dev/issue/75804, fixed in Go 1.27). That signature alone, with no
# "Failing input written", is retried once; a second failure counts.
fuzz_one() {
	local pkg="$1" name="$2" attempt
	for attempt in 1 2; do
		if "$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "$FUZZTIME" "$pkg" 2>&1 | tee "$log"; then
			return 0
		fi
		if grep -q 'Failing input written' "$log" || ! grep -q 'context deadline exceeded' "$log"; then
			return 1
		fi
		if [ "$attempt" -eq 1 ]; then
			echo "fuzz-smoke: $name: 'context deadline exceeded' with no failing input (go.dev/issue/75804); retrying once"
		fi
	done
	return 1
}

echo "fuzz-smoke: ${#targets[@]} fuzz target(s), ${FUZZTIME} each"
failed=()
for t in "${targets[@]}"; do
	read -r pkg name <<<"$t"
	echo "fuzz-smoke: $pkg $name"
	if ! fuzz_one "$pkg" "$name"; then
		failed+=("$pkg $name")
	fi
done

if [ "${#failed[@]}" -gt 0 ]; then
	echo "fuzz-smoke: ${#failed[@]} target(s) failed:" >&2
	printf '  %s\n' "${failed[@]}" >&2
	echo "fuzz-smoke: a failing input, when one was found, is under the package's testdata/fuzz/; commit it as a regression seed" >&2
	exit 1
fi
echo "fuzz-smoke: all ${#targets[@]} target(s) passed"
