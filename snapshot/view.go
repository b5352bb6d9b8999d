package snapshot

import (
	"context"
	"fmt"
	"io"
	"sync"
	"time"
)

// View is a read-only view of one snapshot: an io.ReaderAt plus allocation
// extents. It keeps the snapshot's layers alive, so it stays valid even if
// the snapshot is deleted or the volume closed while it is open. Close it
// when done. It is safe for concurrent use.
type View struct {
	s       *Store
	vol     string
	name    string
	size    int64
	created time.Time // the snapshot's creation time: with name, its identity

	ci     chainIndex
	mu     sync.RWMutex
	closed bool
	layers []*layer
}

// OpenSnapshot returns a read-only view of snapshot name. Building its
// index costs time proportional to the extents of the snapshot's layers.
func (v *Volume) OpenSnapshot(ctx context.Context, name string) (*View, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	if err := v.usable(); err != nil {
		return nil, err
	}
	pos := v.meta.findSnapshot(name)
	if pos < 0 {
		return nil, fmt.Errorf("volume %q: snapshot %q: %w", v.name, name, ErrNotFound)
	}
	vw := &View{s: v.s, vol: v.name, name: name, size: v.meta.Layers[pos].Size, created: v.meta.Layers[pos].Created}
	vw.layers = append([]*layer(nil), v.chain[:pos+1]...)
	v.s.mu.Lock()
	for _, l := range vw.layers {
		l.refs++
	}
	v.s.mu.Unlock()
	vw.ci.build(vw.layers)
	return vw, nil
}

// Name returns "vol@snap".
func (vw *View) Name() string { return vw.vol + "@" + vw.name }

// Created returns the snapshot's creation time: a snapshot made later
// under the same name has another.
func (vw *View) Created() time.Time { return vw.created }

// Size returns the snapshot's volume size.
func (vw *View) Size() int64 { return vw.size }

// ReadAt reads len(p) bytes at off, returning io.EOF past the end.
func (vw *View) ReadAt(p []byte, off int64) (int, error) {
	vw.mu.RLock()
	defer vw.mu.RUnlock()
	if vw.closed {
		return 0, fmt.Errorf("snapshot %s: %w", vw.Name(), ErrClosed)
	}
	n, err := clampRange(off, len(p), vw.size)
	if err != nil {
		return 0, fmt.Errorf("snapshot %s: read: %w", vw.Name(), err)
	}
	if err := vw.ci.read(p[:n], off); err != nil {
		return 0, fmt.Errorf("snapshot %s: read: %w", vw.Name(), err)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Extents describes [off, off+length) of the snapshot, clipped to its size.
func (vw *View) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	vw.mu.RLock()
	defer vw.mu.RUnlock()
	if vw.closed {
		return nil, fmt.Errorf("snapshot %s: %w", vw.Name(), ErrClosed)
	}
	if off < 0 || length < 0 {
		return nil, fmt.Errorf("snapshot %s: extents [%d,+%d): %w", vw.Name(), off, length, ErrInvalidArgument)
	}
	n, _ := clampRange(off, int(min(length, vw.size)), vw.size)
	return vw.ci.extents(off, int64(n)), nil
}

// Close releases the view's layers. It is idempotent.
func (vw *View) Close() error {
	vw.mu.Lock()
	defer vw.mu.Unlock()
	if vw.closed {
		return nil
	}
	vw.closed = true
	for _, l := range vw.layers {
		vw.s.release(l)
	}
	vw.layers = nil
	return nil
}
