package backupd

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/plugins"
)

// flipRecordBit flips one bit inside the payload of the chunk record at
// loc in pack file file.
func flipRecordBit(t *testing.T, file string, loc chunkLoc) {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	raw[int(loc.offset)+recordHeaderSize+100] ^= 0x10
	if err := os.WriteFile(file, raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// chunkLocation returns the pack file and record of the first data chunk
// of backup key.
func chunkLocation(t *testing.T, r *Repository, dir, key string) (ChunkID, string, chunkLoc) {
	t.Helper()
	ctx := context.Background()
	m, err := r.LoadManifest(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := r.keyFor(m)
	p, err := r.loadPage(ctx, m, k, 0)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := r.loadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range p.IDs[3:] {
		if !id.IsZero() {
			loc := idx.chunks[id]
			return id, filepath.Join(dir, packKey(idx.packs[loc.pack])), loc
		}
	}
	t.Fatal("no data chunk in page 0")
	return ChunkID{}, "", chunkLoc{}
}

// TestFlippedBit flips one bit of a stored chunk: Verify with ReadData and
// Restore fail naming the chunk and the volume, Verify names every backup
// affected, a backup that does not share the chunk still restores, and
// SkipDamaged restores everything else and reports the damaged range.
func TestFlippedBit(t *testing.T) {
	t.Parallel()
	for _, encrypted := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "encrypted"}[encrypted], func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			dir := t.TempDir()
			tg := NewFSTarget(t, dir)
			opts := &Options{Logger: testLogger(t), PackSize: 256 << 10}
			if encrypted {
				opts.Key = testKey(t)
			}
			r := Open(tg, opts)
			rng := rand.New(rand.NewPCG(21, 22))
			a := RandomData(rng, 4<<20)
			b := RandomData(rng, 4<<20)
			resA, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: a}})
			if err != nil {
				t.Fatal(err)
			}
			// A second backup of vol-a shares every chunk.
			resA2, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s2", Parent: resA.ID, Changed: []Extent{}, Source: &memSource{data: a}})
			if err != nil {
				t.Fatal(err)
			}
			resB, err := r.Backup(ctx, BackupOptions{Volume: "vol-b", Snapshot: "s1", Source: &memSource{data: b}})
			if err != nil {
				t.Fatal(err)
			}
			id, file, loc := chunkLocation(t, r, dir, resA.ManifestKey)
			flipRecordBit(t, file, loc)

			if rep, err := r.Verify(ctx, nil, VerifyOptions{}); err != nil || !rep.OK() {
				t.Errorf("Verify without data: %v (a flipped bit is found only by reading)", err)
			}
			rep, err := r.Verify(ctx, nil, VerifyOptions{ReadData: true})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Verify(ReadData) = %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), id.String()) || !strings.Contains(err.Error(), "vol-a") {
				t.Errorf("Verify error does not name chunk %s and vol-a: %v", id, err)
			}
			if len(rep.BadChunks) != 1 || rep.BadChunks[0].ID != id.String() {
				t.Fatalf("bad chunks %+v, want only %s", rep.BadChunks, id)
			}
			got := map[string]bool{}
			for _, br := range rep.BadChunks[0].Backups {
				got[br.Volume+"/"+br.ID] = true
			}
			if len(got) != 2 || !got["vol-a/"+resA.ID] || !got["vol-a/"+resA2.ID] {
				t.Errorf("affected backups %v, want both backups of vol-a", got)
			}

			_, _, err = restoreAll(t, r, resA.ManifestKey, int64(len(a)), RestoreOptions{})
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), id.String()) || !strings.Contains(err.Error(), `"vol-a"`) {
				t.Errorf("Restore of the damaged backup = %v, want ErrCorrupt naming chunk %s and vol-a", err, id)
			}
			gotB, _, err := restoreAll(t, r, resB.ManifestKey, int64(len(b)), RestoreOptions{})
			if err != nil {
				t.Fatalf("Restore of vol-b, which does not share the chunk: %v", err)
			}
			MustEqual(t, "vol-b", gotB, b)

			gotA, res, err := restoreAll(t, r, resA2.ManifestKey, int64(len(a)), RestoreOptions{SkipDamaged: true})
			if !errors.Is(err, ErrCorrupt) || res == nil || len(res.Damaged) != 1 || res.Damaged[0].Chunk != id.String() {
				t.Fatalf("SkipDamaged restore = %v, %+v; want one damaged range for chunk %s", err, res, id)
			}
			d := res.Damaged[0]
			copy(gotA[d.Offset:d.Offset+d.Length], a[d.Offset:d.Offset+d.Length])
			MustEqual(t, "vol-a outside the damaged range", gotA, a)

			// A full re-upload heals the store: every backup restores and
			// verifies again.
			if _, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s3", Full: true, Parent: resA2.ID, Source: &memSource{data: a}}); err != nil {
				t.Fatalf("healing full backup: %v", err)
			}
			if rep, err := r.Verify(ctx, nil, VerifyOptions{ReadData: true}); err != nil || !rep.OK() {
				t.Fatalf("Verify after healing: %v", err)
			}
			healed, _, err := restoreAll(t, r, resA.ManifestKey, int64(len(a)), RestoreOptions{})
			if err != nil {
				t.Fatalf("Restore after healing: %v", err)
			}
			MustEqual(t, "vol-a after healing", healed, a)
		})
	}
}

