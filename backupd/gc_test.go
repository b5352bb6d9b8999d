package backupd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/strata-block/strata/plugins"
)

// TestGCConcurrentBackups runs backups of several volumes (incremental,
// sharing chunks across volumes and rounds), a pruner and two GCs at the
// same time (the lease lets one run at a time), over many rounds, on one fake clock that only GC advances. Every
// acknowledged backup that retention did not delete must restore bit-exact
// and verify with data at the end: GC never deleted anything one
// references. GC must also have deleted something, or the test proves
// nothing.
func TestGCConcurrentBackups(t *testing.T) {
	t.Parallel()
	const (
		volumes  = 3
		rounds   = 25
		size     = 1 << 20
		poolSize = 48
		// On the fake clock, which each GC round moves on by tickEvery:
		// a backup may span 3 rounds, a mark is swept 7 rounds later.
		tickEvery = 5 * time.Minute
		maxDur    = 3 * tickEvery
		grace     = maxDur + graceMargin + tickEvery
		keepLast  = 2
	)
	ctx := t.Context()
	tg := NewFSTarget(t, t.TempDir())
	r := Open(tg, &Options{PackSize: 64 << 10, Uploads: 2, Logger: testLogger(t)})
	var clockNS atomic.Int64
	clockNS.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	// Every reading is a nanosecond later, so backups of one volume have
	// distinct creation times and retention keeps the newest.
	clock := func() time.Time { return time.Unix(0, clockNS.Add(1)) }

	// A pool of chunk contents shared by every volume, so packs hold
	// chunks of many backups.
	rng := rand.New(rand.NewPCG(31, 32))
	pool := make([][]byte, poolSize)
	for i := range pool {
		pool[i] = RandomData(rng, ChunkSize)
	}
	type acked struct {
		key  string
		data []byte
	}
	var mu sync.Mutex
	var all []acked
	var tooSlow, parentGone atomic.Int64
	var wg sync.WaitGroup
	done := make(chan struct{})
	for v := range volumes {
		wg.Go(func() {
			vr := rand.New(rand.NewPCG(uint64(v), 99))
			vol := "vol-" + string(rune('a'+v))
			data := make([]byte, size)
			var changed []Extent
			parent := ""
			for round := range rounds {
				for range 1 + vr.IntN(20) {
					c := vr.IntN(size / ChunkSize)
					if vr.IntN(4) == 0 {
						copy(data[c*ChunkSize:], RandomData(vr, ChunkSize)) // unique
					} else {
						copy(data[c*ChunkSize:], pool[vr.IntN(poolSize)])
					}
					changed = append(changed, Extent{Offset: int64(c * ChunkSize), Length: ChunkSize})
				}
				opts := BackupOptions{Volume: vol, Snapshot: "s", Source: &memSource{data: append([]byte(nil), data...)},
					MaxDuration: maxDur, Now: clock}
				if parent != "" && round%5 != 0 {
					opts.Parent, opts.Changed = parent, changed
				}
				res, err := r.Backup(ctx, opts)
				switch {
				case errors.Is(err, ErrTooSlow):
					tooSlow.Add(1)
					continue
				case errors.Is(err, plugins.ErrNotFound) && opts.Parent != "":
					parentGone.Add(1) // pruned meanwhile: next round is full
					parent = ""
					continue
				case err != nil:
					t.Errorf("%s round %d: %v", vol, round, err)
					return
				}
				mu.Lock()
				all = append(all, acked{key: res.ManifestKey, data: opts.Source.(*memSource).data})
				mu.Unlock()
				parent, changed = res.ID, nil
			}
		})
	}
	// A second GC runs against the first until the backups are done:
	// the lease lets one of them run at a time, the other fails with
	// ErrBusy.
	var gc2Rounds, gcBusy atomic.Int64
	gc2Done := make(chan struct{})
	go func() {
		defer close(gc2Done)
		for {
			select {
			case <-done:
				return
			default:
			}
			_, err := r.GC(ctx, GCOptions{Grace: grace, MaxDuration: maxDur, Now: clock})
			switch {
			case errors.Is(err, ErrBusy):
				gcBusy.Add(1)
			case err != nil:
				t.Errorf("second GC: %v", err)
				return
			default:
				gc2Rounds.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	var gcRounds, duringBackups int
	var deleted GCReport
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		gc := func(busyOK bool) bool {
			clockNS.Add(int64(tickEvery))
			if _, err := r.Prune(ctx, PruneOptions{KeepLast: keepLast}); err != nil {
				t.Errorf("Prune: %v", err)
				return false
			}
			rep, err := r.GC(ctx, GCOptions{Grace: grace, MaxDuration: maxDur, Now: clock})
			// Refused while the second GC runs: try again on the same
			// tick, so that refused rounds do not age the backups.
			for busyOK && errors.Is(err, ErrBusy) {
				gcBusy.Add(1)
				time.Sleep(time.Millisecond)
				rep, err = r.GC(ctx, GCOptions{Grace: grace, MaxDuration: maxDur, Now: clock})
			}
			if err != nil {
				t.Errorf("GC: %v", err)
				return false
			}
			gcRounds++
			deleted.PacksDeleted += rep.PacksDeleted
			deleted.PagesDeleted += rep.PagesDeleted
			deleted.PacksMarked += rep.PacksMarked
			deleted.PacksUnmarked += rep.PacksUnmarked
			return true
		}
		for {
			select {
			case <-done:
				// Let GC catch up, alone: everything unreferenced is
				// swept.
				<-gc2Done
				duringBackups = gcRounds + int(gc2Rounds.Load())
				for range int(grace/tickEvery) + 2 {
					if !gc(false) {
						return
					}
				}
				return
			default:
			}
			if !gc(true) {
				return
			}
		}
	}()
	wg.Wait()
	close(done)
	<-gcDone
	t.Logf("%d GC rounds (and %d of the second GC, %d refused as busy; %d of them while the backups ran): %d packs marked, %d unmarked (referenced again), %d packs and %d pages deleted; %d backups acknowledged, %d too slow, %d parents pruned meanwhile",
		gcRounds, gc2Rounds.Load(), gcBusy.Load(), duringBackups, deleted.PacksMarked, deleted.PacksUnmarked, deleted.PacksDeleted, deleted.PagesDeleted, len(all), tooSlow.Load(), parentGone.Load())
	if t.Failed() {
		return
	}
	if deleted.PacksDeleted == 0 {
		t.Errorf("GC deleted no pack: the test exercised nothing")
	}
	if duringBackups < 5 {
		t.Errorf("only %d GC rounds ran while the backups did", duringBackups)
	}
	live, err := r.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(live) != volumes*keepLast {
		t.Errorf("%d backups listed after pruning, want %d", len(live), volumes*keepLast)
	}
	liveKeys := map[string]bool{}
	for _, b := range live {
		liveKeys[b.Key] = true
	}
	checked := 0
	for _, a := range all {
		if !liveKeys[a.key] {
			continue
		}
		got, _, err := restoreAll(t, r, a.key, size, RestoreOptions{})
		if err != nil {
			t.Errorf("restore of acknowledged, unpruned backup %s: %v", a.key, err)
			continue
		}
		MustEqual(t, a.key, got, a.data)
		checked++
	}
	if checked != len(live) {
		t.Errorf("checked %d of %d live backups", checked, len(live))
	}
	if rep, err := r.Verify(ctx, nil, VerifyOptions{ReadData: true}); err != nil || !rep.OK() {
		t.Errorf("Verify after GC: %v", err)
	}
}

// The deadline and grace of the deterministic GC protocol tests.
const (
	protocolMaxDuration = 3 * time.Second
	protocolGrace       = protocolMaxDuration + graceMargin + 5*time.Second
)

// gcClock returns a fake clock for r's backups and GC, a function that
// moves it on, and one that runs GC with grace on it.
func gcClock(t *testing.T, r *Repository, grace time.Duration) (clock func() time.Time, advance func(time.Duration), gc func() *GCReport) {
	var ns atomic.Int64
	ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	clock = func() time.Time { return time.Unix(0, ns.Load()) }
	advance = func(d time.Duration) { ns.Add(int64(d)) }
	gc = func() *GCReport {
		t.Helper()
		rep, err := r.GC(t.Context(), GCOptions{Grace: grace, MaxDuration: protocolMaxDuration, Now: clock})
		if err != nil {
			t.Fatalf("GC: %v", err)
		}
		return rep
	}
	return clock, advance, gc
}

// gatedSource blocks its first ReadAt until release is closed, after
// closing reached: the backup has loaded the chunk index by then.
type gatedSource struct {
	*memSource
	once    sync.Once
	reached chan struct{}
	release chan struct{}
}

func (g *gatedSource) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	g.once.Do(func() {
		close(g.reached)
		<-g.release
	})
	return g.memSource.ReadAt(ctx, p, off)
}

// TestGCProtocol reproduces, deterministically, the two races the GC
// protocol closes (FORMAT.md, "Garbage collection"), with a backup held
// still after loading its index while GC marks and sweeps:
//
//   - seen-mark: the backup starts after GC marked the packs of a deleted
//     backup holding the same data. It must not dedup against them (they
//     are swept before it writes its manifest) and must restore.
//   - before-mark: the backup loaded its index before the mark, so it
//     dedups, and is held past the grace period; it must fail with
//     ErrTooSlow and write no manifest rather than reference swept packs.
func TestGCProtocol(t *testing.T) {
	t.Parallel()
	const maxDur, grace = protocolMaxDuration, protocolGrace
	tests := []struct {
		name string
		// advance before the backup loads its index, between that and
		// the second GC, and whether the backup must succeed.
		beforeBackup time.Duration
		markAfter    bool // GC marks after the backup loaded its index
		wantErr      error
	}{
		{name: "seen-mark", beforeBackup: grace - time.Second},
		{name: "before-mark", markAfter: true, wantErr: ErrTooSlow},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			tg := NewFSTarget(t, t.TempDir())
			r := Open(tg, &Options{PackSize: 64 << 10, Logger: testLogger(t)})
			clock, advance, gc := gcClock(t, r, grace)
			data := RandomData(rand.New(rand.NewPCG(41, 42)), 512<<10)
			old, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s0", Source: &memSource{data: data}, MaxDuration: maxDur, Now: clock})
			if err != nil {
				t.Fatal(err)
			}
			if err := r.Delete(ctx, "vol-a", old.ID); err != nil {
				t.Fatal(err)
			}
			if !tc.markAfter {
				if rep := gc(); rep.PacksMarked == 0 {
					t.Fatalf("GC marked nothing: %+v", rep)
				}
				advance(tc.beforeBackup)
			}
			src := &gatedSource{memSource: &memSource{data: data}, reached: make(chan struct{}), release: make(chan struct{})}
			type result struct {
				res *Result
				err error
			}
			out := make(chan result, 1)
			go func() {
				res, err := r.Backup(ctx, BackupOptions{Volume: "vol-b", Snapshot: "s1", Source: src, MaxDuration: maxDur, Now: clock})
				out <- result{res, err}
			}()
			<-src.reached
			if tc.markAfter {
				advance(time.Second)
				if rep := gc(); rep.PacksMarked == 0 {
					t.Fatalf("GC marked nothing: %+v", rep)
				}
				advance(grace)
			} else {
				advance(grace - tc.beforeBackup)
			}
			if rep := gc(); rep.PacksDeleted == 0 {
				t.Fatalf("GC swept nothing: %+v", rep)
			}
			close(src.release)
			got := <-out
			if tc.wantErr != nil {
				if !errors.Is(got.err, tc.wantErr) {
					t.Fatalf("Backup = %v, want %v", got.err, tc.wantErr)
				}
				if keys := SortedKeys(t, tg, "backups/"); len(keys) != 0 {
					t.Fatalf("manifests %v exist after a failed backup", keys)
				}
				return
			}
			if got.err != nil {
				t.Fatalf("Backup: %v", got.err)
			}
			restored, _, err := restoreAll(t, r, got.res.ManifestKey, int64(len(data)), RestoreOptions{})
			if err != nil {
				t.Fatalf("Restore after GC swept the old packs: %v", err)
			}
			MustEqual(t, "restored", restored, data)
		})
	}
}

