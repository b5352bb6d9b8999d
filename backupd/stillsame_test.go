package backupd

import (
	"errors"
	"testing"

	"github.com/strata-block/strata/blockdev"
)

// TestStillSame: BackupVolume's last check before it backs up refuses when
// the snapshot (or the parent's) is no longer the one it identified: made
// again under its name while the backup was being prepared. Before, the
// view, the changed extents and the recorded identity could describe
// different snapshots, and the incremental silently missed writes.
func TestStillSame(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m, err := blockdev.OpenManager(ctx, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Create(ctx, "vol", 1<<20); err != nil {
		t.Fatal(err)
	}
	first, err := m.Snapshot(ctx, "vol", "t")
	if err != nil {
		t.Fatal(err)
	}
	parent := BackupInfo{Snapshot: "t", SnapshotCreated: first.Created}
	if err := stillSame(ctx, m, "vol", "t", first.Created, &parent); err != nil {
		t.Fatalf("nothing changed: %v", err)
	}
	if err := m.DeleteSnapshot(ctx, "vol", "t"); err != nil {
		t.Fatal(err)
	}
	again, err := m.Snapshot(ctx, "vol", "t")
	if err != nil {
		t.Fatal(err)
	}
	for name, check := range map[string]func() error{
		"snapshot":        func() error { return stillSame(ctx, m, "vol", "t", first.Created, nil) },
		"parent snapshot": func() error { return stillSame(ctx, m, "vol", "t", again.Created, &parent) },
	} {
		if err := check(); !errors.Is(err, ErrBusy) {
			t.Errorf("%s made again: %v, want ErrBusy", name, err)
		}
	}
}
