package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-block/strata/blockdev"
)

// startFUSEAgent runs an agent with its FUSE mount on a temporary data
// directory until the test ends.
func startFUSEAgent(t *testing.T) (*Agent, *Client) {
	t.Helper()
	a, c, stop := startFUSEAgentOn(t, t.TempDir())
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("agent.Run: %v", err)
		}
	})
	return a, c
}

// startFUSEAgentOn runs an agent with its FUSE mount on dataDir until stop.
func startFUSEAgentOn(t *testing.T, dataDir string) (*Agent, *Client, func() error) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but the FUSE mount needs root")
		}
		t.Skip("the FUSE mount needs root")
	}
	// A short drain: the shutdown of an agent with a busy mount waits it out.
	a, err := New(t.Context(), Config{DataDir: dataDir, FUSE: "on", ShutdownTimeout: duration{2 * time.Second}}, "test", nil)
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	stop, err := a.Start(context.WithoutCancel(t.Context()))
	if err != nil {
		t.Fatalf("agent.Start: %v", err)
	}
	return a, NewClient(APISocket(a.cfg.DataDir)), stop
}

// TestSnapshotFileRecreated checks that a snapshot deleted while its FUSE
// file is open, then made again under the same name, gets a file of its
// own: before, the open file kept the name (its removal was refused as
// busy and then skipped), so vol@snap went on serving the deleted
// snapshot's data until the agent restarted.
func TestSnapshotFileRecreated(t *testing.T) {
	a, c := startFUSEAgent(t)
	ctx := t.Context()
	createVolumes(t, c, "vol")
	write := func(b byte) []byte {
		dev, release, err := a.Manager().Open(ctx, "vol")
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		p := bytes.Repeat([]byte{b}, 4096)
		if _, err := dev.WriteAt(ctx, p, 0, 0); err != nil {
			t.Fatal(err)
		}
		return p
	}
	readFile := func(f *os.File) []byte {
		p := make([]byte, 4096)
		if _, err := f.ReadAt(p, 0); err != nil {
			t.Fatal(err)
		}
		return p
	}
	first := write(1)
	if _, err := c.CreateSnapshot(ctx, "vol", "s1"); err != nil {
		t.Fatal(err)
	}
	path := a.host.filePath("vol@s1")
	old, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := c.DeleteSnapshot(ctx, "vol", "s1"); err != nil {
		t.Fatal(err)
	}
	second := write(2)
	if _, err := c.CreateSnapshot(ctx, "vol", "s1"); err != nil {
		t.Fatal(err)
	}
	cur, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	if got := readFile(cur); !bytes.Equal(got, second) {
		t.Errorf("%s after the snapshot was made again reads %d..., want %d...", path, got[0], second[0])
	}
	if got := readFile(old); !bytes.Equal(got, first) {
		t.Errorf("the deleted snapshot's open file reads %d..., want %d...", got[0], first[0])
	}
}

// TestGrowAttached checks that growing a volume reaches its FUSE file and
// the loop device attached over it at once. Before, the file kept the old
// size for the attribute timeout and the loop device until it was
// attached again, so a filesystem on it could not be grown.
func TestGrowAttached(t *testing.T) {
	a, c := startFUSEAgent(t)
	ctx := t.Context()
	createVolumes(t, c, "vol")
	at, err := c.Attach(ctx, "vol", false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Detach(context.WithoutCancel(ctx), "vol") })
	path := a.host.filePath("vol")
	sizes := func() (file, dev int64) {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(fmt.Sprintf("/sys/block/%s/size", strings.TrimPrefix(at.Device, "/dev/")))
		if err != nil {
			t.Fatal(err)
		}
		sectors, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size(), sectors * 512
	}
	if f, d := sizes(); f != mib || d != mib {
		t.Fatalf("before growing: file %d, device %d bytes; want %d", f, d, mib)
	}
	if _, err := c.GrowVolume(ctx, "vol", 4*mib); err != nil {
		t.Fatal(err)
	}
	if f, d := sizes(); f != 4*mib || d != 4*mib {
		t.Fatalf("after growing: file %d, device %d bytes; want %d", f, d, 4*mib)
	}
}