// TestPrune checks retention per volume with keep-last and keep-within
// (relative to the newest backup), dry runs, Delete of a missing backup and
// Latest.
func TestPrune(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		opts     PruneOptions
		wantKept map[string]int // per volume: number of newest kept
		wantErr  error
	}{
		{name: "keep-last-2", opts: PruneOptions{KeepLast: 2}, wantKept: map[string]int{"vol-a": 2, "vol-b": 2}},
		{name: "keep-within-2.5d", opts: PruneOptions{KeepWithin: 60 * time.Hour}, wantKept: map[string]int{"vol-a": 3, "vol-b": 3}},
		// The backups are months old: keep-within counts from the newest.
		{name: "keep-within-12h", opts: PruneOptions{KeepWithin: 12 * time.Hour}, wantKept: map[string]int{"vol-a": 1, "vol-b": 1}},
		{name: "both", opts: PruneOptions{KeepLast: 4, KeepWithin: 24 * time.Hour}, wantKept: map[string]int{"vol-a": 4, "vol-b": 4}},
		{name: "one-volume", opts: PruneOptions{Volume: "vol-b", KeepLast: 1}, wantKept: map[string]int{"vol-a": 5, "vol-b": 1}},
		{name: "dry-run", opts: PruneOptions{KeepLast: 1, DryRun: true}, wantKept: map[string]int{"vol-a": 5, "vol-b": 5}},
		{name: "keeps-nothing", opts: PruneOptions{}, wantErr: ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			r := Open(NewFSTarget(t, t.TempDir()), nil)
			data := RandomData(rand.New(rand.NewPCG(121, 122)), 64<<10)
			ids := map[string][]string{}
			for _, vol := range []string{"vol-a", "vol-b"} {
				for day := range 5 {
					now := base.Add(time.Duration(day) * 24 * time.Hour)
					res, err := r.Backup(ctx, BackupOptions{Volume: vol, Snapshot: "s", Source: &memSource{data: data}, Now: func() time.Time { return now }})
					if err != nil {
						t.Fatal(err)
					}
					ids[vol] = append(ids[vol], res.ID)
				}
			}
			_, err := r.Prune(ctx, tc.opts)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Prune = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for vol, n := range tc.wantKept {
				left, err := r.List(ctx, vol)
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, b := range left {
					got = append(got, b.ID)
				}
				if want := ids[vol][5-n:]; !slices.Equal(got, want) {
					t.Errorf("%s: kept %v, want the newest %d %v", vol, got, n, want)
				}
				latest, err := r.Latest(ctx, vol)
				if err != nil || latest.ID != ids[vol][4] {
					t.Errorf("%s: Latest = %v, %v; want %s", vol, latest.ID, err, ids[vol][4])
				}
			}
		})
	}
	r := Open(NewFSTarget(t, t.TempDir()), nil)
	if err := r.Delete(t.Context(), "vol-a", "0123456789abcdef0123456789abcdef"); !errors.Is(err, plugins.ErrNotFound) {
		t.Errorf("Delete of a missing backup = %v, want ErrNotFound", err)
	}
	if _, err := r.Latest(t.Context(), "vol-a"); !errors.Is(err, plugins.ErrNotFound) {
		t.Errorf("Latest with no backup = %v, want ErrNotFound", err)
	}
}

