package service

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/agent"
	"github.com/strata-block/strata/plugins"
)

// interruptedRestore leaves, on env e's data directory dir, what a
// restore of backup b (of data) into a new volume vol leaves when the
// process is killed after its first window: the volume holding that
// window, its pending mark and its state file. The window is then
// written to at its first byte, and the volume at 36 MiB (past the
// window), as a user of the volume could have done (it is served at the
// next start before the hold is taken again).
func interruptedRestore(t *testing.T, e *env, dir, vol string, b *Backup, data []byte) {
	t.Helper()
	ctx := t.Context()
	vi, err := e.c.CreateVolume(ctx, agent.CreateVolumeRequest{Name: vol, Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	const window = 32 << 20 // backupd's restore window: 4 pages of 1024 chunks of 8 KiB
	e.write(t, vol, data[:window], 0)
	e.write(t, vol, []byte{^data[0]}, 0)
	e.write(t, vol, []byte("written past the checkpoint"), 36<<20)
	if err := e.svc.markPending(vol, vi.Created); err != nil {
		t.Fatal(err)
	}
	st, _ := json.Marshal(map[string]any{"manifest": b.ManifestKey, "digest": b.Digest, "pages_done": 4})
	if err := os.MkdirAll(filepath.Join(dir, stateDir), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, stateDir, vol), st, 0o600); err != nil {
		t.Fatal(err)
	}
}

// probeExt is an agent extension that runs routes when its routes are
// added.
type probeExt struct{ routes func() }

func (p *probeExt) Routes(*http.ServeMux, func(http.ResponseWriter, error), func(http.ResponseWriter, int, any)) {
	p.routes()
}

func (p *probeExt) Close() error { return nil }

// readVolume reads volume vol whole.
func (e *env) readVolume(t *testing.T, vol string) []byte {
	t.Helper()
	dev, release, err := e.a.Manager().Open(t.Context(), vol)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	p := make([]byte, dev.Size())
	if _, err := dev.ReadAt(t.Context(), p, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// randomSource creates volume "src" of 40 MiB of random data (from seed;
// zero chunks at 36 MiB, past the first restore window), backs it up to
// target "main" and returns the data and the backup.
func (e *env) randomSource(t *testing.T, seed uint64) ([]byte, *Backup) {
	t.Helper()
	const size = 40 << 20
	data := make([]byte, size)
	rng := rand.New(rand.NewPCG(seed, seed+1))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	clear(data[36<<20 : 37<<20])
	if _, err := e.c.CreateVolume(t.Context(), agent.CreateVolumeRequest{Name: "src", Size: size}); err != nil {
		t.Fatal(err)
	}
	e.write(t, "src", data, 0)
	return data, e.backup(t, CreateRequest{Volume: "src", Target: "main"})
}

// wantHeld fails the test unless volume vol is held out of use.
func (e *env) wantHeld(t *testing.T, vol, when string) {
	t.Helper()
	if release, err := e.a.Exclusive(vol); !errors.Is(err, blockdev.ErrInUse) {
		if release != nil {
			release()
		}
		t.Fatalf("Exclusive(%s) %s: %v, want ErrInUse (kept out of use)", vol, when, err)
	}
}

// wantNoRestoreFiles fails the test if data directory dir holds pending
// marks or restore state files.
func wantNoRestoreFiles(t *testing.T, dir, when string) {
	t.Helper()
	for _, d := range []string{pendingDir, stateDir} {
		if ents, _ := os.ReadDir(filepath.Join(dir, d)); len(ents) != 0 {
			t.Errorf("%s %s: %v", d, when, ents)
		}
	}
}

// TestInterruptedRestoreResumed: the volume a restore created and was
// killed during, with progress recorded, is kept at the next start, out
// of use; restoring the same backup into it again resumes: what the first
// run restored is checked, not fetched (the byte written into it since is
// restored again), and the volume ends bit-exact. Before, the next start
// removed the volume and the rerun began again from nothing.
func TestInterruptedRestoreResumed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e, stop := startEnv(t, dir, nil)
	ctx := t.Context()
	data, b := e.randomSource(t, 7)
	size := len(data)
	interruptedRestore(t, e, dir, "half", b, data)
	// A state file older than its volume: left by a restore into an
	// earlier volume of the name, it records nothing this one holds.
	interruptedRestore(t, e, dir, "stale", b, data)
	stale, err := e.c.Volume(ctx, "stale")
	if err != nil {
		t.Fatal(err)
	}
	old := stale.Created.Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(dir, stateDir, "stale"), old, old); err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// An extension whose routes are added before the service's finds the
	// volume held already: the service takes it at start, before the
	// agent serves NBD or FUSE, where a client could open it first.
	var heldEarly error
	e, stop = startEnv(t, dir, e.dirs, func(a *agent.Agent, _ *Config, before *[]agent.Extension) {
		*before = append(*before, &probeExt{routes: func() {
			release, err := a.Exclusive("half")
			if err == nil {
				release()
			}
			heldEarly = err
		}})
	})
	t.Cleanup(func() { _ = stop() })
	if !errors.Is(heldEarly, blockdev.ErrInUse) {
		t.Errorf("Exclusive(half) before the service's routes: %v, want ErrInUse (held from the start)", heldEarly)
	}
	if _, err := e.c.Volume(ctx, "half"); err != nil {
		t.Fatalf("the volume of the interrupted restore after the restart: %v, want it kept", err)
	}
	if _, err := e.c.Volume(ctx, "stale"); !errors.Is(err, blockdev.ErrNotFound) {
		t.Errorf("volume stale, its state file older than it: %v, want it removed at start", err)
	}
	e.wantHeld(t, "half", "after the restart")
	ev, err := StreamEvents(ctx, e.c, "/v1/backups/"+b.ID+"/restore", RestoreRequest{To: "half"}, nil)
	if err != nil {
		t.Fatalf("rerun of the restore: %v", err)
	}
	res := ev.Restore
	if res == nil || !res.Created || res.ResumedBytes != 32<<20 || res.BytesFetched >= int64(size)-(32<<20)+(1<<20) {
		t.Fatalf("rerun result %+v; want created, 32 MiB resumed and only the rest fetched", res)
	}
	if !bytes.Equal(e.readVolume(t, "half"), data) {
		t.Fatal("the resumed restore is not bit-exact")
	}
	wantNoRestoreFiles(t, dir, "after the resumed restore")
	if release, err := e.a.Exclusive("half"); err != nil {
		t.Errorf("the restored volume is still held: %v", err)
	} else {
		release()
	}
}

// TestInterruptedRestoreExpires: a kept volume no rerun takes is removed
// once ResumeKeep has passed; one deleted by hand meanwhile frees its
// name (a volume made again under it is not held).
func TestInterruptedRestoreExpires(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e, stop := startEnv(t, dir, nil)
	ctx := t.Context()
	const size = 40 << 20
	data := bytes.Repeat([]byte{3, 1, 4, 1, 5}, size/5)
	if _, err := e.c.CreateVolume(ctx, agent.CreateVolumeRequest{Name: "src", Size: size}); err != nil {
		t.Fatal(err)
	}
	e.write(t, "src", data, 0)
	b := e.backup(t, CreateRequest{Volume: "src", Target: "main"})
	interruptedRestore(t, e, dir, "half", b, data)
	interruptedRestore(t, e, dir, "gone", b, data)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The keep runs from the state files' last progress: now, whatever
	// the writes above took on a loaded machine.
	now := time.Now()
	for _, v := range []string{"half", "gone"} {
		if err := os.Chtimes(filepath.Join(dir, stateDir, v), now, now); err != nil {
			t.Fatal(err)
		}
	}
	keep := 5 * time.Second
	e, stop = startEnv(t, dir, e.dirs, func(_ *agent.Agent, c *Config, _ *[]agent.Extension) { c.ResumeKeep = keep })
	t.Cleanup(func() { _ = stop() })
	for _, v := range []string{"half", "gone"} {
		if _, err := e.c.Volume(ctx, v); err != nil {
			t.Fatalf("volume %s after the restart: %v, want it kept", v, err)
		}
	}

	if err := e.c.DeleteVolume(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CreateVolume(ctx, agent.CreateVolumeRequest{Name: "gone", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if release, err := e.a.Exclusive("gone"); err != nil {
		t.Fatalf("a volume made again under a kept name is held: %v", err)
	} else {
		release()
	}
	deadline := time.Now().Add(keep + 20*time.Second)
	for {
		_, err := e.c.Volume(ctx, "half")
		if errors.Is(err, blockdev.ErrNotFound) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the kept volume %v after ResumeKeep (%v), want it removed", err, keep)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := e.c.Volume(ctx, "gone"); err != nil {
		t.Errorf("the volume made again under a kept name: %v", err)
	}
	for _, d := range []string{pendingDir, stateDir} { // "gone"'s timer too
		for {
			ents, _ := os.ReadDir(filepath.Join(dir, d))
			if len(ents) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s after expiry: %v", d, ents)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if _, err := e.c.Volume(ctx, "gone"); err != nil {
		t.Errorf("the volume made again under a kept name, after expiry: %v", err)
	}
}

// TestTakenKeptNotRearmed: once a restore has taken a kept volume, an
// expiry that lost the race for the name's claim does not put it back
// nor re-arm its timer. Before, it did, and removed the volume a minute
// after its resumed restore had succeeded.
func TestTakenKeptNotRearmed(t *testing.T) {
	t.Parallel()
	s := New(Config{})
	k := &keptRestore{release: func() {}, timer: time.AfterFunc(time.Hour, func() {})}
	s.kept["v"] = k
	if got := s.takeKept("v"); got != k {
		t.Fatalf("takeKept = %v, want the kept entry", got)
	}
	s.retryKept("v", k) // the expiry whose claim failed
	if s.kept["v"] != nil {
		t.Error("a taken volume is kept again")
	}
	if k.timer.Stop() {
		t.Error("a taken volume's timer is armed again")
	}
}

// TestFailedRestoreKept: a restore that fails for a reason other than the
// shutdown (here its packs are gone from the target: a target that stopped
// answering, a plugin that died look the same to it) keeps the volume it
// created, out of use, when its state file records progress; once the
// target is back, running it again resumes from there. Before, the failed
// rerun of an interrupted restore removed the volume, and what the first
// run restored had to be fetched again.
func TestFailedRestoreKept(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e, stop := startEnv(t, dir, nil)
	ctx := t.Context()
	data, b := e.randomSource(t, 9)
	interruptedRestore(t, e, dir, "half", b, data)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	e, stop = startEnv(t, dir, e.dirs)
	t.Cleanup(func() { _ = stop() })

	packs, away := filepath.Join(e.dirs["main"], "packs"), filepath.Join(t.TempDir(), "packs")
	if err := os.Rename(packs, away); err != nil {
		t.Fatal(err)
	}
	_, err := StreamEvents(ctx, e.c, "/v1/backups/"+b.ID+"/restore", RestoreRequest{To: "half"}, nil)
	if err == nil || !strings.Contains(err.Error(), "keeps what was restored") {
		t.Fatalf("rerun with the packs gone: %v, want a failure saying the volume is kept", err)
	}
	if _, err := e.c.Volume(ctx, "half"); err != nil {
		t.Fatalf("the volume after the failed rerun: %v, want it kept", err)
	}
	e.wantHeld(t, "half", "after the failed rerun")

	if err := os.Rename(away, packs); err != nil {
		t.Fatal(err)
	}
	ev, err := StreamEvents(ctx, e.c, "/v1/backups/"+b.ID+"/restore", RestoreRequest{To: "half"}, nil)
	if err != nil {
		t.Fatalf("rerun with the packs back: %v", err)
	}
	if res := ev.Restore; res == nil || !res.Created || res.ResumedBytes != 32<<20 {
		t.Fatalf("rerun result %+v; want created and 32 MiB resumed", res)
	}
	if !bytes.Equal(e.readVolume(t, "half"), data) {
		t.Fatal("the resumed restore is not bit-exact")
	}
	wantNoRestoreFiles(t, dir, "after the resumed restore")
}

// TestKeepFailedOnlyWhatARerunCanFinish: a failed restore keeps its
// volume only if its state file records progress of this restore into
// this very volume, and only after failures a rerun may get past (a
// target that did not answer, a pack missing); not after a wrong digest,
// a key that does not open the backup, or its manifest gone, nor for a
// volume deleted and made again underneath.
func TestKeepFailedOnlyWhatARerunCanFinish(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e, stop := startEnv(t, dir, nil)
	t.Cleanup(func() { _ = stop() })
	ctx := t.Context()
	data, b := e.randomSource(t, 11)
	interruptedRestore(t, e, dir, "half", b, data)
	vi, err := e.c.Volume(ctx, "half")
	if err != nil {
		t.Fatal(err)
	}
	m := &backupd.Manifest{ID: b.ID}
	for _, tc := range []struct {
		name      string
		err       error
		key       string
		createdAt time.Time
		want      bool
	}{
		{name: "target down", err: errors.New("connection refused"), want: true},
		{name: "pack missing", err: fmt.Errorf("pack p: %w: %w", plugins.ErrNotFound, backupd.ErrMissing), want: true},
		{name: "wrong digest", err: backupd.ErrMismatch},
		{name: "wrong key", err: backupd.ErrKey},
		{name: "manifest gone", err: fmt.Errorf("restore: %w", plugins.ErrNotFound)},
		{name: "another backup's state", err: errors.New("x"), key: backupd.ManifestKey("src", "00000000000000000000000000000000")},
		{name: "another volume of the name", err: errors.New("x"), createdAt: vi.Created.Add(-time.Second)},
	} {
		key, created := b.ManifestKey, vi.Created
		if tc.key != "" {
			key = tc.key
		}
		if !tc.createdAt.IsZero() {
			created = tc.createdAt
		}
		released := 0
		j := &restoreJob{s: e.svc, key: key, m: m, to: "half", created: true, createdAt: created, release: func() { released++ }}
		_, kept := e.svc.keepFailed(j, tc.err)
		if kept != tc.want {
			t.Errorf("%s: kept %v, want %v", tc.name, kept, tc.want)
		}
		if k := e.svc.takeKept("half"); k != nil {
			k.release()
		}
		if kept && (j.release != nil || released != 1) {
			t.Errorf("%s: the hold was not handed to the kept volume (job's %v, released %d times)", tc.name, j.release != nil, released)
		}
	}
}