// TestMissingPack deletes a pack: Verify without reading data reports its
// chunks missing (ErrMissing) with the backup, restore fails naming the
// volume, and a Full backup heals both.
func TestMissingPack(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	tg := NewFSTarget(t, dir)
	r := Open(tg, &Options{PackSize: 256 << 10})
	data := RandomData(rand.New(rand.NewPCG(141, 142)), 2<<20)
	res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: data}})
	if err != nil {
		t.Fatal(err)
	}
	id, file, _ := chunkLocation(t, r, dir, res.ManifestKey)
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Verify(ctx, nil, VerifyOptions{})
	if !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "vol-a") {
		t.Fatalf("Verify = %v, want ErrMissing naming vol-a", err)
	}
	found := false
	for _, b := range rep.BadChunks {
		found = found || (b.ID == id.String() && b.Missing && len(b.Backups) == 1 && b.Backups[0].ID == res.ID)
	}
	if !found {
		t.Errorf("chunk %s not reported missing for backup %s: %+v", id, res.ID, rep.BadChunks)
	}
	if _, _, err := restoreAll(t, r, res.ManifestKey, int64(len(data)), RestoreOptions{}); !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), `"vol-a"`) {
		t.Errorf("Restore = %v, want ErrMissing naming vol-a", err)
	} else if pack := strings.TrimSuffix(filepath.Base(file), filepath.Ext(file)); strings.Count(err.Error(), "pack "+pack) != 1 {
		t.Errorf("Restore = %v, want it to name pack %s once", err, pack)
	}
	if _, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s2", Full: true, Source: &memSource{data: data}}); err != nil {
		t.Fatal(err)
	}
	if rep, err := r.Verify(ctx, nil, VerifyOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Fatalf("Verify after healing: %v", err)
	}
	got, _, err := restoreAll(t, r, res.ManifestKey, int64(len(data)), RestoreOptions{})
	if err != nil {
		t.Fatalf("Restore after healing: %v", err)
	}
	MustEqual(t, "healed", got, data)
}

// failingTarget fails every Put of a key with prefix after the first
// allow ones.
type failingTarget struct {
	plugins.Target
	prefix string
	allow  atomic.Int64
}

func (f *failingTarget) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if strings.HasPrefix(key, f.prefix) && f.allow.Add(-1) < 0 {
		return fmt.Errorf("injected failure for %s: %w", key, plugins.ErrTransient)
	}
	return f.Target.Put(ctx, key, r, size)
}

// TestUploadFailure: a failing pack, index or page upload fails the
// backup with the target's error and no manifest is written.
func TestUploadFailure(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		prefix string
		allow  int64
	}{{prefixPacks, 3}, {prefixIndex, 3}, {prefixMaps, 0}} {
		t.Run(strings.TrimSuffix(tc.prefix, "/"), func(t *testing.T) {
			t.Parallel()
			ft := &failingTarget{Target: NewFSTarget(t, t.TempDir()), prefix: tc.prefix}
			ft.allow.Store(tc.allow)
			r := Open(ft, &Options{PackSize: 128 << 10})
			data := RandomData(rand.New(rand.NewPCG(151, 152)), 4<<20)
			_, err := r.Backup(t.Context(), BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: data}})
			if !errors.Is(err, plugins.ErrTransient) || !strings.Contains(err.Error(), "vol-a") {
				t.Fatalf("Backup = %v, want the injected error naming the volume", err)
			}
			if keys := SortedKeys(t, ft, prefixBackups); len(keys) != 0 {
				t.Fatalf("manifests %v after a failed backup", keys)
			}
		})
	}
}