// TestHeldBackups checks that a backup a system backup holds (TagSystem)
// survives Prune and Delete, and that DeleteHeld removes it.
func TestHeldBackups(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	r := Open(NewFSTarget(t, t.TempDir()), nil)
	data := RandomData(rand.New(rand.NewPCG(7, 8)), 64<<10)
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var ids []string
	for i, tags := range []map[string]string{{TagSystem: "s1", TagToken: "1"}, nil, nil} {
		now := base.Add(time.Duration(i) * time.Hour)
		res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s", Source: &memSource{data: data}, Tags: tags, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.ID)
	}
	if err := r.Delete(ctx, "vol-a", ids[0]); !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "s1") {
		t.Fatalf("Delete of a held backup = %v, want ErrHeld naming system backup s1", err)
	}
	pr, err := r.Prune(ctx, PruneOptions{KeepLast: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(pr.Held) != 1 || pr.Held[0].ID != ids[0] || len(pr.Deleted) != 1 || pr.Deleted[0].ID != ids[1] {
		t.Fatalf("Prune held %v deleted %v; want held %s, deleted %s", pr.Held, pr.Deleted, ids[0], ids[1])
	}
	if err := r.DeleteHeld(ctx, "vol-a", ids[0]); err != nil {
		t.Fatalf("DeleteHeld: %v", err)
	}
	left, err := r.List(ctx, "vol-a")
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 1 || left[0].ID != ids[2] {
		t.Fatalf("left %v, want only %s", left, ids[2])
	}
}

// gate holds an operation until release is closed (or its context ends),
// after closing reached.
type gate struct {
	once    sync.Once
	reached chan struct{}
	release chan struct{}
}

func newGate() *gate { return &gate{reached: make(chan struct{}), release: make(chan struct{})} }

func (g *gate) wait(ctx context.Context) error {
	g.once.Do(func() { close(g.reached) })
	select {
	case <-g.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// gateTarget injects the timing faults of a real target that a test cannot
// provoke: it holds the first Put (or PutIfAbsent) of a key under a prefix,
// or the first List of a prefix, at a gate; and it hides keys from List (a
// listing that lags).
type gateTarget struct {
	plugins.Target
	mu    sync.Mutex
	puts  map[string]*gate // by key prefix, each used once
	lists map[string]*gate // by List prefix, each used once
	hide  func(key string) bool
}

func newGateTarget(t *testing.T) *gateTarget {
	return &gateTarget{Target: NewFSTarget(t, t.TempDir()), puts: map[string]*gate{}, lists: map[string]*gate{}}
}

// holdPut arms a gate for the next Put of a key under prefix.
func (g *gateTarget) holdPut(prefix string) *gate { return g.arm(g.puts, prefix) }

// holdList arms a gate for the next List of prefix.
func (g *gateTarget) holdList(prefix string) *gate { return g.arm(g.lists, prefix) }

func (g *gateTarget) arm(m map[string]*gate, prefix string) *gate {
	g.mu.Lock()
	defer g.mu.Unlock()
	gt := newGate()
	m[prefix] = gt
	return gt
}

func (g *gateTarget) setHide(f func(key string) bool) {
	g.mu.Lock()
	g.hide = f
	g.mu.Unlock()
}

func (g *gateTarget) take(m map[string]*gate, key string, exact bool) *gate {
	g.mu.Lock()
	defer g.mu.Unlock()
	for p, gt := range m {
		if key == p || (!exact && strings.HasPrefix(key, p)) {
			delete(m, p)
			return gt
		}
	}
	return nil
}

func (g *gateTarget) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if gt := g.take(g.puts, key, false); gt != nil {
		if err := gt.wait(ctx); err != nil {
			return err
		}
	}
	return g.Target.Put(ctx, key, r, size)
}

func (g *gateTarget) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	if gt := g.take(g.puts, key, false); gt != nil {
		if err := gt.wait(ctx); err != nil {
			return err
		}
	}
	return g.Target.PutIfAbsent(ctx, key, r, size)
}

func (g *gateTarget) List(ctx context.Context, prefix, startAfter string) iter.Seq2[plugins.ObjectInfo, error] {
	return func(yield func(plugins.ObjectInfo, error) bool) {
		if gt := g.take(g.lists, prefix, true); gt != nil {
			if err := gt.wait(ctx); err != nil {
				yield(plugins.ObjectInfo{}, err)
				return
			}
		}
		for o, err := range g.Target.List(ctx, prefix, startAfter) {
			g.mu.Lock()
			hidden := err == nil && g.hide != nil && g.hide(o.Key)
			g.mu.Unlock()
			if hidden {
				continue
			}
			if !yield(o, err) {
				return
			}
		}
	}
}

// onePackRepo returns a gate target, a repository on it, and random data
// (from seed) that a backup stores with exactly one pack and one index
// Put: one upload at a time, and one pack's worth of data.
func onePackRepo(t *testing.T, seed uint64) (*gateTarget, *Repository, []byte) {
	tg := newGateTarget(t)
	r := Open(tg, &Options{PackSize: 64 << 10, Uploads: 1, Logger: testLogger(t)})
	return tg, r, RandomData(rand.New(rand.NewPCG(seed, seed+1)), 32<<10)
}

// TestGCLateWrites reproduces, deterministically, the writes of a backup
// that overran its deadline landing after GC swept what they name (the
// target held them while GC marked and swept):
//
//   - late-index: a pack's index is Put after GC swept the pack. The
//     backup fails with ErrTooSlow, but the index remains: the next backup
//     of the same data must not dedup against it (it must restore), and
//     GC must delete the index.
//   - late-manifest: a backup that deduplicated against a deleted
//     backup's packs starts its manifest Put in time, but the Put returns
//     after GC swept those packs. The backup must fail with ErrTooSlow and
//     leave no manifest.
func TestGCLateWrites(t *testing.T) {
	t.Parallel()
	const maxDur, grace = protocolMaxDuration, protocolGrace
	tests := []struct {
		name string
		hold string // key prefix whose Puts are held
		// old: a deleted backup of the same data exists first, so the
		// held backup dedups against its packs.
		old bool
	}{
		{name: "late-index", hold: prefixIndex},
		{name: "late-manifest", hold: prefixBackups, old: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			tg, r, data := onePackRepo(t, 51)
			clock, advance, gc := gcClock(t, r, grace)
			backup := func(vol string) (*Result, error) {
				return r.Backup(ctx, BackupOptions{Volume: vol, Snapshot: "s", Source: &memSource{data: data}, MaxDuration: maxDur, Now: clock})
			}
			if tc.old {
				old, err := backup("vol-old")
				if err != nil {
					t.Fatal(err)
				}
				if err := r.Delete(ctx, "vol-old", old.ID); err != nil {
					t.Fatal(err)
				}
			}
			held := tg.holdPut(tc.hold)
			errc := make(chan error, 1)
			go func() {
				_, err := backup("vol-a")
				errc <- err
			}()
			<-held.reached
			advance(time.Second)
			if rep := gc(); rep.PacksMarked == 0 {
				t.Fatalf("GC marked nothing: %+v", rep)
			}
			advance(grace)
			if rep := gc(); rep.PacksDeleted == 0 {
				t.Fatalf("GC swept nothing: %+v", rep)
			}
			close(held.release)
			if err := <-errc; !errors.Is(err, ErrTooSlow) {
				t.Fatalf("held backup = %v, want ErrTooSlow", err)
			}
			if keys := SortedKeys(t, tg, prefixBackups); len(keys) != 0 {
				t.Fatalf("manifests %v exist after the late backup failed", keys)
			}
			if !tc.old {
				idx, packs := SortedKeys(t, tg, prefixIndex), SortedKeys(t, tg, prefixPacks)
				if len(idx) != 1 || len(packs) != 0 {
					t.Fatalf("want one index without its pack, have indexes %v and packs %v", idx, packs)
				}
			}
			res, err := backup("vol-b")
			if err != nil {
				t.Fatalf("backup after the late writes: %v", err)
			}
			if res.ChunksNew == 0 {
				t.Errorf("backup uploaded no chunk: it deduplicated against swept packs")
			}
			got, _, err := restoreAll(t, r, res.ManifestKey, int64(len(data)), RestoreOptions{})
			if err != nil {
				t.Fatalf("restore: %v", err)
			}
			MustEqual(t, "restored", got, data)
			// The orphan index goes in two phases, like a pack.
			orphans := map[bool]int{true: 0, false: 1}[tc.old]
			if rep := gc(); rep.IndexesMarked != orphans || rep.IndexesDeleted != 0 {
				t.Errorf("GC marked %d and deleted %d orphan indexes, want %d marked", rep.IndexesMarked, rep.IndexesDeleted, orphans)
			}
			advance(grace)
			if rep := gc(); rep.IndexesDeleted != orphans {
				t.Errorf("GC deleted %d orphan indexes a grace later, want %d", rep.IndexesDeleted, orphans)
			}
			idx, packs := SortedKeys(t, tg, prefixIndex), SortedKeys(t, tg, prefixPacks)
			if len(idx) != len(packs) {
				t.Errorf("after GC: indexes %v, packs %v", idx, packs)
			}
			if vr, err := r.Verify(ctx, nil, VerifyOptions{ReadData: true}); err != nil || !vr.OK() {
				t.Errorf("Verify: %v", err)
			}
		})
	}
}