// TestExclusive checks that a volume taken for a restore stays taken
// until released: its file stays out of the FUSE mount whatever refreshes
// it, and attach, snapshots, holds, NBD opens and a second Exclusive are
// refused. Before, Exclusive only checked once: the next refresh (any
// snapshot or volume change on the host) put the file back, and anyone
// could open, attach or snapshot the half-restored volume.
func TestExclusive(t *testing.T) {
	a, c := startFUSEAgent(t)
	ctx := t.Context()
	createVolumes(t, c, "vol")
	path := a.host.filePath("vol")
	release, err := a.Exclusive("vol")
	if err != nil {
		t.Fatal(err)
	}
	createVolumes(t, c, "other") // refreshes the mount
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the file of a volume being restored after a refresh: %v, want it absent", err)
	}
	refused := []struct {
		name string
		err  error
	}{
		{"attach", func() error { _, err := c.Attach(ctx, "vol", false); return err }()},
		{"snapshot", func() error { _, err := c.CreateSnapshot(ctx, "vol", "s"); return err }()},
		{"hold", func() error { _, err := c.Hold(ctx, []string{"other", "vol"}, time.Second); return err }()},
		{"group snapshot", func() error { _, err := c.SnapshotGroup(ctx, "g", []string{"vol"}); return err }()},
		{"nbd open", func() error { _, _, err := exportsAdapter{a}.Open(ctx, "vol"); return err }()},
		{"second exclusive", func() error { _, err := a.Exclusive("vol"); return err }()},
	}
	for _, r := range refused {
		if !errors.Is(r.err, blockdev.ErrInUse) {
			t.Errorf("%s of a volume being restored: %v, want ErrInUse", r.name, r.err)
		}
	}
	release()
	release() // idempotent
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the file after release: %v", err)
	}
	if _, err := c.CreateSnapshot(ctx, "vol", "s"); err != nil {
		t.Errorf("snapshot after release: %v", err)
	}
	// A hold taken before a restore took the volume: a snapshot under it
	// is refused (it would catch the volume half-restored).
	h, err := c.Hold(ctx, []string{"vol"}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.ReleaseHold(ctx, h.ID) }()
	release, err = a.Exclusive("vol")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if _, err := c.SnapshotHold(ctx, h.ID, "s2"); !errors.Is(err, blockdev.ErrInUse) {
		t.Errorf("snapshot under a hold of a volume a restore took since: %v, want ErrInUse", err)
	}
}

// TestForeignMountUntouched: when the directory a volume was mounted on
// holds another filesystem (the volume was unmounted behind the agent's
// back, and something else mounted there), umount, detach and snapshots
// leave that filesystem alone. Before, umount unmounted it and a snapshot
// froze it (FIFREEZE acts on whatever holds the directory: after a
// restart whose re-attach failed, the host's root).
func TestForeignMountUntouched(t *testing.T) {
	a, c := startFUSEAgent(t)
	ctx := t.Context()
	dir := t.TempDir()
	mountNew(t, c, "vol", dir)
	// Behind the agent's back: the volume's filesystem goes, a tmpfs
	// (someone else's) takes the directory.
	if err := unix.Unmount(dir, 0); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	mounted := func() bool {
		var st unix.Statfs_t
		return unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
	}
	if _, err := c.CreateSnapshot(ctx, "vol", "s"); err != nil {
		t.Errorf("snapshot with another filesystem on the recorded mount point: %v", err)
	}
	if err := c.Umount(ctx, "vol"); err != nil {
		t.Errorf("umount: %v", err)
	}
	if !mounted() {
		t.Fatal("umount of the volume unmounted the tmpfs on its recorded mount point")
	}
	if err := c.Detach(ctx, "vol"); err != nil {
		t.Errorf("detach: %v", err)
	}
	if !mounted() {
		t.Fatal("detach of the volume unmounted the tmpfs")
	}
	_ = a
}

