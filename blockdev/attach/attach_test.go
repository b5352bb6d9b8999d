package attach

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestExt4RoundTripAndSnapshot: attach a volume's FUSE file as a loop
// device, mkfs.ext4, mount, write files with known checksums, unmount,
// detach, attach again, mount: files intact. Then sync and freeze, take a
// snapshot, thaw, write more files; the snapshot file, attached read-only,
// passes e2fsck -n and holds exactly the files written before it.
func TestExt4RoundTripAndSnapshot(t *testing.T) {
	requireRoot(t, "mkfs.ext4", "e2fsck")
	r := newRig(t, "vol-a", 256<<20)
	ctx := t.Context()
	file := r.fs.Path("vol-a")

	l := attachLoop(t, file, nil)
	if !l.DirectIO {
		t.Errorf("%s: the kernel refused direct I/O on the FUSE file", l.Path)
	}
	if err := Mkfs(ctx, l.Path, Ext4); err != nil {
		t.Fatal(err)
	}
	dir := mountFS(t, l.Path, Ext4, nil)
	before := writeFiles(t, dir, "before", 8, 1<<20+123)
	if err := l.Detach(ctx); !errors.Is(err, ErrBusy) {
		t.Errorf("detach of a mounted loop device: %v, want ErrBusy", err)
	}
	unmountFS(t, dir)
	if err := l.Detach(ctx); err != nil {
		t.Fatal(err)
	}
	if got := BackingFile(l.Number); got != "" {
		t.Errorf("%s still backed by %q after Detach", l.Path, got)
	}

	l = attachLoop(t, file, nil)
	dir = mountFS(t, l.Path, Ext4, nil)
	checkFiles(t, dir, before)

	unix.Sync()
	if err := Freeze(ctx, dir); err != nil {
		t.Fatal(err)
	}
	serr := r.vol.Snapshot(ctx, "s1")
	if err := Thaw(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	after := writeFiles(t, dir, "after", 4, 64<<10)
	unix.Sync()

	snapFile := r.addSnapshot("s1")
	sl := attachLoop(t, snapFile, &LoopOptions{ReadOnly: true})
	if out, err := exec.CommandContext(ctx, "e2fsck", "-n", "-f", sl.Path).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -n -f %s (snapshot): %v\n%s", sl.Path, err, out)
	}
	// Same UUID as the live filesystem: ext4 does not mind.
	sdir := mountFS(t, sl.Path, Ext4, &MountOptions{ReadOnly: true})
	checkFiles(t, sdir, before)
	for name := range after {
		if _, err := os.Stat(filepath.Join(sdir, name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("snapshot holds %s, written after it (stat: %v)", name, err)
		}
	}
	if err := os.WriteFile(filepath.Join(sdir, "x"), nil, 0o644); !errors.Is(err, unix.EROFS) {
		t.Errorf("write to the read-only snapshot filesystem: %v, want EROFS", err)
	}
	checkFiles(t, dir, after)
}

// TestMkfsMount formats and mounts each supported filesystem on a loop
// device over a FUSE file.
func TestMkfsMount(t *testing.T) {
	tests := []struct {
		fstype string
		tool   string
	}{
		{fstype: Ext4, tool: "mkfs.ext4"},
		{fstype: XFS, tool: "mkfs.xfs"},
	}
	for _, tc := range tests {
		t.Run(tc.fstype, func(t *testing.T) {
			requireRoot(t, tc.tool)
			r := newRig(t, "vol-"+tc.fstype, 512<<20)
			l := attachLoop(t, r.fs.Path("vol-"+tc.fstype), nil)
			if err := Mkfs(t.Context(), l.Path, tc.fstype); err != nil {
				t.Fatal(err)
			}
			dir := mountFS(t, l.Path, tc.fstype, nil)
			sums := writeFiles(t, dir, "f", 3, 3<<20)
			unmountFS(t, dir)
			dir = mountFS(t, l.Path, tc.fstype, nil)
			checkFiles(t, dir, sums)
		})
	}
	if err := Mkfs(t.Context(), "/dev/null", "btrfs"); !errors.Is(err, ErrUnsupportedFS) {
		t.Errorf("Mkfs btrfs: %v, want ErrUnsupportedFS", err)
	}
}

// TestFioVerifyLoop runs fio with crc32c verification on a loop device
// over a FUSE file (io_uring, direct I/O).
func TestFioVerifyLoop(t *testing.T) {
	requireRoot(t, "fio")
	r := newRig(t, "vol-fio", 128<<20)
	l := attachLoop(t, r.fs.Path("vol-fio"), nil)
	out, err := exec.CommandContext(t.Context(), "fio", "--name=verify", "--filename="+l.Path,
		"--ioengine=io_uring", "--direct=1", "--rw=randwrite", "--bs=4k", "--bsrange=4k-256k",
		"--iodepth=32", "--size=128M", "--verify=crc32c", "--verify_fatal=1", "--do_verify=1",
		"--numjobs=1", "--verify_state_save=0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "err= 0") {
		t.Fatalf("fio verify on %s: %v\n%s", l.Path, err, out)
	}
}

// TestKernelNBD attaches a volume through the kernel NBD driver where
// nbd.ko exists.
func TestKernelNBD(t *testing.T) {
	requireRoot(t)
	if err := KernelNBD(t.Context()); err != nil {
		// Not skipped under CI=true either: this host's kernel lacks the
		// module, which no package installs.
		t.Skipf("kernel NBD unavailable on this host, so /dev/nbdN cannot be attached: %v", err)
	}
	testKernelNBD(t)
}