// rewrite replaces the file at path with fn of its content.
func rewrite(t *testing.T, path string, fn func([]byte) []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, fn(b), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestDamage damages one object of vol-a's backup in each way a disk or a
// hostile target can: Verify reports it, restoring vol-a fails with a
// clear error naming the volume, and vol-b's backup still restores.
func TestDamage(t *testing.T) {
	t.Parallel()
	type damage func(t *testing.T, dir string, r *Repository, key string)
	page0 := func(t *testing.T, r *Repository, key string) string {
		m, err := r.LoadManifest(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := ParseChunkID(m.Pages[0])
		return pageKey(id)
	}
	tests := []struct {
		name    string
		damage  damage
		wantErr error
	}{
		{name: "truncated-pack", wantErr: ErrCorrupt, damage: func(t *testing.T, dir string, r *Repository, key string) {
			_, file, loc := chunkLocation(t, r, dir, key)
			rewrite(t, file, func(b []byte) []byte { return b[:loc.offset+10] })
		}},
		{name: "garbage-index", wantErr: ErrMissing, damage: func(t *testing.T, dir string, r *Repository, key string) {
			_, file, _ := chunkLocation(t, r, dir, key)
			pack := filepath.Base(file)
			rewrite(t, filepath.Join(dir, "index", pack), func(b []byte) []byte { b[50] ^= 1; return b })
		}},
		{name: "flipped-map-page", wantErr: ErrCorrupt, damage: func(t *testing.T, dir string, r *Repository, key string) {
			rewrite(t, filepath.Join(dir, page0(t, r, key)), func(b []byte) []byte { b[40] ^= 1; return b })
		}},
		{name: "missing-map-page", wantErr: ErrMissing, damage: func(t *testing.T, dir string, r *Repository, key string) {
			if err := os.Remove(filepath.Join(dir, page0(t, r, key))); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "edited-manifest", wantErr: ErrCorrupt, damage: func(t *testing.T, dir string, r *Repository, key string) {
			rewrite(t, filepath.Join(dir, key), func(b []byte) []byte {
				return []byte(strings.Replace(string(b), `"size": `, `"size": 1`, 1))
			})
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			dir := t.TempDir()
			r := Open(NewFSTarget(t, dir), &Options{PackSize: 256 << 10})
			rng := rand.New(rand.NewPCG(161, 162))
			a, b := RandomData(rng, 3<<20), RandomData(rng, 3<<20)
			resA, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: a}})
			if err != nil {
				t.Fatal(err)
			}
			resB, err := r.Backup(ctx, BackupOptions{Volume: "vol-b", Snapshot: "s1", Source: &memSource{data: b}})
			if err != nil {
				t.Fatal(err)
			}
			tc.damage(t, dir, r, resA.ManifestKey)
			if _, err := r.Verify(ctx, nil, VerifyOptions{ReadData: true}); !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrMissing) {
				t.Errorf("Verify = %v, want ErrCorrupt or ErrMissing", err)
			} else {
				t.Logf("Verify: %v", err)
			}
			_, _, err = restoreAll(t, r, resA.ManifestKey, int64(len(a)), RestoreOptions{})
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), "vol-a") {
				t.Errorf("Restore of vol-a = %v, want %v naming vol-a", err, tc.wantErr)
			}
			got, _, err := restoreAll(t, r, resB.ManifestKey, int64(len(b)), RestoreOptions{})
			if err != nil {
				t.Fatalf("Restore of vol-b: %v", err)
			}
			MustEqual(t, "vol-b", got, b)
			if rep, err := r.Verify(ctx, []string{resB.ManifestKey}, VerifyOptions{ReadData: true}); err != nil && len(rep.BadChunks)+len(rep.BadBackups) > 0 {
				t.Errorf("Verify of vol-b alone: %v", err)
			}
		})
	}
}