// TestStopWithBusyMount: a filesystem still mounted at shutdown (a process
// has a file open on it, so it cannot be unmounted) is written back before
// the volume closes under it: what was written to it survives the restart.
// Before, its dirty pages were lost with the FUSE connection.
func TestStopWithBusyMount(t *testing.T) {
	dataDir := t.TempDir()
	_, c, stop := startFUSEAgentOn(t, dataDir)
	ctx := t.Context()
	dir := t.TempDir()
	mountNew(t, c, "vol", dir)
	want := bytes.Repeat([]byte("kept across the restart\n"), 1000)
	if err := os.WriteFile(filepath.Join(dir, "data"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	busy, err := os.Open(filepath.Join(dir, "data")) // keeps the mount busy
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Logf("agent.Run: %v", err)
	}
	busy.Close()
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	// The next start cleans the stale mount and loop device up by itself
	// and mounts the volume again: one filesystem on dir. Before, the FUSE
	// mount was lazily detached at shutdown, the cleanup no longer found
	// the loop device over it, and the volume was mounted on top.
	_, c, stop = startFUSEAgentOn(t, dataDir)
	t.Cleanup(func() { _ = stop() })
	if n := mountsOn(t, dir); n != 1 {
		t.Errorf("%d filesystems mounted on %s after the restart, want 1", n, dir)
	}
	vs, err := c.Volume(ctx, "vol")
	if err != nil || vs.Attachment == nil || vs.Attachment.MountPoint != dir {
		t.Fatalf("after the restart vol is %+v (%v), want it mounted on %s", vs.Attachment, err, dir)
	}
	at := *vs.Attachment
	t.Cleanup(func() { _ = c.Detach(context.WithoutCancel(ctx), "vol") })
	got, err := os.ReadFile(filepath.Join(dir, "data"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("file on %s after the restart: %d bytes, %v; want the %d written", at.Device, len(got), err, len(want))
	}
}

// mountsOn counts the filesystems mounted on dir (/proc/self/mountinfo).
func mountsOn(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			n++
		}
	}
	return n
}

// TestMetricsOfDeletedExports: the per-export series of a deleted
// snapshot leave the metrics. Before, every snapshot's FUSE file made
// series that stayed for good (each backup-<time> snapshot added ~96).
func TestMetricsOfDeletedExports(t *testing.T) {
	a, c := startFUSEAgent(t)
	ctx := t.Context()
	if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: "vol", Size: 4 * mib}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateSnapshot(ctx, "vol", "s"); err != nil {
		t.Fatal(err)
	}
	series := func(export string) int {
		t.Helper()
		mfs, err := a.met.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "volume" && l.GetValue() == export {
						n++
					}
				}
			}
		}
		return n
	}
	if series("vol@s") == 0 {
		t.Fatal("no series for the snapshot's FUSE file")
	}
	if err := c.DeleteSnapshot(ctx, "vol", "s"); err != nil {
		t.Fatal(err)
	}
	if n := series("vol@s"); n != 0 {
		t.Errorf("%d series of the deleted snapshot vol@s left", n)
	}
	if series("vol") == 0 {
		t.Error("the volume's own series went too")
	}
}

// TestExclusiveStaleRelease: the release of a hold whose volume was
// deleted does not end the hold a later restore took on a volume created
// again under the name. Holds are told apart by their address, which Go
// may share between values of size zero: the token must have a size.
func TestExclusiveStaleRelease(t *testing.T) {
	a, c := startFUSEAgent(t)
	ctx := t.Context()
	createVolumes(t, c, "vol")
	stale, err := a.Exclusive("vol")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteVolume(ctx, "vol"); err != nil {
		t.Fatal(err)
	}
	createVolumes(t, c, "vol")
	release, err := a.Exclusive("vol")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	stale()
	if err := a.notExclusive("vol"); !errors.Is(err, blockdev.ErrInUse) {
		t.Fatalf("after the stale release: %v, want the new hold still in place (ErrInUse)", err)
	}
}
