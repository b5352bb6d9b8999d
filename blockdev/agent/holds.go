package agent

import (
	"context"
	"crypto/rand"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/strata-block/strata/blockdev"
)

// Hold timeouts: a hold ends by itself after its timeout, so a client
// that dies holding writes freezes them for at most MaxHoldTimeout.
const (
	DefaultHoldTimeout = 10 * time.Second
	MaxHoldTimeout     = 60 * time.Second
)

// HoldRequest is the body of POST /v1/holds.
type HoldRequest struct {
	Volumes []string `json:"volumes"`
	// TimeoutMS releases the hold by itself after this many milliseconds
	// (0: DefaultHoldTimeout; at most MaxHoldTimeout).
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

// HoldInfo answers POST /v1/holds.
type HoldInfo struct {
	ID      string   `json:"id"`
	Volumes []string `json:"volumes"` // sorted
	// Expires is when the hold releases itself.
	Expires time.Time `json:"expires"`
}

// GroupSnapshotRequest is the body of POST /v1/snapshots: snapshot Name of
// every volume at one crash-consistent instant. An empty name gets a
// generated one (UTC time).
type GroupSnapshotRequest struct {
	Name    string   `json:"name"`
	Volumes []string `json:"volumes"`
}

// holds are the agent's open holds by id.
type holds struct {
	mu     sync.Mutex
	m      map[string]*heldWrites
	closed bool // shutting down: no new holds
}

// heldWrites is one open hold and the timer that ends it.
type heldWrites struct {
	h     *blockdev.Hold
	timer *time.Timer
	info  HoldInfo
}

func holdTimeout(ms int64) (time.Duration, error) {
	switch {
	case ms == 0:
		return DefaultHoldTimeout, nil
	case ms < 0 || ms > MaxHoldTimeout.Milliseconds(): // before converting: it could overflow
		return 0, fmt.Errorf("hold timeout_ms %d: want 1 to %d (0 for %d): %w", ms, MaxHoldTimeout.Milliseconds(), DefaultHoldTimeout.Milliseconds(), blockdev.ErrInvalidArgument)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// hold holds the writes of req.Volumes until released or timed out. The
// wait for writes in flight (and for other holds on the same volumes) is
// bounded by the timeout too.
func (a *Agent) hold(ctx context.Context, req HoldRequest) (HoldInfo, error) {
	timeout, err := holdTimeout(req.TimeoutMS)
	if err != nil {
		return HoldInfo{}, err
	}
	if err := a.noneExclusive(req.Volumes); err != nil {
		return HoldInfo{}, err
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	h, err := a.mgr.Hold(wctx, req.Volumes)
	if err != nil {
		return HoldInfo{}, err
	}
	// Again now that the gates are closed: a restore that took a volume
	// meanwhile writes to it, and a snapshot under this hold would catch
	// it half-restored.
	if err := a.noneExclusive(req.Volumes); err != nil {
		h.Release()
		return HoldInfo{}, err
	}
	id := rand.Text()
	hw := &heldWrites{h: h, info: HoldInfo{ID: id, Volumes: h.Volumes(), Expires: time.Now().Add(timeout).UTC()}}
	a.holds.mu.Lock()
	if a.holds.closed {
		a.holds.mu.Unlock()
		h.Release()
		return HoldInfo{}, fmt.Errorf("hold: the agent is shutting down: %w", errUnavailable)
	}
	if a.holds.m == nil {
		a.holds.m = map[string]*heldWrites{}
	}
	a.holds.m[id] = hw
	hw.timer = time.AfterFunc(timeout, func() {
		if a.endHold(id) {
			a.log.Warn("hold expired: writes released", "hold", id, "volumes", hw.info.Volumes, "timeout", timeout)
		}
	})
	a.holds.mu.Unlock()
	a.log.Info("writes held", "hold", id, "volumes", hw.info.Volumes, "timeout", timeout)
	return hw.info, nil
}

// noneExclusive is notExclusive for each of vols.
func (a *Agent) noneExclusive(vols []string) error {
	for _, v := range vols {
		if err := a.notExclusive(v); err != nil {
			return err
		}
	}
	return nil
}

// endHold releases hold id; false if there is no such hold (any more).
func (a *Agent) endHold(id string) bool {
	a.holds.mu.Lock()
	hw, ok := a.holds.m[id]
	delete(a.holds.m, id)
	a.holds.mu.Unlock()
	if !ok {
		return false
	}
	hw.timer.Stop()
	hw.h.Release() // waits for a snapshot in progress under it
	return true
}

func (a *Agent) releaseHold(id string) error {
	if !a.endHold(id) {
		return errNoHold(id)
	}
	a.log.Info("writes released", "hold", id)
	return nil
}

func errNoHold(id string) error {
	return fmt.Errorf("hold %q: no such hold (never taken, released, or expired): %w", id, blockdev.ErrNotFound)
}

// snapshotHold snapshots every volume of hold id.
func (a *Agent) snapshotHold(ctx context.Context, id, snap string) ([]blockdev.VolumeSnapshot, error) {
	a.holds.mu.Lock()
	hw, ok := a.holds.m[id]
	a.holds.mu.Unlock()
	if !ok {
		return nil, errNoHold(id)
	}
	if err := a.noneExclusive(hw.info.Volumes); err != nil {
		return nil, err
	}
	out, err := hw.h.Snapshot(ctx, snap)
	if err != nil {
		if _, live := a.lookupHold(id); !live {
			return nil, fmt.Errorf("%w (%w)", errNoHold(id), err)
		}
		return nil, err
	}
	a.volumesChanged()
	return out, nil
}

func (a *Agent) lookupHold(id string) (*heldWrites, bool) {
	a.holds.mu.Lock()
	defer a.holds.mu.Unlock()
	hw, ok := a.holds.m[id]
	return hw, ok
}

// snapshotGroup holds, snapshots and releases req.Volumes.
func (a *Agent) snapshotGroup(ctx context.Context, req GroupSnapshotRequest) ([]blockdev.VolumeSnapshot, error) {
	if err := a.noneExclusive(req.Volumes); err != nil {
		return nil, err
	}
	if err := blockdev.CheckSnapshotName(req.Name); err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, DefaultHoldTimeout)
	defer cancel()
	h, err := a.mgr.Hold(wctx, req.Volumes)
	if err != nil {
		return nil, err
	}
	defer h.Release()
	// Again with the gates closed, as hold does: a restore that took a
	// volume meanwhile would be caught half-done.
	if err := a.noneExclusive(req.Volumes); err != nil {
		return nil, err
	}
	out, err := h.Snapshot(wctx, req.Name)
	if err != nil {
		return nil, err
	}
	a.volumesChanged()
	return out, nil
}

// releaseAllHolds ends every hold and refuses new ones (at shutdown, so
// that writes drain).
func (a *Agent) releaseAllHolds() {
	a.holds.mu.Lock()
	a.holds.closed = true
	ids := slices.Collect(maps.Keys(a.holds.m))
	a.holds.mu.Unlock()
	for _, id := range ids {
		if a.endHold(id) {
			a.log.Info("shutdown: writes released", "hold", id)
		}
	}
}