// TestReadFailureIsNotDamage: a pack Get (or a manifest's, or a map
// page's) that fails because the target does not answer (a transient
// error, a plugin that died) aborts verify and restore with that error; it
// does not report the chunks or the backup bad, and SkipDamaged does not
// skip them as damaged. A pack that is not found is damage: reported
// missing, skipped.
func TestReadFailureIsNotDamage(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		prefix     string // the keys whose Gets fail
		fault      error
		wantDamage bool
	}{
		{name: "transient", prefix: prefixPacks, fault: fmt.Errorf("503 slow down: %w", plugins.ErrTransient)},
		{name: "plugin-died", prefix: prefixPacks, fault: fmt.Errorf("plugin exited: %w", plugins.ErrClosed)},
		{name: "not-found", prefix: prefixPacks, fault: fmt.Errorf("no such pack: %w", plugins.ErrNotFound), wantDamage: true},
		{name: "transient-manifest", prefix: prefixBackups, fault: fmt.Errorf("503 slow down: %w", plugins.ErrTransient)},
		{name: "transient-page", prefix: prefixMaps, fault: fmt.Errorf("503 slow down: %w", plugins.ErrTransient)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			ft := &faultTarget{Target: NewFSTarget(t, t.TempDir())}
			r := Open(ft, &Options{PackSize: 256 << 10, Logger: testLogger(t)})
			data := RandomData(rand.New(rand.NewPCG(171, 172)), 1<<20)
			res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: data}})
			if err != nil {
				t.Fatal(err)
			}
			ft.failGet(keyPrefix(tc.prefix, tc.fault))

			rep, err := r.Verify(ctx, nil, VerifyOptions{ReadData: true})
			if tc.wantDamage {
				if !errors.Is(err, ErrMissing) || rep == nil || len(rep.BadChunks) == 0 {
					t.Errorf("Verify = %v; want the chunks reported missing", err)
				}
			} else if !errors.Is(err, tc.fault) || rep != nil {
				t.Errorf("Verify = %v, report %+v; want the target's error and no chunk or backup reported bad", err, rep)
			}

			_, rres, err := restoreAll(t, r, res.ManifestKey, int64(len(data)), RestoreOptions{SkipDamaged: true})
			if tc.wantDamage {
				if !errors.Is(err, ErrCorrupt) || rres == nil || len(rres.Damaged) == 0 {
					t.Errorf("Restore(SkipDamaged) = %v; want the chunks skipped as damaged", err)
				}
				return
			}
			if !errors.Is(err, tc.fault) || errors.Is(err, ErrCorrupt) || rres != nil || !strings.Contains(err.Error(), `"vol-a"`) {
				n := 0
				if rres != nil {
					n = len(rres.Damaged)
				}
				t.Errorf("Restore(SkipDamaged) = %v with %d damaged ranges; want the target's error naming vol-a, nothing skipped", err, n)
			}
		})
	}
}

// TestRestoreStateKeepsDamagedWindow: with StatePath and SkipDamaged, a
// window with a skipped chunk is not recorded as restored: a rerun
// restores it again (and reports the damage again, or restores it once
// the store is healed) instead of skipping it and reporting success. The
// windows before it are resumed.
func TestRestoreStateKeepsDamagedWindow(t *testing.T) {
	t.Parallel()
	// Two windows of restoreWindowChunks chunks (pages of 1024: 4 pages
	// each), the second one partial.
	const size = (restoreWindowChunks + 1024) * ChunkSize
	tests := []struct {
		name        string
		chunk       int64 // the damaged chunk
		wantResumed int   // pages the rerun skips
	}{
		{name: "first-window", chunk: 5, wantResumed: 0},
		{name: "second-window", chunk: restoreWindowChunks + 5, wantResumed: restoreWindowChunks / 1024},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			dir := t.TempDir()
			r := Open(NewFSTarget(t, dir), &Options{Logger: testLogger(t)})
			data := RandomData(rand.New(rand.NewPCG(173, 174)), size)
			res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: data}})
			if err != nil {
				t.Fatal(err)
			}
			if res.Manifest.PageChunks != 1024 {
				t.Fatalf("page of %d chunks, the test assumes 1024", res.Manifest.PageChunks)
			}
			// Flip a bit of the chunk's record.
			idx, err := r.loadIndex(ctx)
			if err != nil {
				t.Fatal(err)
			}
			loc, ok := idx.chunks[ChunkID(sha256.Sum256(data[tc.chunk*ChunkSize:(tc.chunk+1)*ChunkSize]))]
			if !ok {
				t.Fatal("chunk not in the index")
			}
			flipRecordBit(t, filepath.Join(dir, packKey(idx.packs[loc.pack])), loc)
			state := filepath.Join(t.TempDir(), "state")
			opts := RestoreOptions{StatePath: state, SkipDamaged: true}
			for run := range 2 {
				_, rr, err := restoreAll(t, r, res.ManifestKey, size, opts)
				if !errors.Is(err, ErrCorrupt) || rr == nil || len(rr.Damaged) != 1 || rr.Damaged[0].Offset != tc.chunk*ChunkSize {
					t.Fatalf("restore run %d = %v, %+v; want the damaged chunk at %d reported", run, err, rr, tc.chunk*ChunkSize)
				}
				if want := []int{0, tc.wantResumed}[run]; rr.Resumed != want {
					t.Errorf("restore run %d resumed %d pages, want %d", run, rr.Resumed, want)
				}
			}
		})
	}
}

