package backupd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/strata-block/strata/plugins"
)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	rng := rand.New(rand.NewPCG(1, 2))
	sparse := make([]byte, 24*mib)
	for i := 0; i < len(sparse); i += 3 * mib {
		copy(sparse[i:], RandomData(rng, 64<<10))
	}
	text := bytes.Repeat([]byte("strata block storage backup "), (8*mib)/28+1)[:8*mib]
	tests := []struct {
		name      string
		data      []byte
		holes     []Extent
		encrypted bool
		zeroed    bool
	}{
		{name: "random", data: RandomData(rng, 16*mib)},
		{name: "random-encrypted", data: RandomData(rng, 6*mib), encrypted: true},
		{name: "sparse", data: sparse, holes: []Extent{{Offset: 4 * mib, Length: 2 * mib}, {Offset: 20 * mib, Length: 4 * mib}}},
		{name: "sparse-dest-zeroed", data: sparse, zeroed: true},
		{name: "all-zero", data: make([]byte, 32*mib)},
		{name: "all-zero-encrypted", data: make([]byte, 4*mib), encrypted: true},
		{name: "compressible", data: text},
		{name: "odd-size", data: RandomData(rng, 2*mib+4096)},
		{name: "one-block", data: RandomData(rng, 4096), encrypted: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.data = bytes.Clone(tc.data)
			// holes must read as zeros
			for _, h := range tc.holes {
				clear(tc.data[h.Offset : h.Offset+h.Length])
			}
			tg := NewFSTarget(t, t.TempDir())
			opts := &Options{Logger: testLogger(t), PackSize: 1 << 20}
			if tc.encrypted {
				opts.Key = testKey(t)
			}
			r := Open(tg, opts)
			res, err := r.Backup(t.Context(), BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: &memSource{data: tc.data, holes: tc.holes}})
			if err != nil {
				t.Fatalf("Backup: %v", err)
			}
			if res.BytesScanned > int64(len(tc.data)) {
				t.Errorf("scanned %d > size %d", res.BytesScanned, len(tc.data))
			}
			got, _, err := restoreAll(t, r, res.ManifestKey, int64(len(tc.data)), RestoreOptions{DestZeroed: tc.zeroed})
			if err != nil {
				t.Fatalf("Restore: %v", err)
			}
			MustEqual(t, "restored volume", got, tc.data)
			// Into a dirty destination: zeros must be written.
			d := &memDest{data: bytes.Repeat([]byte{0xee}, len(tc.data))}
			if _, err := r.Restore(t.Context(), res.ManifestKey, d, RestoreOptions{}); err != nil {
				t.Fatalf("Restore into a dirty destination: %v", err)
			}
			MustEqual(t, "restored over garbage", d.data, tc.data)
			if rep, err := r.Verify(t.Context(), nil, VerifyOptions{ReadData: true}); err != nil || !rep.OK() {
				t.Fatalf("Verify: %v %+v", err, rep)
			}
			// The digest does not depend on how zeros were found.
			res2, err := r.Backup(t.Context(), BackupOptions{Volume: "vol-a", Snapshot: "s2", Source: &memSource{data: tc.data}})
			if err != nil {
				t.Fatal(err)
			}
			if res2.Digest != res.Digest {
				t.Errorf("digest with holes %s, without %s", res.Digest, res2.Digest)
			}
			if res2.ChunksNew != 0 {
				t.Errorf("second backup of the same data stored %d new chunks", res2.ChunksNew)
			}
		})
	}
}

func TestRestoreWrongKey(t *testing.T) {
	t.Parallel()
	tg := NewFSTarget(t, t.TempDir())
	data := RandomData(rand.New(rand.NewPCG(3, 4)), 1<<20)
	r := Open(tg, &Options{Key: testKey(t)})
	res, err := r.Backup(t.Context(), BackupOptions{Volume: "v", Snapshot: "s", Source: &memSource{data: data}})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := NewKey(bytes.Repeat([]byte{9}, KeySize))
	for name, k := range map[string]*Key{"none": nil, "other": other} {
		_, _, err := restoreAll(t, Open(tg, &Options{Key: k}), res.ManifestKey, int64(len(data)), RestoreOptions{})
		if !errors.Is(err, ErrKey) {
			t.Errorf("%s key: Restore = %v, want ErrKey", name, err)
		}
	}
}

