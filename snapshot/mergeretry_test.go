package snapshot

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// errAfterCtx is a context whose Err starts failing after n calls: it stops
// a merge between two pieces.
type errAfterCtx struct {
	context.Context
	n atomic.Int64
}

var errStopped = errors.New("stopped by the test")

func (c *errAfterCtx) Err() error {
	if c.n.Add(-1) < 0 {
		return errStopped
	}
	return nil
}

// TestMergeRetryKeepsCopies: a merge into a sealed layer that stops after
// some pieces (a cancelled context), then is run again, leaves every
// snapshot and the head reading what they read before, also after the
// store is reopened. Before, the pieces copied before the stop were in the
// upper layer's map but never logged: the retry skipped them, and after a
// reopen those blocks read the older snapshot's data.
func TestMergeRetryKeepsCopies(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	s, err := OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := s.Create(ctx, "v", 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3 * mergePiece // blocks written for s2: three merge pieces
	fill := func(b byte) []byte { return bytes.Repeat([]byte{b}, n*BlockSize) }
	for i, step := range []struct {
		data []byte
		off  int64
		snap string
	}{{fill(1), 0, "s1"}, {fill(2), 0, "s2"}, {bytes.Repeat([]byte{3}, BlockSize), 1000 * BlockSize, "s3"}} {
		if _, err := v.WriteAt(step.data, step.off); err != nil {
			t.Fatal(i, err)
		}
		if err := v.Snapshot(ctx, step.snap); err != nil {
			t.Fatal(err)
		}
	}
	stop := &errAfterCtx{Context: ctx}
	stop.n.Store(1) // one piece, then stop
	if err := v.DeleteSnapshot(stop, "s2"); !errors.Is(err, errStopped) {
		t.Fatalf("DeleteSnapshot with a context that stops it: %v", err)
	}
	if err := v.DeleteSnapshot(ctx, "s2"); err != nil {
		t.Fatalf("DeleteSnapshot again: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenStore(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err = s.Open(ctx, "v"); err != nil {
		t.Fatal(err)
	}
	vw, err := v.OpenSnapshot(ctx, "s3")
	if err != nil {
		t.Fatal(err)
	}
	defer vw.Close()
	for name, r := range map[string]interface {
		ReadAt([]byte, int64) (int, error)
	}{"head": v, "s3": vw} {
		got := make([]byte, n*BlockSize)
		if _, err := r.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if i := bytes.IndexFunc(got, func(r rune) bool { return r != 2 }); i >= 0 {
			t.Errorf("%s after the merge was stopped, run again and the store reopened: byte %d (block %d) is %d, want 2", name, i, i/BlockSize, got[i])
		}
	}
}

// TestFailedWriteLogged: a large write that fails after some of its pieces
// reached the head leaves those blocks, if the head held them, dirty: the
// next flush logs their checksums as the file now holds them. Before, they
// were not in the dirty set, and once the head was sealed a scrub reported
// them corrupt.
func TestFailedWriteLogged(t *testing.T) {
	ctx := t.Context()
	s, err := OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.Create(ctx, "v", 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	// Small writes make the first region scattered and held by the head;
	// flushed, so a 1 MiB write regroups it and goes in folioSize pieces.
	for b := int64(0); b < 16; b++ {
		if _, err := v.WriteAt(bytes.Repeat([]byte{1}, BlockSize), b*BlockSize); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	injected := errors.New("injected EIO")
	writeFault = func(off int64) error {
		if off >= 2*folioSize {
			return injected
		}
		return nil
	}
	_, err = v.WriteAt(bytes.Repeat([]byte{2}, regroupSize), 0)
	writeFault = nil
	if !errors.Is(err, injected) {
		t.Fatalf("write with a failing piece: %v", err)
	}
	if err := v.Snapshot(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	rep, err := v.Scrub(ctx)
	if err != nil {
		t.Fatalf("scrub after a failed write: %v (%+v)", err, rep)
	}
}

// TestCloseWhileOpening: a volume loads holding its opMu, which Close
// takes first, so a Store.Close racing Open closes the volume after it has
// loaded, never half loaded. Before, Close could flush a volume whose load
// had not yet made its dirty set, and panicked. (The race itself is too
// narrow to hit reliably; the test checks the lock is held.)
func TestCloseWhileOpening(t *testing.T) {
	ctx := t.Context()
	s, err := OpenStore(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.Create(ctx, "v", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	held := false
	openHook = func(v *Volume) {
		if held = !v.opMu.TryLock(); !held {
			v.opMu.Unlock()
		}
	}
	v, err = s.Open(ctx, "v")
	openHook = nil
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if !held {
		t.Error("Open loads the volume without holding its opMu: a Store.Close meanwhile closes it half loaded")
	}
}