// TestVerifyChecksDigest: verify fails a backup whose map pages, each
// intact, do not give the manifest's digest (here two pages swapped in
// the manifest's list). Before, verify passed it and only restore found
// the mismatch.
func TestVerifyChecksDigest(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	r := Open(NewFSTarget(t, dir), nil)
	data := RandomData(rand.New(rand.NewPCG(181, 182)), 20<<20) // three map pages of 8 MiB
	res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s", Source: &memSource{data: data}})
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := r.Verify(ctx, []string{res.ManifestKey}, VerifyOptions{}); err != nil || !rep.OK() {
		t.Fatalf("verify of an intact backup: %+v, %v", rep, err)
	}
	p := filepath.Join(dir, res.ManifestKey)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	pages := m["pages"].([]any)
	pages[0], pages[1] = pages[1], pages[0]
	if b, err = json.Marshal(m); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Verify(ctx, []string{res.ManifestKey}, VerifyOptions{ReadData: true})
	if !errors.Is(err, ErrMismatch) || len(rep.BadBackups) != 1 {
		t.Fatalf("verify of a backup with swapped pages: %+v, %v; want one bad backup, ErrMismatch", rep, err)
	}
	if _, _, err := restoreAll(t, r, res.ManifestKey, int64(len(data)), RestoreOptions{}); !errors.Is(err, ErrMismatch) {
		t.Errorf("restore of a backup with swapped pages: %v, want ErrMismatch", err)
	}
}

// hangingTarget blocks every Put of a key with prefix until its context
// ends: a target (or plugin) that stopped answering.
type hangingTarget struct {
	plugins.Target
	prefix string
}

func (h *hangingTarget) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if strings.HasPrefix(key, h.prefix) {
		<-ctx.Done()
		return ctx.Err()
	}
	return h.Target.Put(ctx, key, r, size)
}

// TestBackupStopsPastMaxDuration: a backup whose upload hangs is stopped
// soon after its MaxDuration, past which it could not commit anyway, with
// ErrTooSlow. Before, it waited for as long as its caller's context (a
// detached backup's: for good), holding its volume.
func TestBackupStopsPastMaxDuration(t *testing.T) {
	t.Parallel()
	tg := &hangingTarget{Target: NewFSTarget(t, t.TempDir()), prefix: "packs/"}
	r := Open(tg, &Options{Logger: testLogger(t)})
	const maxDur = 200 * time.Millisecond
	done := make(chan error, 1)
	go func() {
		_, err := r.Backup(context.Background(), BackupOptions{Volume: "vol", Snapshot: "s", Source: &memSource{data: RandomData(rand.New(rand.NewPCG(1, 2)), 1<<20)}, MaxDuration: maxDur})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrTooSlow) {
			t.Fatalf("backup with a hung upload: %v, want ErrTooSlow", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("backup with a hung upload still running 30 s after its MaxDuration of 200 ms")
	}
	if ms, err := r.ListManifests(t.Context(), ""); err != nil || len(ms.Backups)+len(ms.Skipped) != 0 {
		t.Errorf("manifests after the stopped backup: %+v, %v; want none", ms, err)
	}
}

// TestVerifyReadsIndexesFromTarget: with an index cache that holds a good
// copy, a pack index damaged on the target still fails verify, and the
// cached copy is dropped (backups stop deduplicating against the pack).
// Before, verify read the cached copy and passed a backup that no other
// host, and no restore after this one's loss, could restore.
func TestVerifyReadsIndexesFromTarget(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir, cache := t.TempDir(), t.TempDir()
	r := Open(NewFSTarget(t, dir), &Options{PackSize: 256 << 10, CacheDir: cache})
	data := RandomData(rand.New(rand.NewPCG(7, 8)), 1<<20)
	res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: data}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Verify(ctx, nil, VerifyOptions{}); err != nil {
		t.Fatal(err) // fills the cache
	}
	_, file, _ := chunkLocation(t, r, dir, res.ManifestKey)
	pack := filepath.Base(file)
	if _, err := os.Stat(filepath.Join(cache, "index", pack)); err != nil {
		t.Fatalf("the index of pack %s is not cached: %v", pack, err)
	}
	rewrite(t, filepath.Join(dir, "index", pack), func(b []byte) []byte { b[50] ^= 1; return b })
	rep, err := r.Verify(ctx, nil, VerifyOptions{ReadData: true})
	if err == nil || rep.OK() {
		t.Fatalf("verify with the index of pack %s damaged on the target: %v, %+v; want it to fail", pack, err, rep)
	}
	if _, err := os.Stat(filepath.Join(cache, "index", pack)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cached copy of the damaged index is still there: %v", err)
	}
}

