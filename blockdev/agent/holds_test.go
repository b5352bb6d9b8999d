package agent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/strata-block/strata/blockdev"
)

// startWrite writes one block to volume vol through the agent's Manager
// (the device NBD and FUSE use) and closes the returned channel when the
// write is acknowledged.
func startWrite(t *testing.T, ta *testAgent, vol string) <-chan struct{} {
	t.Helper()
	dev, release, err := ta.Manager().Open(t.Context(), vol)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer release()
		if _, err := dev.WriteAt(t.Context(), make([]byte, 4096), 0, 0); err != nil {
			t.Errorf("write to %s: %v", vol, err)
		}
	}()
	return done
}

func acked(ch <-chan struct{}, within time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(within):
		return false
	}
}

func createVolumes(t *testing.T, c *Client, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := c.CreateVolume(t.Context(), CreateVolumeRequest{Name: n, Size: mib}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestHoldAPI(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, t.TempDir(), nil)
	ctx, c := t.Context(), ta.c
	createVolumes(t, c, "vol-a", "vol-b", "vol-c")

	hi, err := c.Hold(ctx, []string{"vol-b", "vol-a"}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if hi.ID == "" || strings.Join(hi.Volumes, ",") != "vol-a,vol-b" || time.Until(hi.Expires) < 20*time.Second {
		t.Errorf("Hold = %+v", hi)
	}
	wa, wc := startWrite(t, ta, "vol-a"), startWrite(t, ta, "vol-c")
	if !acked(wc, 5*time.Second) {
		t.Error("a write to vol-c, not held, waited")
	}
	if acked(wa, 50*time.Millisecond) {
		t.Error("a write to held vol-a went through")
	}
	snaps, err := c.SnapshotHold(ctx, hi.ID, "g1")
	if err != nil || len(snaps) != 2 || snaps[0].Volume != "vol-a" || snaps[1].Volume != "vol-b" || snaps[0].Name != "g1" {
		t.Fatalf("SnapshotHold = %+v, %v", snaps, err)
	}
	if _, err := c.SnapshotHold(ctx, hi.ID, "g1"); !errors.Is(err, blockdev.ErrExists) {
		t.Errorf("SnapshotHold with a taken name: %v, want exists", err)
	}
	if err := c.ReleaseHold(ctx, hi.ID); err != nil {
		t.Fatal(err)
	}
	if !acked(wa, 5*time.Second) {
		t.Fatal("the held write did not go on after release")
	}
	for what, err := range map[string]error{
		"release twice":           c.ReleaseHold(ctx, hi.ID),
		"snapshot after release":  func() error { _, err := c.SnapshotHold(ctx, hi.ID, "g2"); return err }(),
		"release an unknown hold": c.ReleaseHold(ctx, "no-such-hold"),
	} {
		if !errors.Is(err, blockdev.ErrNotFound) || !strings.Contains(err.Error(), "no such hold") {
			t.Errorf("%s: %v, want not found", what, err)
		}
	}

	// One call: hold, snapshot all, release.
	snaps, err = c.SnapshotGroup(ctx, "", []string{"vol-c", "vol-a"})
	if err != nil || len(snaps) != 2 || snaps[0].Volume != "vol-a" || snaps[0].Name == "" || snaps[0].Name != snaps[1].Name {
		t.Fatalf("SnapshotGroup = %+v, %v", snaps, err)
	}
	if !acked(startWrite(t, ta, "vol-a"), 5*time.Second) {
		t.Error("writes still held after a group snapshot")
	}
}

func TestHoldExpires(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, t.TempDir(), nil)
	ctx, c := t.Context(), ta.c
	createVolumes(t, c, "vol-a")
	start := time.Now()
	hi, err := c.Hold(ctx, []string{"vol-a"}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	w := startWrite(t, ta, "vol-a")
	if acked(w, 50*time.Millisecond) {
		t.Fatal("write went through a hold")
	}
	if !acked(w, 10*time.Second) {
		t.Fatal("the hold did not expire")
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("hold released after %v, before its 200ms timeout", d)
	}
	if err := c.ReleaseHold(ctx, hi.ID); !errors.Is(err, blockdev.ErrNotFound) {
		t.Errorf("release of an expired hold: %v, want not found", err)
	}
	if _, err := c.SnapshotHold(ctx, hi.ID, "late"); !errors.Is(err, blockdev.ErrNotFound) {
		t.Errorf("snapshot of an expired hold: %v, want not found", err)
	}
}

func TestHoldRefused(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, t.TempDir(), nil)
	c := ta.c
	createVolumes(t, c, "vol-a")
	for _, tc := range []struct {
		name  string
		req   HoldRequest
		errIs error
		want  string
	}{
		{name: "negative timeout", req: HoldRequest{Volumes: []string{"vol-a"}, TimeoutMS: -1}, errIs: blockdev.ErrInvalidArgument, want: "timeout_ms -1"},
		{name: "timeout past the maximum", req: HoldRequest{Volumes: []string{"vol-a"}, TimeoutMS: 60001}, errIs: blockdev.ErrInvalidArgument, want: "want 1 to 60000"},
		// In nanoseconds these wrap to a negative and to a tiny duration.
		{name: "timeout overflowing", req: HoldRequest{Volumes: []string{"vol-a"}, TimeoutMS: 9223372036855}, errIs: blockdev.ErrInvalidArgument, want: "want 1 to 60000"},
		{name: "timeout overflowing twice", req: HoldRequest{Volumes: []string{"vol-a"}, TimeoutMS: 18446744073710}, errIs: blockdev.ErrInvalidArgument, want: "want 1 to 60000"},
		{name: "no volumes", req: HoldRequest{}, errIs: blockdev.ErrInvalidArgument, want: "no volumes"},
		{name: "unknown volume", req: HoldRequest{Volumes: []string{"vol-a", "vol-x"}}, errIs: blockdev.ErrNotFound, want: `"vol-x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hi HoldInfo
			err := c.Do(t.Context(), "POST", "/v1/holds", tc.req, &hi)
			if !errors.Is(err, tc.errIs) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("POST /v1/holds %+v: %+v, %v; want %v mentioning %q", tc.req, hi, err, tc.errIs, tc.want)
			}
		})
	}
	if !acked(startWrite(t, ta, "vol-a"), 5*time.Second) {
		t.Error("a refused hold left vol-a held")
	}
	if _, err := c.SnapshotGroup(t.Context(), "s", []string{"vol-a", "vol-x"}); !errors.Is(err, blockdev.ErrNotFound) {
		t.Errorf("group snapshot with an unknown volume: %v, want not found", err)
	}
}

// At shutdown the agent releases its holds and takes no new ones.
func TestHoldsEndAtShutdown(t *testing.T) {
	t.Parallel()
	ta := startAgent(t, t.TempDir(), nil)
	createVolumes(t, ta.c, "vol-a")
	hi, err := ta.c.Hold(t.Context(), []string{"vol-a"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	w := startWrite(t, ta, "vol-a")
	ta.releaseAllHolds()
	if !acked(w, 5*time.Second) {
		t.Fatal("a held write did not go on at shutdown")
	}
	if err := ta.c.ReleaseHold(t.Context(), hi.ID); !errors.Is(err, blockdev.ErrNotFound) {
		t.Errorf("release after shutdown: %v, want not found", err)
	}
	var ae *APIError
	if _, err := ta.c.Hold(t.Context(), []string{"vol-a"}, 0); !errors.As(err, &ae) || ae.Code != "unavailable" {
		t.Errorf("hold during shutdown: %v, want unavailable", err)
	}
}