// TestKeyedRepoRefusesUnencrypted: a repository opened with a key refuses
// to restore or verify an unencrypted backup unless AllowUnencrypted.
// Before, anyone able to write to the target could plant an unencrypted
// manifest, pages and pack of chosen data that restore wrote as good.
func TestKeyedRepoRefusesUnencrypted(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	tg := NewFSTarget(t, t.TempDir())
	data := RandomData(rand.New(rand.NewPCG(5, 6)), 1<<20)
	res, err := Open(tg, nil).Backup(ctx, BackupOptions{Volume: "v", Snapshot: "s", Source: &memSource{data: data}})
	if err != nil {
		t.Fatal(err)
	}
	keyed := Open(tg, &Options{Key: testKey(t)})
	if _, _, err := restoreAll(t, keyed, res.ManifestKey, int64(len(data)), RestoreOptions{}); !errors.Is(err, ErrKey) {
		t.Errorf("Restore of an unencrypted backup with a key: %v, want ErrKey", err)
	}
	if rep, err := keyed.Verify(ctx, []string{res.ManifestKey}, VerifyOptions{ReadData: true}); err == nil || rep.OK() {
		t.Errorf("Verify of an unencrypted backup with a key: %+v, %v; want it bad", rep, err)
	}
	allowing := Open(tg, &Options{Key: testKey(t), AllowUnencrypted: true})
	got, _, err := restoreAll(t, allowing, res.ManifestKey, int64(len(data)), RestoreOptions{})
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("Restore with AllowUnencrypted: %v (equal %v)", err, bytes.Equal(got, data))
	}
}

// TestProgress checks the events of a backup and a restore: counters never
// go back, the phases come in order and the last event is PhaseDone with
// the totals.
func TestProgress(t *testing.T) {
	t.Parallel()
	data := RandomData(rand.New(rand.NewPCG(81, 82)), 8<<20)
	r := Open(NewFSTarget(t, t.TempDir()), &Options{PackSize: 1 << 20})
	order := map[Phase]int{PhaseIndex: 0, PhaseScan: 1, PhaseFlush: 2, PhaseManifest: 3, PhaseRestore: 1, PhaseDone: 4}
	check := func(what string, evs []Progress, total int64) {
		t.Helper()
		if len(evs) < 3 {
			t.Fatalf("%s: %d events", what, len(evs))
		}
		for i := 1; i < len(evs); i++ {
			a, b := evs[i-1], evs[i]
			if order[b.Phase] < order[a.Phase] || b.BytesScanned < a.BytesScanned || b.BytesUploaded < a.BytesUploaded || b.BytesWritten < a.BytesWritten || b.Position < a.Position {
				t.Fatalf("%s: event %d %+v goes back from %+v", what, i, b, a)
			}
		}
		last := evs[len(evs)-1]
		if last.Phase != PhaseDone || last.BytesTotal != total || last.Position != total {
			t.Fatalf("%s: last event %+v", what, last)
		}
	}
	var evs []Progress
	res, err := r.Backup(t.Context(), BackupOptions{Volume: "v", Snapshot: "s", Source: &memSource{data: data}, Progress: func(p Progress) { evs = append(evs, p) }})
	if err != nil {
		t.Fatal(err)
	}
	check("backup", evs, int64(len(data)))
	if last := evs[len(evs)-1]; last.BytesScanned != int64(len(data)) || last.BytesUploaded < int64(len(data)) {
		t.Errorf("backup: last event %+v", last)
	}
	evs = nil
	if _, err := r.Restore(t.Context(), res.ManifestKey, &memDest{data: make([]byte, len(data))}, RestoreOptions{Progress: func(p Progress) { evs = append(evs, p) }}); err != nil {
		t.Fatal(err)
	}
	check("restore", evs, int64(len(data)))
	if last := evs[len(evs)-1]; last.BytesWritten != int64(len(data)) {
		t.Errorf("restore: last event %+v", last)
	}

	// An incremental of one changed block and the restore of a sparse
	// volume into a zeroed one scan and write little, yet their position
	// goes through the whole volume: a progress bar ends full. Before,
	// bars drew bytes scanned or written against the volume's size.
	evs = nil
	copy(data[4096:8192], RandomData(rand.New(rand.NewPCG(83, 84)), 4096))
	if _, err := r.Backup(t.Context(), BackupOptions{Volume: "v", Snapshot: "s2", Source: &memSource{data: data}, Parent: res.ID,
		Changed: []Extent{{Offset: 4096, Length: 4096}}, Progress: func(p Progress) { evs = append(evs, p) }}); err != nil {
		t.Fatal(err)
	}
	check("incremental", evs, int64(len(data)))
	sparse := make([]byte, len(data))
	copy(sparse[1<<20:], data[:8192])
	res, err = r.Backup(t.Context(), BackupOptions{Volume: "w", Snapshot: "s", Source: &memSource{data: sparse}})
	if err != nil {
		t.Fatal(err)
	}
	evs = nil
	if _, err := r.Restore(t.Context(), res.ManifestKey, &memDest{data: make([]byte, len(data))}, RestoreOptions{DestZeroed: true, Progress: func(p Progress) { evs = append(evs, p) }}); err != nil {
		t.Fatal(err)
	}
	check("sparse restore", evs, int64(len(data)))
}