// TestVerifyProgressOneAtATime: Verify calls its Progress from one
// goroutine at a time, as ProgressFunc promises (the service's progress
// writer keeps unlocked state). Before, each range's worker called it.
func TestVerifyProgressOneAtATime(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := Open(NewFSTarget(t, t.TempDir()), &Options{PackSize: 64 << 10})
	data := RandomData(rand.New(rand.NewPCG(9, 10)), 2<<20)
	if _, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: data}}); err != nil {
		t.Fatal(err)
	}
	var in, calls, overlaps atomic.Int64
	progress := func(Progress) {
		calls.Add(1)
		if in.Add(1) != 1 {
			overlaps.Add(1)
		}
		time.Sleep(time.Millisecond)
		in.Add(-1)
	}
	if _, err := r.Verify(ctx, nil, VerifyOptions{ReadData: true, Parallel: 4, Progress: progress}); err != nil {
		t.Fatal(err)
	}
	if calls.Load() < 4 || overlaps.Load() != 0 {
		t.Errorf("%d progress calls, %d while another ran; want several and none", calls.Load(), overlaps.Load())
	}
}

// slowGetTarget holds the Gets of one key until gate is closed (at most
// 20 s); slowed is closed once such a Get has been let through.
type slowGetTarget struct {
	plugins.Target
	key    string
	gate   chan struct{}
	slowed chan struct{}
	once   sync.Once
}

func (s *slowGetTarget) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, int64, error) {
	if key == s.key {
		select {
		case <-s.gate:
		case <-time.After(20 * time.Second):
		}
		s.once.Do(func() { close(s.slowed) })
	}
	return s.Target.Get(ctx, key, off, n)
}

// flushWaitsDest is a memDest whose first Flush opens the slow Get (so a
// later window fails while the flush runs), waits a while after it and
// then, as a volume's flush does, fails if its context has ended.
type flushWaitsDest struct {
	*memDest
	slow *slowGetTarget
	once *sync.Once
}

func (d flushWaitsDest) Flush(ctx context.Context) error {
	d.once.Do(func() { close(d.slow.gate) })
	<-d.slow.slowed
	time.Sleep(300 * time.Millisecond)
	return ctx.Err()
}

