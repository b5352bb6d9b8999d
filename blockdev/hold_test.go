package blockdev

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// openHead creates volume name (1 MiB) and opens its head.
func openHead(t *testing.T, m *Manager, name string) Volume {
	t.Helper()
	if _, err := m.Create(t.Context(), name, 1<<20); err != nil {
		t.Fatal(err)
	}
	dev, release, err := m.Open(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	return dev
}

// done reports whether ch is closed within d.
func doneWithin(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

func TestHoldBlocksWritesOnly(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := openTestManager(t, t.TempDir())
	a, b := openHead(t, m, "vol-a"), openHead(t, m, "vol-b")
	other := openHead(t, m, "vol-other")

	h, err := m.Hold(ctx, []string{"vol-b", "vol-a"})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(h.Volumes(), ","); got != "vol-a,vol-b" {
		t.Errorf("Volumes() = %s", got)
	}
	changes := map[string]func() error{
		"write": func() error { _, err := a.WriteAt(ctx, fill('w'), 0, 0); return err },
		"zero":  func() error { return b.Zero(ctx, 4096, 4096, 0) },
		"trim":  func() error { return a.Trim(ctx, 8192, 4096, FUA) },
	}
	var wg sync.WaitGroup
	finished := map[string]chan struct{}{}
	for name, fn := range changes {
		ch := make(chan struct{})
		finished[name] = ch
		wg.Go(func() {
			defer close(ch)
			if err := fn(); err != nil {
				t.Errorf("%s: %v", name, err)
			}
		})
	}
	// Reads, flushes and writes to other volumes go on.
	readBlock(t, a, 0)
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := other.WriteAt(ctx, fill('o'), 0, FUA); err != nil {
		t.Fatal(err)
	}
	for name, ch := range finished {
		if doneWithin(ch, 50*time.Millisecond) {
			t.Errorf("%s finished while its volume was held", name)
		}
	}
	h.Release()
	h.Release() // idempotent
	wg.Wait()
	if got := readBlock(t, a, 0); got[0] != 'w' {
		t.Errorf("held write lost: block 0 holds %q", got[0])
	}
	if _, err := h.Snapshot(ctx, "late"); !errors.Is(err, ErrClosed) {
		t.Errorf("Snapshot after Release: %v, want ErrClosed", err)
	}
}

func TestHoldRefusals(t *testing.T) {
	t.Parallel()
	m := openTestManager(t, t.TempDir())
	openHead(t, m, "vol-a")
	for _, tc := range []struct {
		name  string
		vols  []string
		errIs error
		want  string
	}{
		{name: "none", errIs: ErrInvalidArgument, want: "no volumes"},
		{name: "twice", vols: []string{"vol-a", "vol-a"}, errIs: ErrInvalidArgument, want: `"vol-a" named twice`},
		{name: "unknown", vols: []string{"vol-a", "vol-x"}, errIs: ErrNotFound, want: `"vol-x"`},
		{name: "invalid", vols: []string{"Vol"}, errIs: ErrInvalidName, want: `"Vol"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := m.Hold(t.Context(), tc.vols)
			if !errors.Is(err, tc.errIs) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Hold(%v) = %v, %v; want %v mentioning %s", tc.vols, h, err, tc.errIs, tc.want)
			}
		})
	}
	// Nothing stayed held: a write goes through.
	dev, release, err := m.Open(t.Context(), "vol-a")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if _, err := dev.WriteAt(t.Context(), fill(1), 0, 0); err != nil {
		t.Fatal(err)
	}
}

// A hold waiting for a volume another hold holds gives up with its
// context, and leaves the volume usable once the other is released.
func TestHoldWaitsForOtherHold(t *testing.T) {
	t.Parallel()
	m := openTestManager(t, t.TempDir())
	a := openHead(t, m, "vol-a")
	openHead(t, m, "vol-b")
	first, err := m.Hold(t.Context(), []string{"vol-a"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := m.Hold(ctx, []string{"vol-b", "vol-a"}); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), `"vol-a"`) {
		t.Fatalf("second hold: %v, want a deadline naming vol-a", err)
	}
	first.Release()
	// vol-b, closed by the failed hold, opened again; vol-a too once the
	// abandoned wait got and dropped it.
	if _, err := m.SnapshotGroup(t.Context(), []string{"vol-a", "vol-b"}, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WriteAt(t.Context(), fill(2), 0, 0); err != nil {
		t.Fatal(err)
	}
}

func TestSnapshotGroupAllOrNothing(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := openTestManager(t, t.TempDir())
	openHead(t, m, "vol-a")
	openHead(t, m, "vol-b")
	if _, err := m.Snapshot(ctx, "vol-b", "taken"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		snap  string
		errIs error
	}{
		{snap: "taken", errIs: ErrExists},
		{snap: "Bad Name", errIs: ErrInvalidName},
	} {
		if _, err := m.SnapshotGroup(ctx, []string{"vol-a", "vol-b"}, tc.snap); !errors.Is(err, tc.errIs) {
			t.Errorf("SnapshotGroup(%q): %v, want %v", tc.snap, err, tc.errIs)
		}
	}
	vi, err := m.Volume(ctx, "vol-a")
	if err != nil || len(vi.Snapshots) != 0 {
		t.Errorf("vol-a after refused group snapshots: %+v, %v; want no snapshot", vi.Snapshots, err)
	}
	got, err := m.SnapshotGroup(ctx, []string{"vol-b", "vol-a"}, "g1")
	if err != nil || len(got) != 2 || got[0].Volume != "vol-a" || got[1].Volume != "vol-b" || got[0].Name != "g1" {
		t.Fatalf("SnapshotGroup = %+v, %v", got, err)
	}
}

// counterWriter writes 1, 2, 3, ... to block 0 of volume a and then of
// volume b, each write acknowledged before the next starts, until stop.
// Any consistent instant therefore has counter(b) <= counter(a) <=
// counter(b)+1. last is the latest counter written to b.
type counterWriter struct {
	a, b Volume
	last atomic.Uint64
	stop chan struct{}
	done chan struct{}
	err  error
}

func startCounterWriter(a, b Volume) *counterWriter {
	w := &counterWriter{a: a, b: b, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		p := make([]byte, 4096)
		for i := uint64(1); ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			binary.LittleEndian.PutUint64(p, i)
			for _, dev := range []Volume{w.a, w.b} {
				if _, err := dev.WriteAt(context.Background(), p, 0, 0); err != nil {
					w.err = fmt.Errorf("write %d to %s: %w", i, dev.Name(), err)
					return
				}
			}
			w.last.Store(i)
		}
	}()
	return w
}

func (w *counterWriter) halt(t *testing.T) {
	t.Helper()
	close(w.stop)
	<-w.done
	if w.err != nil {
		t.Fatal(w.err)
	}
}

// waitPast waits until the writer has completed counter n.
func (w *counterWriter) waitPast(t *testing.T, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for w.last.Load() <= n {
		if time.Now().After(deadline) {
			t.Fatalf("writer stuck at %d", w.last.Load())
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// snapCounter reads the counter in snapshot snap of volume vol.
func snapCounter(t *testing.T, m *Manager, vol, snap string) uint64 {
	t.Helper()
	dev, release, err := m.Open(t.Context(), vol+"@"+snap)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	return binary.LittleEndian.Uint64(readBlock(t, dev, 0))
}

// consistent is the check: the pair of counters could be seen at one
// instant of the writer.
func consistent(a, b uint64) bool { return b <= a && a <= b+1 }

func TestSnapshotGroupIsOneInstant(t *testing.T) {
	t.Parallel()
	m := openTestManager(t, t.TempDir())
	w := startCounterWriter(openHead(t, m, "vol-a"), openHead(t, m, "vol-b"))
	var seen uint64
	for i := range 25 {
		w.waitPast(t, seen+3) // let the writer run between snapshots
		snap := fmt.Sprintf("g%d", i)
		if _, err := m.SnapshotGroup(t.Context(), []string{"vol-a", "vol-b"}, snap); err != nil {
			t.Fatal(err)
		}
		a, b := snapCounter(t, m, "vol-a", snap), snapCounter(t, m, "vol-b", snap)
		if !consistent(a, b) {
			t.Errorf("group snapshot %s: counter %d on vol-a, %d on vol-b: not one instant", snap, a, b)
		}
		seen = b
	}
	w.halt(t)
}

// The check catches what the hold prevents: snapshots of the two volumes
// taken one after the other, with the writer running in between, are not
// one instant.
func TestSnapshotsWithoutHoldAreCaught(t *testing.T) {
	t.Parallel()
	m := openTestManager(t, t.TempDir())
	w := startCounterWriter(openHead(t, m, "vol-a"), openHead(t, m, "vol-b"))
	w.waitPast(t, 2)
	if _, err := m.Snapshot(t.Context(), "vol-a", "s"); err != nil {
		t.Fatal(err)
	}
	w.waitPast(t, w.last.Load()+2)
	if _, err := m.Snapshot(t.Context(), "vol-b", "s"); err != nil {
		t.Fatal(err)
	}
	w.halt(t)
	if a, b := snapCounter(t, m, "vol-a", "s"), snapCounter(t, m, "vol-b", "s"); consistent(a, b) {
		t.Errorf("unheld snapshots with writes between them: counters %d and %d pass the check; it cannot catch an inconsistent group", a, b)
	}
}