// TestIncrementalResize takes incrementals across size changes (grow to a
// size that is not a multiple of the chunk size, then shrink): chunks
// past the parent's end are read even though no extent reports them.
func TestIncrementalResize(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(91, 92))
	r := Open(NewFSTarget(t, t.TempDir()), nil)
	data := RandomData(rng, 4<<20)
	parent, err := r.Backup(t.Context(), BackupOptions{Volume: "v", Snapshot: "s0", Source: &memSource{data: data}})
	if err != nil {
		t.Fatal(err)
	}
	for i, size := range []int{6<<20 + 4096, 6<<20 + 8192, 3<<20 + 4096, 3 << 20} {
		grown := make([]byte, size)
		copy(grown, data)
		if size > len(data) {
			copy(grown[len(data):], RandomData(rng, size-len(data)))
		}
		copy(grown[4096:], RandomData(rng, 4096))
		res, err := r.Backup(t.Context(), BackupOptions{Volume: "v", Snapshot: "s" + string(rune('1'+i)), Source: &memSource{data: grown},
			Parent: parent.ID, Changed: []Extent{{Offset: 4096, Length: 4096}}})
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		got, _, err := restoreAll(t, r, res.ManifestKey, int64(size), RestoreOptions{})
		if err != nil {
			t.Fatalf("size %d: restore: %v", size, err)
		}
		MustEqual(t, "resized volume", got, grown)
		full, err := r.Backup(t.Context(), BackupOptions{Volume: "v", Snapshot: "full", Source: &memSource{data: grown}})
		if err != nil {
			t.Fatal(err)
		}
		if full.Digest != res.Digest {
			t.Errorf("size %d: incremental digest %s, full %s", size, res.Digest, full.Digest)
		}
		data, parent = grown, res
	}
}

// getCounter counts Gets of pack indexes.
type getCounter struct {
	plugins.Target
	indexGets atomic.Int64
}

func (g *getCounter) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, int64, error) {
	if strings.HasPrefix(key, prefixIndex) {
		g.indexGets.Add(1)
	}
	return g.Target.Get(ctx, key, off, n)
}

// TestIndexCache checks that with a cache directory a run fetches only the
// pack indexes it has not seen, that a damaged cache entry is fetched
// again, and that FindBackup finds a backup by id.
func TestIndexCache(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	tg := &getCounter{Target: NewFSTarget(t, t.TempDir())}
	cache := t.TempDir()
	r := Open(tg, &Options{PackSize: 256 << 10, CacheDir: cache})
	rng := rand.New(rand.NewPCG(131, 132))
	first, err := r.Backup(ctx, BackupOptions{Volume: "v", Snapshot: "s1", Source: &memSource{data: RandomData(rng, 4<<20)}})
	if err != nil {
		t.Fatal(err)
	}
	packs := len(SortedKeys(t, tg, prefixIndex))
	if packs < 10 {
		t.Fatalf("only %d packs", packs)
	}
	tg.indexGets.Store(0)
	if _, err := r.Backup(ctx, BackupOptions{Volume: "w", Snapshot: "s1", Source: &memSource{data: RandomData(rng, 1<<20)}}); err != nil {
		t.Fatal(err)
	}
	if n := tg.indexGets.Load(); n != 0 {
		t.Errorf("second run fetched %d indexes, all were cached", n)
	}
	ents, err := os.ReadDir(filepath.Join(cache, "index"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cache, "index", ents[0].Name()), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	tg.indexGets.Store(0)
	if _, _, err := restoreAll(t, r, first.ManifestKey, 4<<20, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := tg.indexGets.Load(); n != 1 {
		t.Errorf("restore fetched %d indexes, want 1 (the damaged cache entry)", n)
	}
	key, err := r.FindBackup(ctx, first.ID)
	if err != nil || key != first.ManifestKey {
		t.Errorf("FindBackup = %q, %v; want %s", key, err, first.ManifestKey)
	}
}

// TestVerifyProgress: verify --read-data's progress events carry the bytes
// it will read (BytesTotal), so a progress bar has an end; they were 0,
// and the CLI showed no bar for the longest operation there is.
func TestVerifyProgress(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := Open(NewFSTarget(t, t.TempDir()), &Options{PackSize: 1 << 20})
	res, err := r.Backup(ctx, BackupOptions{Volume: "v", Snapshot: "s", Source: &memSource{data: RandomData(rand.New(rand.NewPCG(7, 8)), 4<<20)}})
	if err != nil {
		t.Fatal(err)
	}
	var evs []Progress
	var mu sync.Mutex
	rep, err := r.Verify(ctx, []string{res.ManifestKey}, VerifyOptions{ReadData: true, Progress: func(p Progress) {
		mu.Lock()
		evs = append(evs, p)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) == 0 {
		t.Fatal("no progress events")
	}
	for _, ev := range evs {
		if ev.BytesTotal != rep.BytesRead {
			t.Fatalf("verify progress: total %d, want the %d bytes verify read", ev.BytesTotal, rep.BytesRead)
		}
	}
}
