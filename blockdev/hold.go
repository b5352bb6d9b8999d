package blockdev

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// VolumeSnapshot is a snapshot of a named volume, as a group snapshot
// reports it.
type VolumeSnapshot struct {
	Volume string `json:"volume"`
	SnapshotInfo
}

// Hold holds the writes of a set of volumes: while it is held, no write,
// zero or trim through any device of those volumes is in progress or
// starts (they wait; reads and flushes go on), so snapshots taken under
// it are one crash-consistent instant across the volumes. Take it with
// Manager.Hold and release it promptly: writers wait as long as it is
// held. It is safe for concurrent use.
type Hold struct {
	m     *Manager
	names []string // sorted
	gates []*writeGate

	mu       sync.Mutex // serialises Snapshot and Release
	released bool
}

// Hold holds the writes of the named volumes. It closes their write gates
// one by one in name order (so that two holds sharing volumes cannot
// deadlock), each once the writes in flight on it are done; new writes
// wait from the moment a gate starts closing. ctx bounds that wait: a
// volume held by another Hold is waited for until it is released.
//
// No name, a name twice or an unknown volume fail with ErrInvalidArgument,
// ErrInvalidArgument and ErrNotFound, holding nothing.
func (m *Manager) Hold(ctx context.Context, names []string) (*Hold, error) {
	if len(names) == 0 {
		return nil, fmt.Errorf("hold: no volumes named: %w", ErrInvalidArgument)
	}
	sorted := slices.Sorted(slices.Values(names))
	for i := 1; i < len(sorted); i++ {
		if sorted[i] == sorted[i-1] {
			return nil, fmt.Errorf("hold: volume %q named twice: %w", sorted[i], ErrInvalidArgument)
		}
	}
	h := &Hold{m: m, names: sorted, gates: make([]*writeGate, len(sorted))}
	m.mu.Lock()
	for i, name := range sorted {
		mv, err := m.lookup(name)
		if err != nil {
			m.mu.Unlock()
			return nil, fmt.Errorf("hold: %w", err)
		}
		h.gates[i] = mv.dev.gate
	}
	m.mu.Unlock()
	for i, g := range h.gates {
		if err := g.close(ctx); err != nil {
			for _, held := range slices.Backward(h.gates[:i]) {
				held.mu.Unlock()
			}
			return nil, fmt.Errorf("hold: waiting for the writes on volume %q: %w", sorted[i], err)
		}
	}
	m.log.Debug("writes held", "volumes", sorted)
	return h, nil
}

// close closes the gate once the changes in flight are done, or gives up
// when ctx ends (the gate then opens again as soon as it has closed).
func (g *writeGate) close(ctx context.Context) error {
	if g.mu.TryLock() {
		return nil
	}
	locked := make(chan struct{})
	go func() {
		g.mu.Lock()
		close(locked)
	}()
	select {
	case <-locked:
		return nil
	case <-ctx.Done():
		go func() {
			<-locked
			g.mu.Unlock()
		}()
		return ctx.Err()
	}
}

// Volumes returns the held volumes, sorted.
func (h *Hold) Volumes() []string { return slices.Clone(h.names) }

// Snapshot takes snapshot snap of every held volume and returns them in
// Volumes order. It is all or nothing: a name that is invalid or taken on
// any volume fails before any snapshot is taken (ErrInvalidName,
// ErrExists), and when a snapshot fails those already taken are deleted
// again. After Release it fails with ErrClosed.
func (h *Hold) Snapshot(ctx context.Context, snap string) ([]VolumeSnapshot, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released {
		return nil, fmt.Errorf("hold on volumes %s: released: %w", strings.Join(h.names, ", "), ErrClosed)
	}
	if err := CheckSnapshotName(snap); err != nil {
		return nil, err
	}
	for _, name := range h.names {
		vi, err := h.m.Volume(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("group snapshot %q: %w", snap, err)
		}
		if slices.ContainsFunc(vi.Snapshots, func(si SnapshotInfo) bool { return si.Name == snap }) {
			return nil, fmt.Errorf("group snapshot %q: volume %q already has a snapshot of that name: %w", snap, name, ErrExists)
		}
	}
	out := make([]VolumeSnapshot, 0, len(h.names))
	for _, name := range h.names {
		si, err := h.m.Snapshot(ctx, name, snap)
		if err != nil {
			h.undo(ctx, snap, out)
			return nil, fmt.Errorf("group snapshot %q: volume %q: %w", snap, name, err)
		}
		out = append(out, VolumeSnapshot{Volume: name, SnapshotInfo: si})
	}
	h.m.log.Info("group snapshot taken", "snapshot", snap, "volumes", h.names)
	return out, nil
}

// undo deletes the snapshots a failed group snapshot took.
func (h *Hold) undo(ctx context.Context, snap string, taken []VolumeSnapshot) {
	ctx = context.WithoutCancel(ctx)
	var errs []error
	for _, vs := range taken {
		if err := h.m.DeleteSnapshot(ctx, vs.Volume, snap); err != nil {
			errs = append(errs, fmt.Errorf("volume %q: %w", vs.Volume, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		h.m.log.Error("group snapshot failed and its snapshots could not all be deleted", "snapshot", snap, "err", err)
	}
}

// Release lets the held writes go on. It is idempotent.
func (h *Hold) Release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released {
		return
	}
	h.released = true
	for _, g := range slices.Backward(h.gates) {
		g.mu.Unlock()
	}
	h.m.log.Debug("writes released", "volumes", h.names)
}

// SnapshotGroup takes snapshot snap of every named volume at one
// crash-consistent instant: it holds their writes, snapshots each and
// releases them (Hold, then Hold.Snapshot).
func (m *Manager) SnapshotGroup(ctx context.Context, names []string, snap string) ([]VolumeSnapshot, error) {
	if err := CheckSnapshotName(snap); err != nil {
		return nil, err
	}
	h, err := m.Hold(ctx, names)
	if err != nil {
		return nil, err
	}
	defer h.Release()
	return h.Snapshot(ctx, snap)
}