// TestGCLease checks that GC runs alone: a GC held mid-run makes a second
// one fail with ErrBusy (leaving no lease of its own), a lease another GC
// renewed recently does too, an abandoned one or one that does not decode
// is removed, each GC removes its own lease when done; and a grace not longer
// than the backups' deadline is refused.
func TestGCLease(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	lease := func(renewed time.Time) []byte {
		return marshalJSON(leaseBody{Host: "other", PID: 7, Taken: renewed, Renewed: renewed})
	}
	tests := []struct {
		name  string
		other []byte // a lease in locks/ before GC runs; nil for none
		// recorded: a backup deadline recorded in the repository
		recorded time.Duration
		opts     GCOptions
		wantErr  error
		left     int // leases left after GC
	}{
		{name: "alone"},
		{name: "fresh", other: lease(now.Add(-time.Minute)), wantErr: ErrBusy, left: 1},
		{name: "abandoned", other: lease(now.Add(-leaseStale - time.Second))},
		{name: "undecodable", other: []byte("{")}, // damage: removed
		{name: "grace-not-longer", opts: GCOptions{Grace: time.Hour, MaxDuration: time.Hour}, wantErr: ErrInvalid},
		// Another host's backups run for up to 4 h: a grace of 3 h is
		// refused though this process's own limit is 1 h.
		{name: "grace-not-longer-than-recorded", recorded: 4 * time.Hour, opts: GCOptions{Grace: 3 * time.Hour, MaxDuration: time.Hour}, wantErr: ErrInvalid},
		{name: "grace-longer-than-recorded", recorded: 4 * time.Hour, opts: GCOptions{Grace: 5 * time.Hour, MaxDuration: time.Hour}},
		{name: "dry-run-takes-none", other: lease(now), opts: GCOptions{DryRun: true}, left: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			tg, r := leaseRepo(t)
			if tc.recorded > 0 {
				if _, err := r.recordMaxDuration(ctx, tc.recorded); err != nil {
					t.Fatal(err)
				}
			}
			if tc.other != nil {
				if err := r.putBytes(ctx, prefixLocks+"gc-0123456789abcdef", tc.other); err != nil {
					t.Fatal(err)
				}
			}
			opts := tc.opts
			opts.Now = func() time.Time { return now }
			_, err := r.GC(ctx, opts)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("GC = %v, want %v", err, tc.wantErr)
			}
			if left := SortedKeys(t, tg, prefixLocks); len(left) != tc.left {
				t.Errorf("leases left: %v, want %d", left, tc.left)
			}
		})
	}
	t.Run("exclusive", func(t *testing.T) {
		t.Parallel()
		tg := newGateTarget(t)
		r := Open(tg, &Options{Logger: testLogger(t)})
		_, _, gc := gcClock(t, r, protocolGrace)
		held := tg.holdList(prefixBackups) // GC lists manifests after taking its lease
		errc := make(chan error, 1)
		go func() {
			_, err := r.GC(t.Context(), GCOptions{Grace: protocolGrace, MaxDuration: protocolMaxDuration})
			errc <- err
		}()
		<-held.reached
		if _, err := r.GC(t.Context(), GCOptions{Grace: protocolGrace, MaxDuration: protocolMaxDuration}); !errors.Is(err, ErrBusy) {
			t.Errorf("second GC while the first runs = %v, want ErrBusy", err)
		}
		if left := SortedKeys(t, tg, prefixLocks); len(left) != 1 {
			t.Errorf("leases while the first GC runs: %v, want its own only", left)
		}
		close(held.release)
		if err := <-errc; err != nil {
			t.Fatalf("first GC: %v", err)
		}
		if left := SortedKeys(t, tg, prefixLocks); len(left) != 0 {
			t.Errorf("leases after GC: %v, want none", left)
		}
		gc() // runs again once the first is done
	})
}