// TestRestoreDamageNamedDuringFlush: a damaged chunk found in a later
// window while an earlier one's flush runs (a resumable restore flushes
// each window before recording it) fails the restore with the chunk's
// error, and the earlier window, restored whole, is still recorded in the
// state file for a rerun. Before, the flush's "context canceled" was
// returned instead, naming neither the chunk nor the damage; and then the
// flush, cancelled with the restore, recorded nothing.
func TestRestoreDamageNamedDuringFlush(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	slow := &slowGetTarget{Target: NewFSTarget(t, dir), gate: make(chan struct{}), slowed: make(chan struct{})}
	r := Open(slow, nil)
	const size = 64 << 20 // two windows of restoreWindowChunks
	data := RandomData(rand.New(rand.NewPCG(11, 12)), size)
	res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: data}})
	if err != nil {
		t.Fatal(err)
	}
	// Damage the last chunk of the second window, whose pack is read only
	// once the first window is done and flushing: the damage is found
	// then.
	m, err := r.LoadManifest(ctx, res.ManifestKey)
	if err != nil {
		t.Fatal(err)
	}
	k, _ := r.keyFor(m)
	p, err := r.loadPage(ctx, m, k, len(m.Pages)-1)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := r.loadIndex(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := p.IDs[len(p.IDs)-1]
	loc := idx.chunks[id]
	flipRecordBit(t, filepath.Join(dir, packKey(idx.packs[loc.pack])), loc)
	slow.key = packKey(idx.packs[loc.pack])

	state := filepath.Join(t.TempDir(), "state")
	_, err = r.Restore(ctx, res.ManifestKey, flushWaitsDest{&memDest{data: make([]byte, size)}, slow, new(sync.Once)}, RestoreOptions{StatePath: state})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), id.String()) {
		t.Fatalf("restore with chunk %s damaged: %v, want ErrCorrupt naming the chunk", id, err)
	}
	if key, pages, err := RestoreStateOf(state); err != nil || key != res.ManifestKey || pages != restoreWindowChunks/m.PageChunks {
		t.Fatalf("state file after the failure: %q, %d pages, %v; want the first window recorded", key, pages, err)
	}
}

// TestVerifyUnrelatedBadIndex: a pack index that does not decode, which
// the verified backup does not need, is reported (BadIndexes) but does not
// fail verify. Before, one such index (a deleted backup's pack, which GC
// keeps since its index cannot be read) failed every verify of every
// backup on the target, for good, and blamed the backup verified.
func TestVerifyUnrelatedBadIndex(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	dir := t.TempDir()
	r := Open(NewFSTarget(t, dir), &Options{PackSize: 256 << 10})
	rng := rand.New(rand.NewPCG(13, 14))
	resA, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: RandomData(rng, 1<<20)}})
	if err != nil {
		t.Fatal(err)
	}
	resB, err := r.Backup(ctx, BackupOptions{Volume: "vol-b", Snapshot: "s1", Source: &memSource{data: RandomData(rng, 1<<20)}})
	if err != nil {
		t.Fatal(err)
	}
	_, file, _ := chunkLocation(t, r, dir, resA.ManifestKey)
	rewrite(t, filepath.Join(dir, "index", filepath.Base(file)), func(b []byte) []byte { b[50] ^= 1; return b })
	if err := r.Delete(ctx, "vol-a", resA.ID); err != nil {
		t.Fatal(err)
	}
	rep, err := r.Verify(ctx, []string{resB.ManifestKey}, VerifyOptions{ReadData: true})
	if err != nil || !rep.OK() || len(rep.BadIndexes) != 1 {
		t.Fatalf("verify of vol-b next to an undecodable index of vol-a's deleted backup: %v, %+v; want OK with the index reported", err, rep)
	}
}

// TestRestoreResumeChecksRestored: a restore resumed from its state file
// reads back the chunks the file records as restored and restores again
// those the destination no longer holds (written to since the kill: a
// changed chunk, a zero chunk no longer zero), so the result is bit-exact
// even with DestZeroed; the intact ones are not fetched again. Before, a
// resumed restore skipped those pages unread and left the changes.
func TestRestoreResumeChecksRestored(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	const size = restoreWindowChunks*ChunkSize + 1<<20 // two windows
	r := Open(NewFSTarget(t, t.TempDir()), &Options{Logger: testLogger(t)})
	data := RandomData(rand.New(rand.NewPCG(191, 192)), size)
	clear(data[40*ChunkSize : 48*ChunkSize]) // zero chunks in the first window
	res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: data}})
	if err != nil {
		t.Fatal(err)
	}
	window := restoreWindowChunks / res.Manifest.PageChunks
	state := filepath.Join(t.TempDir(), "state")
	if err := writeRestoreState(state, restoreState{Manifest: res.ManifestKey, Digest: res.Manifest.Digest, PagesDone: window}); err != nil {
		t.Fatal(err)
	}
	// What the killed run left: the first window restored, then two of
	// its chunks written to (one of them a zero chunk); nothing after it.
	d := &memDest{data: make([]byte, size)}
	copy(d.data, data[:restoreWindowChunks*ChunkSize])
	d.data[7*ChunkSize+100] ^= 0xff
	d.data[41*ChunkSize] = 1
	rr, err := r.Restore(ctx, res.ManifestKey, d, RestoreOptions{DestZeroed: true, StatePath: state})
	if err != nil {
		t.Fatalf("resumed restore: %v", err)
	}
	MustEqual(t, "volume after the resumed restore", d.data, data)
	if rr.Resumed != window || rr.Repaired != 2 {
		t.Errorf("resumed %d pages, repaired %d chunks; want %d and 2", rr.Resumed, rr.Repaired, window)
	}
	if rest := int64(size - restoreWindowChunks*ChunkSize); rr.BytesWritten != rest+ChunkSize*2 {
		t.Errorf("wrote %d bytes, want the second window (%d) and the two repaired chunks", rr.BytesWritten, rest)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Errorf("state file after success: %v", err)
	}
}

