package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestRestart: volumes with data and snapshots, attached and mounted,
// survive a SIGTERM restart (the server detaches cleanly and restores the
// mounts) and a SIGKILL (the next start cleans the stale mount and loop
// device, restores them, and every file synced before the kill is intact).
func TestRestart(t *testing.T) {
	needRoot(t)
	dataDir := t.TempDir()
	mnt := t.TempDir()
	s := startServer(t, dataDir)
	s.must("volume", "create", "vol-a", "--size", "64MiB")
	s.must("volume", "create", "vol-b", "--size", "16MiB")
	s.must("volume", "mount", "vol-a", mnt, "--mkfs", "ext4")
	s.must("volume", "attach", "vol-b")
	sum1 := writeRandomFile(t, filepath.Join(mnt, "one"), 4<<20)
	syncFS(t, mnt)
	s.must("snapshot", "create", "vol-a", "s1")
	// A snapshot of a mounted xfs, mounted read-only beside its head: it
	// needs nouuid (and norecovery) to mount, after a restart too.
	mntX, mntS := t.TempDir(), t.TempDir()
	s.must("volume", "create", "vol-x", "--size", "512MiB")
	s.must("volume", "mount", "vol-x", mntX, "--mkfs", "xfs")
	sumX := writeRandomFile(t, filepath.Join(mntX, "x"), 1<<20)
	syncFS(t, mntX)
	s.must("snapshot", "create", "vol-x", "s1")
	s.must("volume", "mount", "vol-x@s1", mntS)

	// SIGTERM: everything is released.
	s.stop(syscall.SIGTERM)
	if mounted(t, mnt) {
		t.Fatalf("%s still mounted after SIGTERM; log:\n%s", mnt, s.log.String())
	}
	if m := mounted(t, filepath.Join(dataDir, "mnt")); m {
		t.Fatal("FUSE mount still there after SIGTERM")
	}
	if loops := loopsUnder(t, dataDir); len(loops) != 0 {
		t.Fatalf("loop devices still attached after SIGTERM: %v", loops)
	}

	// Restart: mounts and attachments come back.
	s = startServer(t, dataDir)
	var v volumeJSON
	s.mustJSON(&v, "volume", "info", "vol-a")
	if v.Attachment == nil || v.Attachment.MountPoint != mnt || len(v.Snapshots) != 1 {
		t.Fatalf("after restart: %+v (attachment %+v)", v, v.Attachment)
	}
	s.mustJSON(&v, "volume", "info", "vol-b")
	if v.Attachment == nil || !strings.HasPrefix(v.Attachment.Device, "/dev/loop") {
		t.Fatalf("after restart vol-b is not attached: %+v", v.Attachment)
	}
	if got := md5File(t, filepath.Join(mnt, "one")); got != sum1 {
		t.Fatal("file changed across a SIGTERM restart")
	}
	// The snapshot's read-only mount came back with the same options.
	if !mounted(t, mntS) {
		t.Fatalf("vol-x@s1 not mounted at %s after restart; log:\n%s", mntS, s.log.String())
	}
	if got := md5File(t, filepath.Join(mntS, "x")); got != sumX {
		t.Fatal("file in snapshot vol-x@s1 differs after restart")
	}
	s.must("volume", "detach", "vol-x@s1")
	s.must("volume", "detach", "vol-x")

	// SIGKILL after more synced data.
	sum2 := writeRandomFile(t, filepath.Join(mnt, "two"), 2<<20)
	syncFS(t, mnt)
	s.stop(syscall.SIGKILL)

	s = startServer(t, dataDir)
	if !strings.Contains(s.log.String(), "released what a previous agent left") {
		t.Errorf("the start after SIGKILL did not report cleaning stale devices; log:\n%s", s.log.String())
	}
	s.mustJSON(&v, "volume", "info", "vol-a")
	if v.Attachment == nil || v.Attachment.MountPoint != mnt {
		t.Fatalf("after SIGKILL restart vol-a is not mounted: %+v", v.Attachment)
	}
	for name, want := range map[string]string{"one": sum1, "two": sum2} {
		if got := md5File(t, filepath.Join(mnt, name)); got != want {
			t.Fatalf("file %s (synced before SIGKILL) is not intact after restart", name)
		}
	}
	// The snapshot survived too and reads a clean filesystem.
	var at attachmentJSON
	s.mustJSON(&at, "volume", "attach", "vol-a@s1")
	out, err := runCmd("e2fsck", "-n", at.Device)
	if err != nil {
		t.Fatalf("e2fsck -n on snapshot s1: %v\n%s", err, out)
	}
	// Attached, it cannot be deleted: the attachment would not come back
	// after the next restart.
	s.fails(t, "detach it first", "snapshot", "rm", "vol-a", "s1")
	s.must("volume", "detach", "vol-a@s1")
	s.must("volume", "detach", "vol-a")
	s.must("volume", "detach", "vol-b")
}

func mounted(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// loopsUnder lists loop devices whose backing file is under dir.
func loopsUnder(t *testing.T, dir string) []string {
	t.Helper()
	ents, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var out []string
	for _, e := range ents {
		b, err := os.ReadFile(e)
		if err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), dir) {
			out = append(out, e)
		}
	}
	return out
}