// TestGCLaggingPackListing: a packs/ listing that leaves out a pack (an NFS
// directory cache, a lagging store) makes its index look orphaned. GC must
// only mark it, and keep it while the pack exists, so that the backup that
// references the pack, acknowledged meanwhile, still restores.
func TestGCLaggingPackListing(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	tg, r, data := onePackRepo(t, 61)
	clock, advance, gc := gcClock(t, r, protocolGrace)
	held := tg.holdPut(prefixBackups)
	type result struct {
		res *Result
		err error
	}
	out := make(chan result, 1)
	go func() {
		res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s", Source: &memSource{data: data}, MaxDuration: protocolMaxDuration, Now: clock})
		out <- result{res, err}
	}()
	<-held.reached // the pack and its index are stored, the manifest not yet
	tg.setHide(func(key string) bool { return strings.HasPrefix(key, prefixPacks) })
	advance(time.Second)
	if rep := gc(); rep.IndexesMarked != 1 || rep.IndexesDeleted != 0 {
		t.Fatalf("GC with packs/ hidden: %+v, want one index marked", rep)
	}
	close(held.release)
	got := <-out
	if got.err != nil {
		t.Fatalf("Backup: %v", got.err)
	}
	advance(protocolGrace)
	if rep := gc(); rep.IndexesDeleted != 0 {
		t.Fatalf("GC a grace later, packs/ still hidden: %+v, want the index kept (its pack exists)", rep)
	}
	tg.setHide(nil)
	if rep := gc(); rep.PacksUnmarked != 1 {
		t.Errorf("GC with packs/ listed: %+v, want the pack unmarked (referenced)", rep)
	}
	restored, _, err := restoreAll(t, r, got.res.ManifestKey, int64(len(data)), RestoreOptions{})
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	MustEqual(t, "restored", restored, data)
	if vr, err := r.Verify(ctx, nil, VerifyOptions{ReadData: true}); err != nil || !vr.OK() {
		t.Errorf("Verify: %v", err)
	}
}

// leaseRepo returns an fs target and a repository on it for the lease
// tests.
func leaseRepo(t *testing.T) (*CountingTarget, *Repository) {
	tg := NewFSTarget(t, t.TempDir())
	return tg, Open(tg, &Options{Logger: testLogger(t)})
}