// repeatSource is a volume of one chunk repeated.
type repeatSource struct {
	chunk []byte
	size  int64
}

func (s repeatSource) Size() int64 { return s.size }

func (s repeatSource) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) && off < s.size {
		c := copy(p[n:min(len(p), n+int(s.size-off))], s.chunk[off%int64(len(s.chunk)):])
		n += c
		off += int64(c)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (s repeatSource) Extents(_ context.Context, off, length int64) ([]Extent, error) {
	return []Extent{{Offset: off, Length: min(length, s.size-off), Kind: blockdev.ExtentData}}, nil
}

// gatedFlushDest checks that every write holds the repeated chunk and
// holds its first Flush until the restore has written mark bytes (or
// gives up after a while and fails it).
type gatedFlushDest struct {
	chunk   []byte
	size    int64
	mark    int64
	written atomic.Int64
	flushes atomic.Int32
}

func (d *gatedFlushDest) Size() int64 { return d.size }

func (d *gatedFlushDest) WriteAt(_ context.Context, p []byte, off int64) (int, error) {
	cs := int64(len(d.chunk))
	if off%cs != 0 || int64(len(p))%cs != 0 || off+int64(len(p)) > d.size {
		return 0, fmt.Errorf("write %d+%d: not whole chunks within %d", off, len(p), d.size)
	}
	for i := 0; i < len(p); i += len(d.chunk) {
		if !bytes.Equal(p[i:i+len(d.chunk)], d.chunk) {
			return 0, fmt.Errorf("write %d+%d: chunk at %d differs", off, len(p), off+int64(i))
		}
	}
	d.written.Add(int64(len(p)))
	return len(p), nil
}

func (d *gatedFlushDest) Flush(context.Context) error {
	if d.flushes.Add(1) > 1 {
		return nil
	}
	deadline := time.Now().Add(20 * time.Second)
	for d.written.Load() < d.mark {
		if time.Now().After(deadline) {
			return fmt.Errorf("held flush: %d bytes written while it ran, waited for %d", d.written.Load(), d.mark)
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// TestRestoreGoesOnDuringFlush: while a window's flush runs (a resumable
// restore flushes each window before recording it in its state file), the
// next windows are restored, past the restoreWindows that were running
// when it began. Before, the restore stopped at every flush, so a durable
// restore took the disk's time after the CPU's instead of beside it; here
// the first flush waits for writes only windows launched after it began
// make.
func TestRestoreGoesOnDuringFlush(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := Open(NewFSTarget(t, t.TempDir()), nil)
	const window = restoreWindowChunks * ChunkSize
	const size = (restoreWindows + 3) * window
	// One chunk repeated: a small backup, and a restore that still
	// writes every chunk.
	chunk := RandomData(rand.New(rand.NewPCG(21, 22)), ChunkSize)
	res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: repeatSource{chunk: chunk, size: size}})
	if err != nil {
		t.Fatal(err)
	}
	// The first flush comes once window 0 is restored, with windows 1 to
	// restoreWindows-1 running: it waits until two windows more have
	// been written.
	dst := &gatedFlushDest{chunk: chunk, size: size, mark: (restoreWindows + 2) * window}
	if _, err := r.Restore(ctx, res.ManifestKey, dst, RestoreOptions{StatePath: filepath.Join(t.TempDir(), "state")}); err != nil {
		t.Fatal(err)
	}
	if n := dst.written.Load(); n != size {
		t.Errorf("%d bytes written, want %d", n, int64(size))
	}
	if n := dst.flushes.Load(); n < 2 {
		t.Errorf("%d flushes, want one per window and the last", n)
	}
}
