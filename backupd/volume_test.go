package backupd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/plugins"
)

const mib = 1 << 20

func openManager(t testing.TB, dir string) *blockdev.Manager {
	t.Helper()
	m, err := blockdev.OpenManager(context.Background(), dir, nil)
	if err != nil {
		t.Fatalf("OpenManager: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// device opens an export and releases it at cleanup.
func device(t testing.TB, m *blockdev.Manager, export string) blockdev.Volume {
	t.Helper()
	v, rel, err := m.Open(context.Background(), export)
	if err != nil {
		t.Fatalf("Open(%s): %v", export, err)
	}
	t.Cleanup(rel)
	return v
}

func write(t testing.TB, v blockdev.Volume, p []byte, off int64) {
	t.Helper()
	if _, err := v.WriteAt(context.Background(), p, off, 0); err != nil {
		t.Fatalf("WriteAt %d+%d: %v", off, len(p), err)
	}
}

func snapshot(t testing.TB, m *blockdev.Manager, vol, snap string) {
	t.Helper()
	if _, err := m.Snapshot(context.Background(), vol, snap); err != nil {
		t.Fatalf("Snapshot %s@%s: %v", vol, snap, err)
	}
}

func readAll(t testing.TB, v blockdev.Volume) []byte {
	t.Helper()
	b := make([]byte, v.Size())
	for off := int64(0); off < v.Size(); off += 4 * mib {
		n := min(4*mib, v.Size()-off)
		if _, err := v.ReadAt(context.Background(), b[off:off+n], off); err != nil && err != io.EOF {
			t.Fatalf("ReadAt %d: %v", off, err)
		}
	}
	return b
}

// restoreInto restores key into a new volume and returns its content.
func restoreInto(t testing.TB, m *blockdev.Manager, r *backupd.Repository, key, vol string, size int64) []byte {
	t.Helper()
	if _, err := m.Create(context.Background(), vol, size); err != nil {
		t.Fatalf("Create %s: %v", vol, err)
	}
	v := device(t, m, vol)
	if _, err := r.Restore(context.Background(), key, backupd.VolumeDestination{V: v}, backupd.RestoreOptions{DestZeroed: true}); err != nil {
		t.Fatalf("Restore %s into %s: %v", key, vol, err)
	}
	return readAll(t, v)
}

// TestRoundTripVolumes backs up real volumes (random, sparse, all-zero,
// encrypted) from snapshots and restores them into new volumes.
func TestRoundTripVolumes(t *testing.T) {
	t.Parallel()
	key, err := backupd.NewKey(bytes.Repeat([]byte{1}, backupd.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		size  int64
		fill  func(r *rand.Rand, v blockdev.Volume)
		key   *backupd.Key
		trims bool
	}{
		{name: "random", size: 32 * mib, fill: func(r *rand.Rand, v blockdev.Volume) { write(t, v, backupd.RandomData(r, 32*mib), 0) }},
		{name: "random-encrypted", size: 16 * mib, key: key, fill: func(r *rand.Rand, v blockdev.Volume) { write(t, v, backupd.RandomData(r, 16*mib), 0) }},
		{name: "sparse", size: 64 * mib, fill: func(r *rand.Rand, v blockdev.Volume) {
			for off := int64(0); off < 64*mib; off += 5 * mib {
				write(t, v, backupd.RandomData(r, 12288), off+4096)
			}
		}},
		{name: "sparse-trimmed", size: 16 * mib, fill: func(r *rand.Rand, v blockdev.Volume) {
			write(t, v, backupd.RandomData(r, 16*mib), 0)
			if err := v.Trim(context.Background(), 3*mib, 5*mib, 0); err != nil {
				t.Fatal(err)
			}
			if err := v.Zero(context.Background(), 9*mib, 2*mib, 0); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "all-zero", size: 128 * mib, fill: func(*rand.Rand, blockdev.Volume) {}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := openManager(t, t.TempDir())
			tg := backupd.NewFSTarget(t, t.TempDir())
			r := backupd.Open(tg, &backupd.Options{Key: tc.key})
			if _, err := m.Create(t.Context(), "vol-a", tc.size); err != nil {
				t.Fatal(err)
			}
			tc.fill(rand.New(rand.NewPCG(5, uint64(tc.size))), device(t, m, "vol-a"))
			snapshot(t, m, "vol-a", "s1")
			snap := device(t, m, "vol-a@s1")
			res, err := r.Backup(t.Context(), backupd.BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: snap})
			if err != nil {
				t.Fatalf("Backup: %v", err)
			}
			want := readAll(t, snap)
			if tc.name != "random" && tc.name != "random-encrypted" && res.BytesScanned >= tc.size {
				t.Errorf("scanned %d bytes of a %d-byte sparse volume: holes were read", res.BytesScanned, tc.size)
			}
			backupd.MustEqual(t, "restored volume", restoreInto(t, m, r, res.ManifestKey, "restored", tc.size), want)
		})
	}
}

// TestIncrementalAmplification measures the bytes uploaded by incremental
// backups against the bytes changed (issue 7's acceptance: ≤ 1.5× for a
// 10 MiB contiguous change, ≤ 4× for 1% scattered 4 KiB writes) and
// restores every backup bit-exact.
//
// STRATA_BACKUP_AMPL_MIB sets the volume size in MiB (default 256; the
// issue allows 256 MiB to 1 GiB).
func TestIncrementalAmplification(t *testing.T) {
	t.Parallel()
	size := int64(256 * mib)
	if s := os.Getenv("STRATA_BACKUP_AMPL_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 64 || n%16 != 0 {
			t.Fatalf("STRATA_BACKUP_AMPL_MIB=%q: want a multiple of 16, at least 64", s)
		}
		size = int64(n) * mib
	}
	ctx := t.Context()
	m := openManager(t, t.TempDir())
	tg := backupd.NewFSTarget(t, t.TempDir())
	r := backupd.Open(tg, nil)
	rng := rand.New(rand.NewPCG(11, 12))
	if _, err := m.Create(ctx, "vol-a", size); err != nil {
		t.Fatal(err)
	}
	v := device(t, m, "vol-a")
	for off := int64(0); off < size; off += 16 * mib {
		write(t, v, backupd.RandomData(rng, 16*mib), off)
	}
	snapshot(t, m, "vol-a", "s0")
	full, err := r.Backup(ctx, backupd.BackupOptions{Volume: "vol-a", Snapshot: "s0", Source: device(t, m, "vol-a@s0")})
	if err != nil {
		t.Fatalf("full backup: %v", err)
	}
	t.Logf("full: %d bytes uploaded for %d bytes (%.3fx)", tg.Take(), size, float64(full.BytesUploaded)/float64(size))

	type step struct {
		name    string
		mutate  func() int64 // returns bytes changed
		maxAmpl float64
	}
	steps := []step{
		{name: "contiguous-10MiB", maxAmpl: 1.5, mutate: func() int64 {
			write(t, v, backupd.RandomData(rng, 10*mib), 37*mib+4096)
			return 10 * mib
		}},
		{name: "scattered-1pct-4KiB", maxAmpl: 4, mutate: func() int64 {
			blocks := int64(size / 4096)
			n := blocks / 100
			seen := map[int64]bool{}
			for int64(len(seen)) < n {
				b := rng.Int64N(blocks)
				if seen[b] {
					continue
				}
				seen[b] = true
				write(t, v, backupd.RandomData(rng, 4096), b*4096)
			}
			return n * 4096
		}},
	}
	parent, prevSnap := full, "s0"
	for i, st := range steps {
		changed := st.mutate()
		snap := "s" + string(rune('1'+i))
		snapshot(t, m, "vol-a", snap)
		ext, err := m.Changed(ctx, "vol-a", prevSnap, snap)
		if err != nil {
			t.Fatal(err)
		}
		sv := device(t, m, "vol-a@"+snap)
		tg.Take()
		res, err := r.Backup(ctx, backupd.BackupOptions{Volume: "vol-a", Snapshot: snap, Source: sv, Parent: parent.ID, Changed: ext})
		if err != nil {
			t.Fatalf("%s: incremental backup: %v", st.name, err)
		}
		put := tg.Take()
		ampl := float64(put) / float64(changed)
		t.Logf("%s: changed %d bytes, uploaded %d (manifest stats %d; %d new chunks, %d pages), scanned %d: amplification %.3fx (limit %.1fx)",
			st.name, changed, put, res.BytesUploaded, res.ChunksNew, res.Stats.PagesUploaded, res.BytesScanned, ampl, st.maxAmpl)
		if ampl > st.maxAmpl {
			t.Errorf("%s: uploaded %d bytes for %d changed: %.2fx > %.1fx", st.name, put, changed, ampl, st.maxAmpl)
		}
		if put != res.BytesUploaded {
			t.Errorf("%s: target saw %d bytes Put, the manifest says %d", st.name, put, res.BytesUploaded)
		}
		if res.BytesScanned > 2*changed {
			t.Errorf("%s: scanned %d bytes for %d changed: unchanged data was read", st.name, res.BytesScanned, changed)
		}
		backupd.MustEqual(t, st.name+": restored volume", restoreInto(t, m, r, res.ManifestKey, "restored-"+snap, size), readAll(t, sv))
		parent, prevSnap = res, snap
	}
	// The full backup still restores after the incrementals.
	backupd.MustEqual(t, "full backup restored", restoreInto(t, m, r, full.ManifestKey, "restored-s0", size), readAll(t, device(t, m, "vol-a@s0")))
}

// TestBackupVolume checks the choice of parent: full the first time,
// incremental to the newest backup while its snapshot exists, full again
// once that snapshot is deleted.
func TestBackupVolume(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	const size = 16 * mib
	m := openManager(t, t.TempDir())
	r := backupd.Open(backupd.NewFSTarget(t, t.TempDir()), nil)
	rng := rand.New(rand.NewPCG(71, 72))
	if _, err := m.Create(ctx, "vol-a", size); err != nil {
		t.Fatal(err)
	}
	v := device(t, m, "vol-a")
	write(t, v, backupd.RandomData(rng, size), 0)
	tests := []struct {
		snap       string
		deleteSnap string // before the backup
		// remake is deleted and taken again, with a write between,
		// before snap: a new snapshot under the newest backup's
		// snapshot name, which is not the snapshot of that backup.
		remake     string
		wantParent bool
	}{
		{snap: "s1"},
		{snap: "s2", wantParent: true},
		{snap: "s3", deleteSnap: "s2"},
		{snap: "s4", remake: "s3"},
		{snap: "s5", wantParent: true},
	}
	for _, tc := range tests {
		if tc.remake != "" {
			if err := m.DeleteSnapshot(ctx, "vol-a", tc.remake); err != nil {
				t.Fatal(err)
			}
			// Outside the first quarter, where the other writes go.
			write(t, v, backupd.RandomData(rng, 64<<10), size-64<<10)
			snapshot(t, m, "vol-a", tc.remake)
		}
		write(t, v, backupd.RandomData(rng, 64<<10), rng.Int64N(size/4096-16)*4096)
		snapshot(t, m, "vol-a", tc.snap)
		if tc.deleteSnap != "" {
			if err := m.DeleteSnapshot(ctx, "vol-a", tc.deleteSnap); err != nil {
				t.Fatal(err)
			}
		}
		res, err := r.BackupVolume(ctx, m, "vol-a", tc.snap, backupd.BackupOptions{})
		if err != nil {
			t.Fatalf("%s: %v", tc.snap, err)
		}
		if got := res.Manifest.Parent != ""; got != tc.wantParent {
			t.Errorf("%s: parent %q, want one: %v", tc.snap, res.Manifest.Parent, tc.wantParent)
		}
		if tc.wantParent && res.BytesScanned > 256<<10 {
			t.Errorf("%s: incremental scanned %d bytes", tc.snap, res.BytesScanned)
		}
		sv := device(t, m, "vol-a@"+tc.snap)
		backupd.MustEqual(t, tc.snap+" restored", restoreInto(t, m, r, res.ManifestKey, "r-"+tc.snap, size), readAll(t, sv))
	}
	// An older snapshot backed up after newer ones: a full backup (the
	// newest backup's snapshot lies above it, so no changes lead from it;
	// before, the backup failed).
	res, err := r.BackupVolume(ctx, m, "vol-a", "s1", backupd.BackupOptions{})
	if err != nil {
		t.Fatalf("backup of s1 after s5's: %v", err)
	}
	if res.Manifest.Parent != "" {
		t.Fatalf("backup of s1 after s5's has parent %q, want a full backup", res.Manifest.Parent)
	}
	backupd.MustEqual(t, "s1 restored again", restoreInto(t, m, r, res.ManifestKey, "r-s1-again", size), readAll(t, device(t, m, "vol-a@s1")))
}

// TestRestoreOverExisting restores into an existing volume full of other
// data (not known to be zero): zero chunks are trimmed, the result is
// bit-exact and the zero ranges hold no data afterwards.
func TestRestoreOverExisting(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	const size = 16 * mib
	m := openManager(t, t.TempDir())
	r := backupd.Open(backupd.NewFSTarget(t, t.TempDir()), nil)
	rng := rand.New(rand.NewPCG(111, 112))
	if _, err := m.Create(ctx, "vol-a", size); err != nil {
		t.Fatal(err)
	}
	write(t, device(t, m, "vol-a"), backupd.RandomData(rng, 4*mib), 6*mib)
	snapshot(t, m, "vol-a", "s1")
	res, err := r.BackupVolume(ctx, m, "vol-a", "s1", backupd.BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, "existing", size); err != nil {
		t.Fatal(err)
	}
	dst := device(t, m, "existing")
	write(t, dst, backupd.RandomData(rng, size), 0)
	if _, err := r.Restore(ctx, res.ManifestKey, backupd.VolumeDestination{V: dst}, backupd.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	backupd.MustEqual(t, "restored over existing data", readAll(t, dst), readAll(t, device(t, m, "vol-a@s1")))
	exts, err := dst.Extents(ctx, 0, size)
	if err != nil {
		t.Fatal(err)
	}
	var data int64
	for _, e := range exts {
		if e.Kind == blockdev.ExtentData {
			data += e.Length
		}
	}
	if data != 4*mib {
		t.Errorf("restored volume holds %d bytes of data extents, want %d (zero chunks trimmed)", data, 4*mib)
	}
}

// VolumeDigest of a volume equals the digest of its backup exactly while
// it holds the backup's data, sparse ranges and a short last chunk
// included.
func TestVolumeDigest(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	const size = 8*mib + 4096 // the last chunk is half a chunk
	m := openManager(t, t.TempDir())
	r := backupd.Open(backupd.NewFSTarget(t, t.TempDir()), nil)
	rng := rand.New(rand.NewPCG(131, 132))
	if _, err := m.Create(ctx, "vol-a", size); err != nil {
		t.Fatal(err)
	}
	v := device(t, m, "vol-a")
	write(t, v, backupd.RandomData(rng, 2*mib), 3*mib)
	write(t, v, backupd.RandomData(rng, 4096), size-4096)
	snapshot(t, m, "vol-a", "s1")
	res, err := r.BackupVolume(ctx, m, "vol-a", "s1", backupd.BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		write func()
		same  bool
	}{
		{"as backed up", func() {}, true},
		{"one byte changed", func() { write(t, v, []byte{1}, 4096) }, false},
	} {
		tc.write()
		got, err := backupd.VolumeDigest(ctx, v, backupd.ChunkSize)
		if err != nil {
			t.Fatal(err)
		}
		if (got == res.Digest) != tc.same {
			t.Errorf("%s: digest %s, backup's %s, want equal: %v", tc.name, got, res.Digest, tc.same)
		}
	}
}

// manifestGetFault fails the Gets of one manifest key with err.
type manifestGetFault struct {
	plugins.Target
	key string
	err error
}

func (f *manifestGetFault) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, int64, error) {
	if key == f.key {
		return nil, 0, fmt.Errorf("injected: get %s: %w", key, f.err)
	}
	return f.Target.Get(ctx, key, off, n)
}

// TestBackupVolumeParentUnreadable: when the volume's backups cannot be
// listed whole (a manifest's Get fails with a transient error),
// BackupVolume fails with that error instead of taking a full backup as if
// the volume had none.
func TestBackupVolumeParentUnreadable(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	const size = 4 * mib
	m := openManager(t, t.TempDir())
	ft := &manifestGetFault{Target: backupd.NewFSTarget(t, t.TempDir())}
	r := backupd.Open(ft, nil)
	if _, err := m.Create(ctx, "vol-a", size); err != nil {
		t.Fatal(err)
	}
	write(t, device(t, m, "vol-a"), backupd.RandomData(rand.New(rand.NewPCG(75, 76)), size), 0)
	snapshot(t, m, "vol-a", "s1")
	first, err := r.BackupVolume(ctx, m, "vol-a", "s1", backupd.BackupOptions{})
	if err != nil {
		t.Fatal(err)
	}
	snapshot(t, m, "vol-a", "s2")
	ft.key, ft.err = first.ManifestKey, fmt.Errorf("connection reset: %w", plugins.ErrTransient)
	res, err := r.BackupVolume(ctx, m, "vol-a", "s2", backupd.BackupOptions{})
	if !errors.Is(err, plugins.ErrTransient) {
		scanned := int64(-1)
		if res != nil {
			scanned = res.BytesScanned
		}
		t.Fatalf("BackupVolume with the parent unreadable = %v (scanned %d bytes); want the target's error", err, scanned)
	}
}

// TestBackupVolumeClockStepBack: when the clock stepped back between two
// snapshots (the lower one in the chain has the later creation time),
// backing up the lower one after the upper one's backup is a full backup.
// Before, creation times ordered them, changes were asked for from the
// upper to the lower snapshot, and every backup of it failed.
func TestBackupVolumeClockStepBack(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	const size = 4 * mib
	dir := t.TempDir()
	m, err := blockdev.OpenManager(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Create(ctx, "vol-a", size); err != nil {
		t.Fatal(err)
	}
	v, rel, err := m.Open(ctx, "vol-a")
	if err != nil {
		t.Fatal(err)
	}
	write(t, v, bytes.Repeat([]byte{1}, size), 0)
	snapshot(t, m, "vol-a", "x")
	write(t, v, bytes.Repeat([]byte{2}, 4096), 0)
	snapshot(t, m, "vol-a", "y")
	rel()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	// x, below y, gets a creation time an hour after y's.
	metaPath := filepath.Join(dir, "volumes", "vol-a.meta")
	b, err := os.ReadFile(metaPath)
	if err != nil {
		t.Fatal(err)
	}
	var meta map[string]any
	if err := json.Unmarshal(b[:bytes.IndexByte(b, '\n')], &meta); err != nil {
		t.Fatal(err)
	}
	layers := meta["layers"].([]any)
	ty, err := time.Parse(time.RFC3339Nano, layers[1].(map[string]any)["created"].(string))
	if err != nil {
		t.Fatal(err)
	}
	layers[0].(map[string]any)["created"] = ty.Add(time.Hour).Format(time.RFC3339Nano)
	js, err := json.Marshal(meta)
	if err != nil {
		t.Fatal(err)
	}
	js = append(js, '\n')
	if err := os.WriteFile(metaPath, fmt.Appendf(js, "xxh64=%016x\n", xxhash.Sum64(js)), 0o600); err != nil {
		t.Fatal(err)
	}

	m = openManager(t, dir)
	r := backupd.Open(backupd.NewFSTarget(t, t.TempDir()), nil)
	if _, err := r.BackupVolume(ctx, m, "vol-a", "y", backupd.BackupOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err := r.BackupVolume(ctx, m, "vol-a", "x", backupd.BackupOptions{})
	if err != nil {
		t.Fatalf("backup of x after y's, x created later by the clock: %v", err)
	}
	if res.Manifest.Parent != "" {
		t.Errorf("backup of x has parent %q, want a full backup", res.Manifest.Parent)
	}
	backupd.MustEqual(t, "x restored", restoreInto(t, m, r, res.ManifestKey, "r-x", size), readAll(t, device(t, m, "vol-a@x")))
}
