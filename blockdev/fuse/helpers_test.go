package fuse

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/snapshot"
)

// requireFUSE skips unless this process can mount FUSE filesystems: it
// needs root and /dev/fuse. Under CI=true a missing prerequisite fails.
func requireFUSE(t testing.TB) {
	t.Helper()
	reason := ""
	if os.Geteuid() != 0 {
		reason = "mounting needs root (mount(2), loop devices)"
	} else if _, err := os.Stat("/dev/fuse"); err != nil {
		reason = "no /dev/fuse: " + err.Error()
	}
	if reason == "" {
		return
	}
	skipOrFail(t, reason)
}

// skipOrFail skips the test for reason, or fails it under CI=true (where
// make test installed every tool).
func skipOrFail(t testing.TB, reason string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true but %s", reason)
	}
	t.Skip(reason)
}

// testStore opens a store in a temporary directory, closed at cleanup.
func testStore(t testing.TB) (*snapshot.Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := snapshot.OpenStore(dir, nil)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return s, dir
}

// testVolume creates a volume, closed at cleanup.
func testVolume(t testing.TB, s *snapshot.Store, name string, size int64) *snapshot.Volume {
	t.Helper()
	v, err := s.Create(context.Background(), name, size)
	if err != nil {
		t.Fatalf("create volume %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := v.Close(); err != nil {
			t.Errorf("close volume %s: %v", name, err)
		}
	})
	return v
}

// testSnapshot takes snapshot name of v and opens its view, closed at
// cleanup.
func testSnapshot(t testing.TB, v *snapshot.Volume, name string) blockdev.Volume {
	t.Helper()
	ctx := context.Background()
	if err := v.Snapshot(ctx, name); err != nil {
		t.Fatalf("snapshot %s: %v", name, err)
	}
	vw, err := v.OpenSnapshot(ctx, name)
	if err != nil {
		t.Fatalf("open snapshot %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := vw.Close(); err != nil {
			t.Errorf("close snapshot %s: %v", name, err)
		}
	})
	return blockdev.FromView(vw)
}

// testMount mounts an FS on a fresh directory; cleanup unmounts it (before
// the volumes registered earlier are closed) even when the test fails.
func testMount(t testing.TB, opts *Options) *FS {
	t.Helper()
	requireFUSE(t)
	dir := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if opts == nil {
		opts = &Options{}
	}
	f, err := Mount(t.Context(), dir, opts)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // open files left by a failed test: abort at once
		if err := f.Close(ctx); err != nil {
			t.Errorf("close mount: %v", err)
		}
	})
	return f
}
