package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-block/strata/blockdev"
)

// isMountPoint reports whether a filesystem is mounted on dir (its device
// differs from its parent's).
func isMountPoint(t *testing.T, dir string) bool {
	t.Helper()
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatalf("stat %s: %v", dir, err)
	}
	if err := unix.Stat(filepath.Dir(dir), &parent); err != nil {
		t.Fatalf("stat %s: %v", filepath.Dir(dir), err)
	}
	return st.Dev != parent.Dev
}

// mountNew creates a 64 MiB volume and mounts it on dir with a new ext4.
func mountNew(t *testing.T, c *Client, name, dir string) {
	t.Helper()
	if _, err := c.CreateVolume(t.Context(), CreateVolumeRequest{Name: name, Size: 64 * mib}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Mount(t.Context(), name, dir, "ext4"); err != nil {
		t.Fatal(err)
	}
}

func TestStopOrder(t *testing.T) {
	tests := []struct {
		mounts map[string]string
		want   []string
	}{
		{map[string]string{"a": "/srv/d", "b": "/srv/d/logs", "c": ""}, []string{"b", "a", "c"}},
		{map[string]string{"z": "/m", "y": "/m/x/", "x": "/n/o/p", "w": ""}, []string{"x", "y", "z", "w"}},
		{map[string]string{"b": "", "a": ""}, []string{"a", "b"}},
		{map[string]string{}, []string{}},
	}
	for _, tt := range tests {
		if got := stopOrder(tt.mounts); !slices.Equal(got, tt.want) {
			t.Errorf("stopOrder(%v) = %v, want %v", tt.mounts, got, tt.want)
		}
	}
}

// TestStopUnmountsNested: a volume mounted inside another volume's
// filesystem is unmounted first at shutdown, so both go. Before, the
// order was a map's: half the time the outer unmount failed as busy and
// its filesystem stayed mounted over a FUSE mount that was gone.
func TestStopUnmountsNested(t *testing.T) {
	dataDir := t.TempDir()
	_, c, stop := startFUSEAgentOn(t, dataDir)
	ctx := t.Context()
	dir := t.TempDir()
	inner := filepath.Join(dir, "inner")
	for _, v := range []string{"outer", "nested"} {
		if _, err := c.CreateVolume(ctx, CreateVolumeRequest{Name: v, Size: 64 * mib}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Mount(ctx, "outer", dir, "ext4"); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(inner, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Mount(ctx, "nested", inner, "ext4"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = unix.Unmount(inner, unix.MNT_DETACH)
		_ = unix.Unmount(dir, unix.MNT_DETACH)
	})
	if err := stop(); err != nil {
		t.Errorf("agent.Run: %v", err)
	}
	if isMountPoint(t, dir) {
		t.Errorf("%s still mounted after shutdown", dir)
	}
	// The next start mounts both again, outer first.
	_, c, stop = startFUSEAgentOn(t, dataDir)
	defer func() { _ = stop() }()
	if !isMountPoint(t, dir) || !isMountPoint(t, inner) {
		t.Errorf("after restart: %s mounted %v, %s mounted %v; want both", dir, isMountPoint(t, dir), inner, isMountPoint(t, inner))
	}
	for _, v := range []string{"nested", "outer"} {
		if err := c.Detach(context.WithoutCancel(ctx), v); err != nil {
			t.Errorf("detach %s: %v", v, err)
		}
	}
}

// TestFailedStartKeepsAttachments: a start that fails after re-attaching
// the recorded volumes (here the TCP API's certificate is missing) keeps
// their records, and the next good start mounts them again. Before, the
// failed start forgot every attachment.
func TestFailedStartKeepsAttachments(t *testing.T) {
	dataDir := t.TempDir()
	_, c, stop := startFUSEAgentOn(t, dataDir)
	ctx := t.Context()
	dir := t.TempDir()
	mountNew(t, c, "vol", dir)
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	if err := stop(); err != nil {
		t.Errorf("agent.Run: %v", err)
	}

	missing := filepath.Join(t.TempDir(), "missing")
	a, err := New(ctx, Config{DataDir: dataDir, FUSE: "on", ShutdownTimeout: duration{2 * time.Second},
		APIListen: "127.0.0.1:0", TLSCert: missing + ".crt", TLSKey: missing + ".key", TokenFile: missing + ".token"}, "test", nil)
	if err != nil {
		t.Fatalf("agent.New: %v", err)
	}
	if stop, err := a.Start(context.WithoutCancel(ctx)); err == nil {
		_ = stop()
		t.Fatal("start with a missing TLS certificate succeeded")
	}

	_, c, stop = startFUSEAgentOn(t, dataDir)
	defer func() { _ = stop() }()
	if !isMountPoint(t, dir) {
		t.Fatalf("after a failed start and a good one, vol is not mounted on %s again", dir)
	}
	if err := c.Detach(context.WithoutCancel(ctx), "vol"); err != nil {
		t.Errorf("detach: %v", err)
	}
}

// TestRestoreMountNotThroughSymlink: a recorded mount point whose path
// became a symlink while the agent was down is not mounted on at the next
// start (mount(2) would follow it and mount the volume wherever it
// points, /etc say). The volume is attached again, its record kept.
func TestRestoreMountNotThroughSymlink(t *testing.T) {
	dataDir := t.TempDir()
	_, c, stop := startFUSEAgentOn(t, dataDir)
	ctx := t.Context()
	parent := t.TempDir()
	dir := filepath.Join(parent, "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mountNew(t, c, "vol", dir)
	if err := stop(); err != nil {
		t.Errorf("agent.Run: %v", err)
	}
	elsewhere := t.TempDir()
	t.Cleanup(func() {
		_ = unix.Unmount(elsewhere, unix.MNT_DETACH)
		_ = unix.Unmount(dir, unix.MNT_DETACH)
	})
	if err := os.Rename(dir, dir+".old"); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, dir); err != nil {
		t.Fatal(err)
	}
	_, c, stop = startFUSEAgentOn(t, dataDir)
	defer func() { _ = stop() }()
	if isMountPoint(t, elsewhere) {
		t.Fatalf("the next start mounted the volume through the symlink on %s", elsewhere)
	}
	if err := c.Detach(context.WithoutCancel(ctx), "vol"); err != nil {
		t.Errorf("detach: %v", err)
	}
}

// TestConcurrentMounts: two mounts of one attached volume at once: one
// mounts, the other is refused as already mounted. Before, both read the
// attachment before taking the agent's lock, and both mounted it (the
// record kept only the second).
func TestConcurrentMounts(t *testing.T) {
	a, c := startFUSEAgent(t)
	ctx := t.Context()
	mountNew(t, c, "vol", t.TempDir())
	if err := c.Umount(ctx, "vol"); err != nil {
		t.Fatal(err)
	}
	dirs := []string{t.TempDir(), t.TempDir()}
	t.Cleanup(func() {
		for _, d := range dirs {
			_ = unix.Unmount(d, unix.MNT_DETACH)
		}
		_ = c.Detach(context.WithoutCancel(ctx), "vol")
	})
	// Both requests get as far as they can while the agent is busy.
	a.mu.Lock()
	errs := make(chan error, len(dirs))
	for _, d := range dirs {
		go func() {
			_, err := c.Mount(ctx, "vol", d, "")
			errs <- err
		}()
	}
	time.Sleep(300 * time.Millisecond)
	a.mu.Unlock()
	var ok, exists int
	for range dirs {
		switch err := <-errs; {
		case err == nil:
			ok++
		case errors.Is(err, blockdev.ErrExists):
			exists++
		default:
			t.Errorf("mount: %v", err)
		}
	}
	mounted := 0
	for _, d := range dirs {
		if isMountPoint(t, d) {
			mounted++
		}
	}
	if ok != 1 || exists != 1 || mounted != 1 {
		t.Errorf("two concurrent mounts: %d succeeded, %d refused as mounted, %d directories mounted; want 1, 1, 1", ok, exists, mounted)
	}
}
