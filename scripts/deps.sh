#!/usr/bin/env bash
# Install what `make test` needs, idempotently. Safe to run repeatedly: it
# installs Debian packages only for commands that are missing, then downloads
# the Go modules. Written for Debian 12 run as root (as CI does); elsewhere
# it uses sudo if present.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v go >/dev/null 2>&1; then
	echo "deps: 'go' not found in PATH; install Go (see go.mod for the version) and add it to PATH, e.g. export PATH=/usr/local/go/bin:\$PATH" >&2
	exit 1
fi
echo "deps: using $(go version)"

# Commands the tests need, as "command:debian-package" (or "/path:package"
# for a file that is no command). A package is installed only when its
# command or file is missing.
# gcc and the C library headers are needed by `go test -race` (cgo).
required=(
	"gcc:gcc"
	"/usr/include/stdio.h:libc6-dev"
	# TestKernelNBD loads nbd.ko where the kernel has it.
	"modprobe:kmod"
	# The e2e kill tests find a server's plugin processes.
	"pgrep:procps"
	# FUSE export and host attach (blockdev/fuse, blockdev/attach).
	"fusermount3:fuse3"
	"mkfs.ext4:e2fsprogs"
	"mkfs.xfs:xfsprogs"
	"losetup:mount"
	"qemu-storage-daemon:qemu-system-common"
	"qemu-img:qemu-utils"
	"fio:fio"
	# Real NBD clients the blockdev/nbd tests run (nbdsh is libnbd's
	# Python shell, used for the flush/FUA/trim/zero semantics tests).
	"nbdinfo:libnbd-bin"
	"nbdcopy:libnbd-bin"
	"nbdsh:python3-libnbd"
)

missing=()
for pair in "${required[@]}"; do
	cmd="${pair%%:*}"
	pkg="${pair#*:}"
	case "$cmd" in
	/*) [ -e "$cmd" ] && continue ;;
	*) command -v "$cmd" >/dev/null 2>&1 && continue ;;
	esac
	case " ${missing[*]-} " in
	*" $pkg "*) ;;
	*) missing+=("$pkg") ;;
	esac
done

if [ "${#missing[@]}" -eq 0 ]; then
	echo "deps: all required commands present; no packages to install"
else
	echo "deps: missing packages: ${missing[*]}"
	if ! command -v apt-get >/dev/null 2>&1; then
		echo "deps: apt-get not found; install these packages by hand: ${missing[*]}" >&2
		exit 1
	fi
	sudo=()
	if [ "$(id -u)" -ne 0 ]; then
		if ! command -v sudo >/dev/null 2>&1; then
			echo "deps: not root and no sudo; install these packages as root: ${missing[*]}" >&2
			exit 1
		fi
		sudo=(sudo)
	fi
	echo "deps: apt-get update"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
	echo "deps: apt-get install ${missing[*]}"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

echo "deps: go mod download"
go mod download
# versitygw: the real S3 server the plugins/s3 tests start on loopback.
# Pinned; installed only when missing or another version (go install builds
# report "git" to --version, so the module version comes from the binary's
# build info).
versitygw_version=v1.8.0
# Installed into the first GOPATH entry's bin (GOBIN set for the install),
# where the tests look for it when it is not on PATH, whatever GOBIN the
# environment has.
versitygw_dir="$(go env GOPATH | cut -d: -f1)/bin"
versitygw_bin="$versitygw_dir/versitygw"
versitygw_have=""
if [ -x "$versitygw_bin" ]; then
	versitygw_have="$(go version -m "$versitygw_bin" 2>/dev/null | awk '$1 == "mod" && $2 == "github.com/versity/versitygw" { print $3 }')"
fi
if [ "$versitygw_have" = "$versitygw_version" ]; then
	echo "deps: versitygw $versitygw_version present"
else
	echo "deps: go install versitygw $versitygw_version (found: ${versitygw_have:-none})"
	GOBIN="$versitygw_dir" go install "github.com/versity/versitygw/cmd/versitygw@$versitygw_version"
fi

echo "deps: done"
