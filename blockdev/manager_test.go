package blockdev

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func openTestManager(t *testing.T, dir string) *Manager {
	t.Helper()
	m, err := OpenManager(t.Context(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func fill(b byte) []byte { return bytes.Repeat([]byte{b}, 4096) }

func readBlock(t *testing.T, dev Volume, off int64) []byte {
	t.Helper()
	p := make([]byte, 4096)
	if _, err := dev.ReadAt(t.Context(), p, off); err != nil {
		t.Fatalf("%s: read at %d: %v", dev.Name(), off, err)
	}
	return p
}

func TestManagerLifecycle(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	m := openTestManager(t, dir)

	if _, err := m.Create(ctx, "vol-a", 1<<20); err != nil {
		t.Fatal(err)
	}
	head, release, err := m.Open(ctx, "vol-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := head.WriteAt(ctx, fill('1'), 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Snapshot(ctx, "vol-a", "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := head.WriteAt(ctx, fill('2'), 0, FUA); err != nil {
		t.Fatal(err)
	}

	// A second device of the same name is the same volume.
	head2, release2, err := m.Open(ctx, "vol-a")
	if err != nil {
		t.Fatal(err)
	}
	if got := readBlock(t, head2, 0); !bytes.Equal(got, fill('2')) {
		t.Fatalf("second device reads %q, want the first device's write", got[:1])
	}

	snapDev, releaseSnap, err := m.Open(ctx, "vol-a@s1")
	if err != nil {
		t.Fatal(err)
	}
	if !snapDev.ReadOnly() {
		t.Fatal("snapshot device is writable")
	}
	if got := readBlock(t, snapDev, 0); !bytes.Equal(got, fill('1')) {
		t.Fatalf("snapshot reads %q, want '1'", got[:1])
	}
	if _, err := snapDev.WriteAt(ctx, fill('x'), 0, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("write to snapshot: %v, want ErrReadOnly", err)
	}

	exports, err := m.Exports(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"vol-a", "vol-a@s1"}; !slices.Equal(exports, want) {
		t.Fatalf("exports %v, want %v", exports, want)
	}
	info, err := m.Volume(ctx, "vol-a")
	if err != nil {
		t.Fatal(err)
	}
	if info.Users != 3 || info.Depth != 2 || len(info.Snapshots) != 1 || info.Created.IsZero() {
		t.Fatalf("info %+v: want 3 users, depth 2, 1 snapshot, a creation time", info)
	}

	// Busy volumes are not deleted or reverted.
	if err := m.Delete(ctx, "vol-a"); !errors.Is(err, ErrInUse) {
		t.Fatalf("delete with devices open: %v, want ErrInUse", err)
	}
	if err := m.Revert(ctx, "vol-a", "s1"); !errors.Is(err, ErrInUse) {
		t.Fatalf("revert with head devices open: %v, want ErrInUse", err)
	}

	// Deleting the snapshot while its device is open: the device keeps
	// reading it; the export is gone.
	if err := m.DeleteSnapshot(ctx, "vol-a", "s1"); err != nil {
		t.Fatal(err)
	}
	if got := readBlock(t, snapDev, 0); !bytes.Equal(got, fill('1')) {
		t.Fatalf("open device of a deleted snapshot reads %q, want '1'", got[:1])
	}
	if _, _, err := m.Open(ctx, "vol-a@s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open deleted snapshot: %v, want ErrNotFound", err)
	}
	releaseSnap()
	releaseSnap() // idempotent
	release()
	release2()

	if _, err := m.Snapshot(ctx, "vol-a", "s2"); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Clone(ctx, "vol-a", "s2", "vol-b"); err != nil {
		t.Fatal(err)
	}
	if err := m.Grow(ctx, "vol-b", 2<<20); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, "vol-a"); err != nil {
		t.Fatalf("delete idle volume: %v", err)
	}

	// Everything persists across a reopen.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m = openTestManager(t, dir)
	vols, err := m.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 1 || vols[0].Name != "vol-b" || vols[0].Size != 2<<20 {
		t.Fatalf("after reopen: %+v, want vol-b of 2 MiB", vols)
	}
	dev, rel, err := m.Open(ctx, "vol-b")
	if err != nil {
		t.Fatal(err)
	}
	defer rel()
	if got := readBlock(t, dev, 0); !bytes.Equal(got, fill('2')) {
		t.Fatalf("clone reads %q, want '2'", got[:1])
	}
}

func TestManagerRevertOrphansViews(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := openTestManager(t, t.TempDir())
	if _, err := m.Create(ctx, "v", 1<<20); err != nil {
		t.Fatal(err)
	}
	for i, s := range []string{"a", "b"} {
		dev, rel, err := m.Open(ctx, "v")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := dev.WriteAt(ctx, fill(byte('0'+i)), 0, 0); err != nil {
			t.Fatal(err)
		}
		rel()
		if _, err := m.Snapshot(ctx, "v", s); err != nil {
			t.Fatal(err)
		}
	}
	snapB, relB, err := m.Open(ctx, "v@b")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Revert(ctx, "v", "a"); err != nil {
		t.Fatal(err)
	}
	// b is gone with the revert, but its open device still reads it.
	if got := readBlock(t, snapB, 0); !bytes.Equal(got, fill('1')) {
		t.Fatalf("device of reverted-away snapshot reads %q, want '1'", got[:1])
	}
	relB()
	if _, _, err := m.Open(ctx, "v@b"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("open v@b after revert: %v, want ErrNotFound", err)
	}
	dev, rel, err := m.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	defer rel()
	if got := readBlock(t, dev, 0); !bytes.Equal(got, fill('0')) {
		t.Fatalf("reverted head reads %q, want '0'", got[:1])
	}
}

func TestManagerBadInput(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := openTestManager(t, t.TempDir())
	if _, err := m.Create(ctx, "ok", 1<<20); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		call func() error
		want error
	}{
		{"create ../x", func() error { _, err := m.Create(ctx, "../x", 1<<20); return err }, ErrInvalidName},
		{"create duplicate", func() error { _, err := m.Create(ctx, "ok", 1<<20); return err }, ErrExists},
		{"create odd size", func() error { _, err := m.Create(ctx, "odd", 4097); return err }, ErrInvalidArgument},
		{"open unknown", func() error { _, _, err := m.Open(ctx, "nope"); return err }, ErrNotFound},
		{"open unknown snapshot", func() error { _, _, err := m.Open(ctx, "ok@nope"); return err }, ErrNotFound},
		{"open a@b@c", func() error { _, _, err := m.Open(ctx, "ok@b@c"); return err }, ErrInvalidName},
		{"open empty", func() error { _, _, err := m.Open(ctx, ""); return err }, ErrInvalidName},
		{"open /etc/passwd", func() error { _, _, err := m.Open(ctx, "/etc/passwd"); return err }, ErrInvalidName},
		{"snapshot bad name", func() error { _, err := m.Snapshot(ctx, "ok", "A"); return err }, ErrInvalidName},
		{"delete unknown", func() error { return m.Delete(ctx, "nope") }, ErrNotFound},
		{"delete unknown snapshot", func() error { return m.DeleteSnapshot(ctx, "ok", "nope") }, ErrNotFound},
		{"revert unknown snapshot", func() error { return m.Revert(ctx, "ok", "nope") }, ErrNotFound},
		{"shrink", func() error { return m.Grow(ctx, "ok", 4096) }, ErrInvalidArgument},
		{"cancelled", func() error {
			c, cancel := context.WithCancel(ctx)
			cancel()
			_, err := m.Create(c, "x", 4096)
			return err
		}, context.Canceled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	vols, err := m.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(vols) != 1 || vols[0].Name != "ok" || len(vols[0].Snapshots) != 0 {
		t.Fatalf("bad input changed the volumes: %+v", vols)
	}
}

// TestViewOfRecreatedSnapshot: a snapshot deleted and made again under its
// name is never served from the old one's cached view, even when the
// deletion's cleanup of the cache has not run (a DeleteSnapshot racing a
// Snapshot of the same name; here the store is driven directly). Before,
// the cache was keyed by name alone, and an incremental backup of the new
// snapshot read the old one's data.
func TestViewOfRecreatedSnapshot(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := openTestManager(t, t.TempDir())
	if _, err := m.Create(ctx, "vol", 1<<20); err != nil {
		t.Fatal(err)
	}
	head, release, err := m.Open(ctx, "vol")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if _, err := head.WriteAt(ctx, fill('1'), 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Snapshot(ctx, "vol", "t"); err != nil {
		t.Fatal(err)
	}
	old, releaseOld, err := m.Open(ctx, "vol@t") // cached
	if err != nil {
		t.Fatal(err)
	}
	releaseOld()
	if got := readBlock(t, old, 0); !bytes.Equal(got, fill('1')) {
		t.Fatal("the first t does not read its data")
	}
	if _, err := head.WriteAt(ctx, fill('2'), 0, 0); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	v := m.vols["vol"].v
	m.mu.Unlock()
	if err := v.DeleteSnapshot(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	if err := v.Snapshot(ctx, "t"); err != nil {
		t.Fatal(err)
	}
	cur, releaseCur, err := m.Open(ctx, "vol@t")
	if err != nil {
		t.Fatal(err)
	}
	defer releaseCur()
	if got := readBlock(t, cur, 0); !bytes.Equal(got, fill('2')) {
		t.Fatalf("vol@t made again reads %q..., want the new snapshot's 2", got[:1])
	}
}

// managerWithSnapshot is a Manager with 1 MiB volume v and its snapshot a.
func managerWithSnapshot(t *testing.T) *Manager {
	t.Helper()
	m := openTestManager(t, t.TempDir())
	if _, err := m.Create(t.Context(), "v", 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Snapshot(t.Context(), "v", "a"); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestManagerRevertClaimsVolume: while a Revert runs (outside the
// Manager's lock: it writes a new layer and waits for the volume's other
// operations), the head cannot be opened, nor the volume deleted or
// reverted again. Before, the idle check was the only guard, and an NBD
// client opening the head meanwhile had its writes replaced under it.
func TestManagerRevertClaimsVolume(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := managerWithSnapshot(t)
	var during []error
	m.revertHook = func() {
		_, rel, err := m.Open(ctx, "v")
		if err == nil {
			rel()
		}
		during = append(during, err, m.Delete(ctx, "v"), m.Revert(ctx, "v", "a"))
	}
	if err := m.Revert(ctx, "v", "a"); err != nil {
		t.Fatal(err)
	}
	m.revertHook = nil
	for i, what := range []string{"open of the head", "delete", "second revert"} {
		if !errors.Is(during[i], ErrInUse) {
			t.Errorf("%s during a revert: %v, want ErrInUse", what, during[i])
		}
	}
	// Claimed no more once done.
	_, rel, err := m.Open(ctx, "v")
	if err != nil {
		t.Fatalf("open after the revert: %v", err)
	}
	rel()
}

// TestManagerClosedVolumeInfo: a volume whose Close failed is deleted all
// the same, and the snapshot list of a closed volume is empty. Before,
// Snapshots of a closed volume indexed its released chain and panicked,
// which a volume left registered after a failed Close reached through
// every listing (an NBD export list crashed the agent).
func TestManagerClosedVolumeInfo(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := managerWithSnapshot(t)
	m.mu.Lock()
	v := m.vols["v"].v
	m.mu.Unlock()
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if got := v.Snapshots(); len(got) != 0 {
		t.Errorf("snapshots of a closed volume: %+v, want none", got)
	}
	if _, err := m.Volumes(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Delete(ctx, "v"); err != nil {
		t.Fatalf("delete of a closed volume: %v", err)
	}
	if _, err := m.Volume(ctx, "v"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("volume after delete: %v, want ErrNotFound", err)
	}
}

// TestDeleteSnapshotFreesLayerUnderOpenView: deleting a snapshot frees its
// layer although a device is open on a newer snapshot's view (the FUSE
// file of every snapshot keeps one), and that device reads the same before
// and after. Before, the open view held the merged layer until it closed,
// so the deletion freed nothing and the merge's copies took more space.
func TestDeleteSnapshotFreesLayerUnderOpenView(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	m := openTestManager(t, dir)
	if _, err := m.Create(ctx, "v", 4<<20); err != nil {
		t.Fatal(err)
	}
	dev, rel, err := m.Open(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < 4<<20; off += 4096 {
		if _, err := dev.WriteAt(ctx, fill(byte(off>>12)), off, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Snapshot(ctx, "v", "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WriteAt(ctx, fill('x'), 0, 0); err != nil {
		t.Fatal(err)
	}
	rel()
	if _, err := m.Snapshot(ctx, "v", "s2"); err != nil {
		t.Fatal(err)
	}
	s2, relS2, err := m.Open(ctx, "v@s2")
	if err != nil {
		t.Fatal(err)
	}
	defer relS2()
	before := make([]byte, 4<<20)
	if _, err := s2.ReadAt(ctx, before, 0); err != nil {
		t.Fatal(err)
	}
	layers := func() int {
		t.Helper()
		ents, err := filepath.Glob(filepath.Join(dir, "layers", "*.data"))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	n := layers()
	if err := m.DeleteSnapshot(ctx, "v", "s1"); err != nil {
		t.Fatal(err)
	}
	if got := layers(); got != n-1 {
		t.Errorf("layer files after deleting s1 with v@s2 open: %d, want %d (s1's freed)", got, n-1)
	}
	after := make([]byte, 4<<20)
	if _, err := s2.ReadAt(ctx, after, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("the open device of v@s2 reads other data after the deletion below it")
	}
}

// TestManagerServed: Served counts the volumes served, not one that failed
// to open (Volumes lists it, with its error), and takes no volume's lock.
func TestManagerServed(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	m := openTestManager(t, dir)
	for _, v := range []string{"a", "b"} {
		if _, err := m.Create(ctx, v, 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if n := m.Served(); n != 2 {
		t.Fatalf("Served = %d, want 2", n)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// b's metadata damaged: it no longer opens.
	if err := os.WriteFile(filepath.Join(dir, "volumes", "b.meta"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	m = openTestManager(t, dir)
	vs, err := m.Volumes(ctx)
	if err != nil || len(vs) != 2 {
		t.Fatalf("Volumes = %+v, %v; want a and the broken b", vs, err)
	}
	if n := m.Served(); n != 1 {
		t.Fatalf("Served with b broken = %d, want 1", n)
	}
}