// TestGCLeaseRenew checks the lease's renewal: a renewal keeps it; once
// its last renewal is more than leaseSafe old it is lost for good, even if
// a later renewal succeeds (a stalled Put landing after another GC took it
// as abandoned must not revive it); a lease object that disappeared is
// lost; and a lost lease refuses deletions.
func TestGCLeaseRenew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		age      time.Duration // how long ago the last renewal was sent
		removed  bool          // another GC removed the lease object
		wantLost bool
	}{
		{name: "renewed", age: time.Minute},
		{name: "lapsed", age: leaseSafe + time.Second, wantLost: true},
		{name: "removed", age: time.Minute, removed: true, wantLost: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			tg, r := leaseRepo(t)
			l, err := r.takeGCLease(ctx, time.Now)
			if err != nil {
				t.Fatal(err)
			}
			defer l.release()
			l.mu.Lock()
			l.renewed = time.Now().Add(-tc.age)
			l.mu.Unlock()
			if tc.removed {
				if err := tg.Delete(ctx, []string{l.key}); err != nil {
					t.Fatal(err)
				}
			}
			_ = l.renew(ctx)
			err = l.check()
			if lost := errors.Is(err, ErrLeaseLost); lost != tc.wantLost {
				t.Fatalf("after renewal: check = %v, want lost %v", err, tc.wantLost)
			}
			if !tc.wantLost {
				l.mu.Lock()
				age := time.Since(l.renewed)
				l.mu.Unlock()
				if age > time.Minute {
					t.Errorf("renewal did not count: last renewal %v ago", age)
				}
				return
			}
			// Lost for good: another renewal does not bring it back.
			_ = l.renew(ctx)
			if err := l.check(); !errors.Is(err, ErrLeaseLost) {
				t.Errorf("a renewal revived a lost lease: check = %v", err)
			}
			if err := l.delete(ctx, "maps/00/whatever"); !errors.Is(err, ErrLeaseLost) {
				t.Errorf("delete under a lost lease = %v, want ErrLeaseLost", err)
			}
			if err := l.put(ctx, "gc/maps/whatever", []byte("{}")); !errors.Is(err, ErrLeaseLost) {
				t.Errorf("mark under a lost lease = %v, want ErrLeaseLost", err)
			}
		})
	}
}

// landedTarget makes the manifest's PutIfAbsent land and then return err,
// as a lost reply (err: a transient error) or a client's retry of its own
// conditional Put (err: ErrAlreadyExists) does; ctx, if set, is cancelled
// first (the caller gave up meanwhile).
type landedTarget struct {
	plugins.Target
	err    error
	cancel context.CancelFunc
	// getErr, if set, fails the first Get of the manifest after it
	// landed (the read-back that would confirm it is ours).
	getErr error
	landed atomic.Value // string: the manifest's key
}

func (l *landedTarget) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, int64, error) {
	if l.getErr != nil && l.landed.CompareAndSwap(key, "") {
		return nil, 0, l.getErr
	}
	return l.Target.Get(ctx, key, off, n)
}

func (l *landedTarget) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := l.Target.PutIfAbsent(ctx, key, r, size); err != nil || !strings.HasPrefix(key, prefixBackups) {
		return err
	}
	l.landed.Store(key)
	if l.cancel != nil {
		l.cancel()
	}
	return l.err
}

// TestManifestPutOutcome: a manifest Put that landed but reported
// ErrAlreadyExists (our own retry) is acknowledged, or withdrawn if reading
// it back to confirm that fails; one that landed but reported a failure is
// withdrawn (deleted) even though the caller's context was cancelled
// meanwhile, so no unacknowledged manifest remains.
func TestManifestPutOutcome(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		err           error
		cancel        bool
		getErr        error
		wantErr       error
		wantManifests int
	}{
		{name: "own-retry", err: fmt.Errorf("precondition failed: %w", plugins.ErrAlreadyExists), wantManifests: 1},
		{name: "own-retry-unconfirmed", err: fmt.Errorf("precondition failed: %w", plugins.ErrAlreadyExists),
			getErr: fmt.Errorf("503 slow down: %w", plugins.ErrTransient), wantErr: plugins.ErrTransient},
		{name: "lost-reply", err: fmt.Errorf("connection reset: %w", plugins.ErrTransient), wantErr: plugins.ErrTransient},
		{name: "lost-reply-cancelled", err: fmt.Errorf("connection reset: %w", plugins.ErrTransient), cancel: true, wantErr: plugins.ErrTransient},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			lt := &landedTarget{Target: NewFSTarget(t, t.TempDir()), err: tc.err, getErr: tc.getErr}
			if tc.cancel {
				lt.cancel = cancel
			}
			r := Open(lt, &Options{Logger: testLogger(t)})
			data := RandomData(rand.New(rand.NewPCG(71, 72)), 64<<10)
			res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s", Source: &memSource{data: data}})
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("Backup = %v, want %v", err, tc.wantErr)
			}
			if keys := SortedKeys(t, lt, prefixBackups); len(keys) != tc.wantManifests {
				t.Fatalf("manifests %v, want %d", keys, tc.wantManifests)
			}
			if res != nil {
				got, _, err := restoreAll(t, r, res.ManifestKey, int64(len(data)), RestoreOptions{})
				if err != nil {
					t.Fatal(err)
				}
				MustEqual(t, "restored", got, data)
			}
		})
	}
}

