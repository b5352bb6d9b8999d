package blockdev

import (
	"context"
	"fmt"
	"sync"

	"github.com/strata-block/strata/snapshot"
)

// FromSnapshot returns the writable device over an open volume's head. The
// caller keeps ownership of v. A Hold reaches only the devices a Manager
// hands out (Manager.Open); this one has a write gate of its own.
func FromSnapshot(v *snapshot.Volume) Volume { return headVolume{v: v, gate: new(writeGate)} }

// headVolume is a volume's head. Every write, zero and trim passes its
// gate, which a Hold closes; reads and flushes do not.
type headVolume struct {
	v    *snapshot.Volume
	gate *writeGate
}

// writeGate lets the changes of one volume through until a Hold closes
// it: closing waits for the changes in flight and makes new ones wait
// until it opens again. A change takes the lock shared (two atomic adds,
// no allocation); a hold takes it exclusively. sync.RWMutex lets a lock be
// released by another goroutine than the one that took it, as a hold
// released by its timer is.
type writeGate struct{ mu sync.RWMutex }

func (h headVolume) Name() string   { return h.v.Name() }
func (h headVolume) Size() int64    { return h.v.Size() }
func (h headVolume) ReadOnly() bool { return false }

func (h headVolume) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return h.v.ReadAt(p, off)
}

func (h headVolume) WriteAt(ctx context.Context, p []byte, off int64, flags WriteFlags) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	h.gate.mu.RLock()
	defer h.gate.mu.RUnlock()
	n, err := h.v.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, h.fua(flags)
}

func (h headVolume) fua(flags WriteFlags) error {
	if flags&FUA != 0 {
		return h.v.Flush()
	}
	return nil
}

func (h headVolume) Flush(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return h.v.Flush()
}

func (h headVolume) Zero(ctx context.Context, off, length int64, flags WriteFlags) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h.gate.mu.RLock()
	defer h.gate.mu.RUnlock()
	if err := h.v.Zero(off, length); err != nil {
		return err
	}
	return h.fua(flags)
}

func (h headVolume) Trim(ctx context.Context, off, length int64, flags WriteFlags) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h.gate.mu.RLock()
	defer h.gate.mu.RUnlock()
	if err := h.v.Trim(off, length); err != nil {
		return err
	}
	return h.fua(flags)
}

func (h headVolume) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	return h.v.Extents(ctx, off, length)
}

// FromView returns the read-only device over a snapshot view. The caller
// keeps ownership of vw.
func FromView(vw *snapshot.View) Volume { return viewVolume{vw} }

type viewVolume struct{ vw *snapshot.View }

func (s viewVolume) Name() string   { return s.vw.Name() }
func (s viewVolume) Size() int64    { return s.vw.Size() }
func (s viewVolume) ReadOnly() bool { return true }

func (s viewVolume) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return s.vw.ReadAt(p, off)
}

func (s viewVolume) readOnly(op string) error {
	return fmt.Errorf("%s: %s: %w", s.vw.Name(), op, ErrReadOnly)
}

func (s viewVolume) WriteAt(context.Context, []byte, int64, WriteFlags) (int, error) {
	return 0, s.readOnly("write")
}

// Flush on a read-only device has nothing to make durable.
func (s viewVolume) Flush(ctx context.Context) error { return ctx.Err() }

func (s viewVolume) Zero(context.Context, int64, int64, WriteFlags) error {
	return s.readOnly("zero")
}

func (s viewVolume) Trim(context.Context, int64, int64, WriteFlags) error {
	return s.readOnly("trim")
}

func (s viewVolume) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	return s.vw.Extents(ctx, off, length)
}

// swapView is the device of a Manager's shared snapshot view. Its view
// can be replaced by a fresh view of the same snapshot (swap) while
// devices are open on it: a snapshot's content never changes, but a view
// holds the layers of the chain it was opened on, and after a snapshot
// below it is deleted (its layer merged up) only a new view lets that
// layer go.
type swapView struct {
	mu sync.RWMutex // held for reading by each call on the view
	vw *snapshot.View
}

func (s *swapView) cur() viewVolume {
	return viewVolume{s.vw}
}

func (s *swapView) Name() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur().Name()
}

func (s *swapView) Size() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur().Size()
}

func (s *swapView) ReadOnly() bool { return true }

func (s *swapView) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur().ReadAt(ctx, p, off)
}

func (s *swapView) WriteAt(ctx context.Context, p []byte, off int64, f WriteFlags) (int, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur().WriteAt(ctx, p, off, f)
}

func (s *swapView) Flush(ctx context.Context) error { return ctx.Err() }

func (s *swapView) Zero(ctx context.Context, off, n int64, f WriteFlags) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur().Zero(ctx, off, n, f)
}

func (s *swapView) Trim(ctx context.Context, off, n int64, f WriteFlags) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur().Trim(ctx, off, n, f)
}

func (s *swapView) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur().Extents(ctx, off, length)
}

// view returns the current view.
func (s *swapView) view() *snapshot.View {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.vw
}

// swap makes vw the view, once no call is on the old one, and returns
// the old one for the caller to close.
func (s *swapView) swap(vw *snapshot.View) *snapshot.View {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.vw
	s.vw = vw
	return old
}