// TestGCRefusesUnreadableBackup: GC does not run when a backup's manifest
// or one of its map pages fails to load (it could not tell what that
// backup references), including a page two manifests share but expect to
// hold different numbers of entries; it marks and deletes nothing.
func TestGCRefusesUnreadableBackup(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		damage func(t *testing.T, r *Repository, m *Manifest)
	}{
		{name: "page-missing", damage: func(t *testing.T, r *Repository, m *Manifest) {
			id, _ := ParseChunkID(m.Pages[0])
			if err := r.t.Delete(t.Context(), []string{pageKey(id)}); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "manifest-corrupt", damage: func(t *testing.T, r *Repository, m *Manifest) {
			if err := r.putBytes(t.Context(), ManifestKey(m.Volume, m.ID), []byte(`{"format":`)); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "shared-page-other-count", damage: func(t *testing.T, r *Repository, m *Manifest) {
			// Another backup naming the same page for a volume twice the
			// size: it expects twice the entries there.
			other := *m
			other.ID, other.Size = newBackupID(), 2*m.Size
			b, err := EncodeManifest(&other)
			if err != nil {
				t.Fatal(err)
			}
			if err := r.putBytes(t.Context(), ManifestKey(other.Volume, other.ID), b); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			tg, r := leaseRepo(t)
			rng := rand.New(rand.NewPCG(91, 92))
			backup := func(vol string) *Result {
				res, err := r.Backup(ctx, BackupOptions{Volume: vol, Snapshot: "s", Source: &memSource{data: RandomData(rng, 64<<10)}})
				if err != nil {
					t.Fatal(err)
				}
				return res
			}
			// Garbage a working GC would mark.
			if err := r.Delete(ctx, "vol-old", backup("vol-old").ID); err != nil {
				t.Fatal(err)
			}
			tc.damage(t, r, backup("vol-a").Manifest)
			before := SortedKeys(t, tg, "")
			_, err := r.GC(ctx, GCOptions{})
			if err == nil || !strings.Contains(err.Error(), "refusing to run") {
				t.Fatalf("GC = %v, want it to refuse to run", err)
			}
			if after := SortedKeys(t, tg, ""); !slices.Equal(after, before) {
				t.Errorf("GC changed the target though it refused: %v, then %v", before, after)
			}
		})
	}
}

// TestPruneFutureBackup: a manifest dated in the future (a host whose
// clock ran ahead, a damaged digit) neither anchors keep-within nor counts
// for keep-last: the real backups are kept as if it were not there, and it
// is kept and reported. One dated within maxClockSkew counts normally.
func TestPruneFutureBackup(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	now := base.Add(4*24*time.Hour + time.Hour) // an hour after the newest real backup
	tests := []struct {
		name       string
		ahead      time.Duration // the extra backup's date, after now
		opts       PruneOptions
		wantKept   int // of the 5 real daily backups, the newest kept
		wantFuture bool
	}{
		{name: "years-ahead-keep-within", ahead: 3 * 365 * 24 * time.Hour, opts: PruneOptions{KeepWithin: 60 * time.Hour}, wantKept: 3, wantFuture: true},
		{name: "years-ahead-keep-last", ahead: 3 * 365 * 24 * time.Hour, opts: PruneOptions{KeepLast: 2}, wantKept: 2, wantFuture: true},
		{name: "hour-ahead", ahead: time.Hour, opts: PruneOptions{KeepWithin: 60 * time.Hour}, wantKept: 3, wantFuture: true},
		// Within the tolerated clock difference: the newest backup, kept
		// by the window counted from now.
		{name: "within-skew", ahead: maxClockSkew / 2, opts: PruneOptions{KeepWithin: 60 * time.Hour}, wantKept: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			r := Open(NewFSTarget(t, t.TempDir()), &Options{Logger: testLogger(t)})
			data := RandomData(rand.New(rand.NewPCG(123, 124)), 64<<10)
			backup := func(at time.Time) string {
				res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s", Source: &memSource{data: data}, Now: func() time.Time { return at }})
				if err != nil {
					t.Fatal(err)
				}
				return res.ID
			}
			var ids []string
			for day := range 5 {
				ids = append(ids, backup(base.Add(time.Duration(day)*24*time.Hour)))
			}
			future := backup(now.Add(tc.ahead))
			opts := tc.opts
			opts.Now = func() time.Time { return now }
			pr, err := r.Prune(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			want := append(slices.Clone(ids[5-tc.wantKept:]), future)
			var got []string
			left, err := r.List(ctx, "vol-a")
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range left {
				got = append(got, b.ID)
			}
			if !slices.Equal(got, want) {
				t.Errorf("left %v, want the newest %d real backups %v and the future one %s", got, tc.wantKept, ids[5-tc.wantKept:], future)
			}
			if gotFuture := len(pr.Future) == 1 && pr.Future[0].ID == future; gotFuture != tc.wantFuture || (!tc.wantFuture && len(pr.Future) != 0) {
				t.Errorf("Future = %+v, want the future backup reported: %v", pr.Future, tc.wantFuture)
			}
			if len(pr.Deleted) != 5-tc.wantKept {
				t.Errorf("Deleted %d, want %d", len(pr.Deleted), 5-tc.wantKept)
			}
		})
	}
}

// TestPruneFailedDelete: a backup whose deletion fails is not reported as
// deleted.
func TestPruneFailedDelete(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	ft := &faultTarget{Target: NewFSTarget(t, t.TempDir())}
	r := Open(ft, &Options{Logger: testLogger(t)})
	keys := hourlyBackups(t, r, 3, 125)
	// Prune deletes newest first: the second newest fails.
	ft.failDelete(keyIs(keys[1], fmt.Errorf("503: %w", plugins.ErrTransient)))
	pr, err := r.Prune(ctx, PruneOptions{KeepLast: 1})
	if !errors.Is(err, plugins.ErrTransient) {
		t.Fatalf("Prune = %v, want the injected error", err)
	}
	for _, b := range pr.Deleted {
		if b.Key == keys[1] {
			t.Errorf("Deleted lists %s, whose deletion failed: %+v", keys[1], pr.Deleted)
		}
	}
	if got := SortedKeys(t, ft, prefixBackups); len(got) != 3 {
		t.Errorf("manifests left %v, want all 3", got)
	}
}

// TestGCGraceFloor: GC refuses a grace not longer than the backups'
// deadline plus the longest a mark's Put may take (leaseSafe) plus the
// clock difference tolerated between hosts (maxClockSkew), whether the
// deadline is its own option or one a backup recorded; the default grace
// is derived from GCOptions.MaxDuration and accepted.
func TestGCGraceFloor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		maxDur   time.Duration // GCOptions.MaxDuration
		grace    time.Duration // GCOptions.Grace (0: default)
		recorded time.Duration // a deadline a backup recorded (0: none)
		margin   time.Duration // GCOptions.Margin (0: default)
		ok       bool
	}{
		{name: "equal", maxDur: time.Hour, grace: time.Hour},
		{name: "a-minute-longer", maxDur: time.Hour, grace: time.Hour + time.Minute},
		{name: "put-latency-only", maxDur: time.Hour, grace: time.Hour + leaseSafe + time.Second},
		{name: "at-the-floor", maxDur: time.Hour, grace: time.Hour + leaseSafe + maxClockSkew},
		{name: "past-the-floor", maxDur: time.Hour, grace: time.Hour + leaseSafe + maxClockSkew + time.Second, ok: true},
		{name: "default-6h", ok: true},
		{name: "default-24h", maxDur: 24 * time.Hour, ok: true}, // 48 h, not 12 h
		{name: "default-10s", maxDur: 10 * time.Second, ok: true},
		{name: "recorded-at-the-floor", maxDur: time.Hour, grace: 4*time.Hour + graceMargin, recorded: 4 * time.Hour},
		{name: "recorded-past-the-floor", maxDur: time.Hour, grace: 4*time.Hour + graceMargin + time.Second, recorded: 4 * time.Hour, ok: true},
		{name: "small-margin-at-the-floor", maxDur: 10 * time.Second, grace: 11 * time.Second, margin: time.Second},
		{name: "small-margin-past-the-floor", maxDur: 10 * time.Second, grace: 12 * time.Second, margin: time.Second, ok: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			_, r := leaseRepo(t)
			if tc.recorded > 0 {
				if _, err := r.recordMaxDuration(ctx, tc.recorded); err != nil {
					t.Fatal(err)
				}
			}
			_, err := r.GC(ctx, GCOptions{Grace: tc.grace, MaxDuration: tc.maxDur, Margin: tc.margin})
			if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalid)) {
				t.Fatalf("GC(max duration %v, grace %v, recorded %v) = %v, want accepted: %v", tc.maxDur, tc.grace, tc.recorded, err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "must be longer than") {
				t.Errorf("error does not name the minimum: %v", err)
			}
		})
	}
}

// TestGCSpuriousNotFound: a pack index or a manifest that was just listed
// but whose Get answers "not found" (a gateway's spurious 404, a plugin
// that misclassifies an error) must not make GC take what it references
// for garbage: the pack is kept, and GC refuses to run without the
// manifest (Has still finds it). The backup restores after GC ran twice,
// a grace apart.
func TestGCSpuriousNotFound(t *testing.T) {
	t.Parallel()
	notFound := fmt.Errorf("404 from a gateway: %w", plugins.ErrNotFound)
	tests := []struct {
		name    string
		fault   func(manifest, index string) func(string) error
		refuses bool
	}{
		{name: "index", fault: func(_, index string) func(string) error { return keyIs(index, notFound) }},
		{name: "manifest", fault: func(manifest, _ string) func(string) error { return keyIs(manifest, notFound) }, refuses: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			ft := &faultTarget{Target: NewFSTarget(t, t.TempDir())}
			r := Open(ft, &Options{PackSize: 64 << 10, Logger: testLogger(t)})
			clock, advance, _ := gcClock(t, r, protocolGrace)
			data := RandomData(rand.New(rand.NewPCG(127, 128)), 32<<10)
			res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s", Source: &memSource{data: data}, MaxDuration: protocolMaxDuration, Now: clock})
			if err != nil {
				t.Fatal(err)
			}
			indexes := SortedKeys(t, ft, prefixIndex)
			if len(indexes) != 1 {
				t.Fatalf("indexes %v, want one", indexes)
			}
			ft.failGet(tc.fault(res.ManifestKey, indexes[0]))
			for range 2 {
				rep, err := r.GC(ctx, GCOptions{Grace: protocolGrace, MaxDuration: protocolMaxDuration, Now: clock})
				if tc.refuses {
					if err == nil || !strings.Contains(err.Error(), "refusing to run") || !strings.Contains(err.Error(), res.ManifestKey) {
						t.Fatalf("GC = %+v, %v; want it to refuse to run, naming %s", rep, err, res.ManifestKey)
					}
				} else if err != nil {
					t.Fatalf("GC: %v", err)
				}
				if rep != nil && (rep.PacksMarked != 0 || rep.PacksDeleted != 0) {
					t.Errorf("GC marked %d and deleted %d packs of a live backup", rep.PacksMarked, rep.PacksDeleted)
				}
				advance(protocolGrace + time.Second)
			}
			ft.failGet(nil)
			if marks := SortedKeys(t, ft, prefixGC); len(marks) != 0 {
				t.Errorf("marks %v of a live backup", marks)
			}
			got, _, err := restoreAll(t, r, res.ManifestKey, int64(len(data)), RestoreOptions{})
			if err != nil {
				t.Fatalf("restore after GC: %v", err)
			}
			MustEqual(t, "restored", got, data)
		})
	}
}

// TestDeleteUnreadableManifest: Delete refuses a manifest that does not
// load (damage, or a newer version's manifest whose tags, perhaps naming a
// system backup, cannot be read) unless forced; DeleteHeld (the
// coordinator's, for a backup its run recorded) and Force delete it.
func TestDeleteUnreadableManifest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		rewrite func(b []byte) []byte
		del     func(r *Repository, ctx context.Context, volume, id string) error
		wantErr error // nil: deleted
	}{
		{name: "newer-version", rewrite: newerManifest, del: (*Repository).Delete, wantErr: ErrCorrupt},
		{name: "garbage", rewrite: func([]byte) []byte { return []byte(`{"format":`) }, del: (*Repository).Delete, wantErr: ErrCorrupt},
		{name: "newer-version-forced", rewrite: newerManifest, del: func(r *Repository, ctx context.Context, volume, id string) error {
			return r.DeleteWith(ctx, volume, id, DeleteOptions{Force: true})
		}},
		{name: "garbage-held", rewrite: func([]byte) []byte { return []byte(`{"format":`) }, del: (*Repository).DeleteHeld},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			dir := t.TempDir()
			r := Open(NewFSTarget(t, dir), &Options{Logger: testLogger(t)})
			res, err := r.Backup(ctx, BackupOptions{Volume: "vol-a", Snapshot: "s", Source: &memSource{data: RandomData(rand.New(rand.NewPCG(129, 130)), 64<<10)},
				Tags: map[string]string{TagSystem: "sys-1", TagToken: "1"}})
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, res.ManifestKey)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tc.rewrite(b), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := r.LoadManifest(ctx, res.ManifestKey); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("the rewritten manifest loads: %v", err)
			}
			err = tc.del(r, ctx, "vol-a", res.ID)
			left := SortedKeys(t, r.t, prefixBackups)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), "Force") || len(left) != 1 {
					t.Fatalf("Delete = %v, manifests left %v; want %v saying how to force it, and the manifest kept", err, left, tc.wantErr)
				}
				return
			}
			if err != nil || len(left) != 0 {
				t.Fatalf("Delete = %v, manifests left %v; want it deleted", err, left)
			}
		})
	}
}

// newerManifest rewrites a manifest as a newer version could have written
// it: with a field this version does not know.
func newerManifest(b []byte) []byte {
	return append([]byte(`{"retention_lock": "2030-01-01T00:00:00Z", `), bytes.TrimPrefix(bytes.TrimSpace(b), []byte("{"))...)
}
