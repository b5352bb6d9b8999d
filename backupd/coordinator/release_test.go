package coordinator

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/fs"
)

// dataSource is a backupd.Source of bytes in memory, all data.
type dataSource []byte

func (d dataSource) Size() int64 { return int64(len(d)) }

func (d dataSource) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	if off >= int64(len(d)) {
		return 0, io.EOF
	}
	n := copy(p, d[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (d dataSource) Extents(_ context.Context, off, length int64) ([]backupd.Extent, error) {
	return []backupd.Extent{{Offset: off, Length: min(length, int64(len(d))-off), Kind: blockdev.ExtentData}}, nil
}

// getFaultTarget fails the Gets of one key with err while it is set.
type getFaultTarget struct {
	plugins.Target
	mu  sync.Mutex
	key string
	err error
}

func (g *getFaultTarget) set(key string, err error) {
	g.mu.Lock()
	g.key, g.err = key, err
	g.mu.Unlock()
}

func (g *getFaultTarget) Get(ctx context.Context, key string, off, n int64) (io.ReadCloser, int64, error) {
	g.mu.Lock()
	k, err := g.key, g.err
	g.mu.Unlock()
	if err != nil && key == k {
		return nil, 0, fmt.Errorf("injected: get %s: %w", key, err)
	}
	return g.Target.Get(ctx, key, off, n)
}

// fsTarget opens an fs target on a new directory, closed with the test.
func fsTarget(t *testing.T) (plugins.Target, string) {
	t.Helper()
	dir := t.TempDir()
	tg, err := fs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tg.Close() })
	return tg, dir
}

// testCoordinator is a Coordinator on a new state file whose operation
// uses targets (by name), without agents.
func testCoordinator(t *testing.T, targets map[string]plugins.Target) (*Coordinator, *store) {
	t.Helper()
	st, err := openStore(filepath.Join(t.TempDir(), StateFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.close() })
	return &Coordinator{log: slog.New(slog.DiscardHandler), st: st, pool: &targetPool{open: targets}}, st
}

// TestReleaseFailedNeedsEveryManifest: a failed run is marked released
// only once every manifest of its volumes was read and those tagged with it
// deleted. A manifest whose Get fails (a target that does not answer) or
// that does not decode (it may carry the run's tag) leaves the run
// unreleased, to be retried; once the fault is gone the retry deletes the
// run's backup and marks it released.
func TestReleaseFailedNeedsEveryManifest(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		damage  func(t *testing.T, tg *getFaultTarget, dir, key string)
		recover func(t *testing.T, tg *getFaultTarget, dir, key string)
	}{
		{name: "transient-get", damage: func(t *testing.T, tg *getFaultTarget, _, key string) {
			tg.set(key, fmt.Errorf("connection reset: %w", plugins.ErrTransient))
		}, recover: func(t *testing.T, tg *getFaultTarget, _, _ string) { tg.set("", nil) }},
		{name: "undecodable", damage: func(t *testing.T, _ *getFaultTarget, dir, key string) {
			// Another manifest of the volume that does not decode.
			other := backupd.ManifestKey("vol-b", "0123456789abcdef0123456789abcdef")
			if err := os.WriteFile(filepath.Join(dir, other), []byte(`{"format":`), 0o644); err != nil {
				t.Fatal(err)
			}
		}, recover: func(t *testing.T, _ *getFaultTarget, dir, _ string) {
			if err := os.Remove(filepath.Join(dir, backupd.ManifestKey("vol-b", "0123456789abcdef0123456789abcdef"))); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			fst, dir := fsTarget(t)
			tg := &getFaultTarget{Target: fst}
			c, st := testCoordinator(t, map[string]plugins.Target{"t": tg})

			run := &Run{ID: "20261127t010203z-0a1b2c3d", Token: 3, State: StateFailed, Started: time.Now().UTC(), Config: &Config{
				Targets: []TargetConfig{{Name: "t", URL: "file://" + dir, Kind: "fs", Default: true}},
				Volumes: []VolumeConfig{{Agent: LocalAgent, Name: "vol-a", Size: 64 << 10, Target: "t"}, {Agent: LocalAgent, Name: "vol-b", Size: 64 << 10, Target: "t"}},
			}}
			if err := st.put(run); err != nil {
				t.Fatal(err)
			}
			repo := backupd.Open(tg, nil)
			keys := map[string]string{}
			for _, vol := range []string{"vol-a", "vol-b"} {
				res, err := repo.Backup(ctx, backupd.BackupOptions{Volume: vol, Snapshot: "sys-x", Source: make(dataSource, 64<<10),
					Tags: map[string]string{backupd.TagSystem: run.ID, backupd.TagToken: "3"}})
				if err != nil {
					t.Fatal(err)
				}
				keys[vol] = res.ManifestKey
			}
			tc.damage(t, tg, dir, keys["vol-b"])

			c.releaseFailed(ctx, run)
			if got, err := st.run(run.ID); err != nil || got.Released {
				t.Fatalf("run after a release that could not read every manifest: %+v, %v; want it not released", got, err)
			}
			tc.recover(t, tg, dir, keys["vol-b"])
			c.releaseFailed(ctx, run)
			if got, err := st.run(run.ID); err != nil || !got.Released {
				t.Fatalf("run after the retry: %+v, %v; want it released", got, err)
			}
			for vol, key := range keys {
				if has, err := tg.Has(ctx, []string{key}); err != nil || has[0] {
					t.Errorf("%s's backup %s of the failed run left (%v)", vol, key, err)
				}
			}
		})
	}
}

// TestReleaseBackupSeesEveryTarget: removing system backup S4 keeps its
// volume backup B when another system backup S5 names B in a manifest
// that is on the configuration's default target only (its copy to B's
// target still pending, and S5 unknown to this coordinator: a new host).
// Before, only B's own target was searched, and B was deleted.
func TestReleaseBackupSeesEveryTarget(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	def, defDir := fsTarget(t)
	x, xDir := fsTarget(t)
	c, _ := testCoordinator(t, map[string]plugins.Target{"d": def, "x": x})

	const s4, s5 = "20261127t010203z-0a1b2c3d", "20261128t010203z-0a1b2c3d"
	res, err := backupd.Open(x, nil).Backup(ctx, backupd.BackupOptions{Volume: "vol-a", Snapshot: "sys-" + s4, Source: make(dataSource, 64<<10),
		Tags: map[string]string{backupd.TagSystem: s4, backupd.TagToken: "3"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Agents:   []AgentConfig{{Name: LocalAgent, Addr: "/d/strata.sock"}},
		Targets:  []TargetConfig{{Name: "d", URL: "file://" + defDir, Kind: "fs", Default: true}, {Name: "x", URL: "file://" + xDir, Kind: "fs"}},
		Volumes:  []VolumeConfig{{Agent: LocalAgent, Name: "vol-a", Size: 64 << 10, Target: "x", TargetSetting: "x"}},
		Settings: Settings{Policy: PolicyIfUnchanged},
	}
	vb := VolumeBackup{Agent: LocalAgent, Volume: "vol-a", Target: "x", BackupID: res.ID, ManifestKey: res.ManifestKey, Digest: res.Digest, Size: 64 << 10, Snapshot: "sys-" + s4}
	m5 := &Manifest{ID: s5, Token: 4, Started: time.Now().UTC(), Committed: time.Now().UTC(), Config: cfg, Volumes: []VolumeBackup{vb}}
	b, err := m5.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := def.Put(ctx, ManifestKey(s5), bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}

	ack := Ack{System: s4, Token: 3, VolumeBackup: vb}
	held, err := c.heldElsewhere(ctx, &Run{ID: s4, Token: 3, State: StateRemoving, Config: &cfg, Acks: map[string]Ack{ackKey(ack.Agent, ack.Volume): ack}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.releaseBackup(ctx, s4, ack, held); err != nil {
		t.Fatal(err)
	}
	if has, err := x.Has(ctx, []string{res.ManifestKey}); err != nil || !has[0] {
		t.Fatalf("backup %s, which system backup %s on the default target names, was deleted (%v)", res.ID, s5, err)
	}
}

// TestLateBackupOfFailedRun: a volume backup an agent commits for a
// system backup after that one failed (an agent cut off from the
// coordinator finishes it) is deleted by a later recovery, as long as the
// late window lasts; the run is marked released only after it. Before,
// the run was released at once and never looked at again, and the late
// backup stayed held for good.
func TestLateBackupOfFailedRun(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	tg, dir := fsTarget(t)
	c, st := testCoordinator(t, map[string]plugins.Target{"t": tg})
	c.opts.BackupMaxDuration = time.Hour
	run := &Run{ID: "20261127t010203z-0a1b2c3d", Token: 3, State: StateFailed, Started: time.Now().UTC(), Finished: time.Now().UTC(), Config: &Config{
		Targets: []TargetConfig{{Name: "t", URL: "file://" + dir, Kind: "fs", Default: true}},
		Volumes: []VolumeConfig{{Agent: LocalAgent, Name: "vol-a", Size: 64 << 10, Target: "t"}},
	}}
	if err := st.put(run); err != nil {
		t.Fatal(err)
	}
	repo := backupd.Open(tg, nil)
	backup := func() string {
		t.Helper()
		res, err := repo.Backup(ctx, backupd.BackupOptions{Volume: "vol-a", Snapshot: "sys-x", Source: make(dataSource, 64<<10),
			Tags: map[string]string{backupd.TagSystem: run.ID, backupd.TagToken: "3"}})
		if err != nil {
			t.Fatal(err)
		}
		return res.ManifestKey
	}
	gone := func(what, key string) {
		t.Helper()
		if has, err := tg.Has(ctx, []string{key}); err != nil || has[0] {
			t.Fatalf("%s backup of the failed run left (%v)", what, err)
		}
	}
	released := func() bool {
		t.Helper()
		r, err := st.run(run.ID)
		if err != nil {
			t.Fatal(err)
		}
		return r.Released
	}

	early := backup()
	c.recover(ctx)
	gone("early", early)
	if released() {
		t.Fatal("run released within its late window")
	}
	late := backup() // committed after the failure
	c.recover(ctx)
	gone("late", late)

	// Past the late window: released.
	if _, err := st.update(run.ID, func(r *Run) error { r.Finished = time.Now().Add(-c.lateWindow() - time.Minute); return nil }); err != nil {
		t.Fatal(err)
	}
	c.recover(ctx)
	if !released() {
		t.Fatal("run not released after its late window")
	}
}

// TestRecoverOpenRunCommittedOnTarget: a run this coordinator's state
// records as open, whose committed manifest is on its default target (the
// state is older than the target: a data directory restored from a file
// backup), is recorded as committed at recovery and its volume backup
// kept. Before, it was failed and its volume backups deleted, which the
// committed manifest still named.
func TestRecoverOpenRunCommittedOnTarget(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	tg, dir := fsTarget(t)
	c, st := testCoordinator(t, map[string]plugins.Target{"t": tg})
	cfg := Config{
		Agents:   []AgentConfig{{Name: LocalAgent, Addr: "/d/strata.sock"}},
		Targets:  []TargetConfig{{Name: "t", URL: "file://" + dir, Kind: "fs", Default: true}},
		Volumes:  []VolumeConfig{{Agent: LocalAgent, Name: "vol-a", Size: 64 << 10, Target: "t"}},
		Settings: Settings{Policy: PolicyAlways},
	}
	run := &Run{ID: "20261127t010203z-0a1b2c3d", Token: 3, State: StateOpen, Started: time.Now().UTC(), Config: &cfg}
	if err := st.put(run); err != nil {
		t.Fatal(err)
	}
	res, err := backupd.Open(tg, nil).Backup(ctx, backupd.BackupOptions{Volume: "vol-a", Snapshot: "sys-" + run.ID, Source: make(dataSource, 64<<10),
		Tags: map[string]string{backupd.TagSystem: run.ID, backupd.TagToken: "3"}})
	if err != nil {
		t.Fatal(err)
	}
	vb := VolumeBackup{Agent: LocalAgent, Volume: "vol-a", Target: "t", BackupID: res.ID, ManifestKey: res.ManifestKey, Digest: res.Digest, Size: 64 << 10, Snapshot: "sys-" + run.ID}
	m := &Manifest{ID: run.ID, Token: 3, Started: run.Started, Committed: time.Now().UTC(), Config: cfg, Volumes: []VolumeBackup{vb}}
	b, err := m.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := tg.Put(ctx, ManifestKey(run.ID), bytes.NewReader(b), int64(len(b))); err != nil {
		t.Fatal(err)
	}

	c.recover(ctx)
	got, err := st.run(run.ID)
	if err != nil || got.State != StateCommitted || !got.namesBackup(res.ID) {
		t.Fatalf("run after recovery: %+v, %v; want committed, naming backup %s", got, err, res.ID)
	}
	if has, err := tg.Has(ctx, []string{res.ManifestKey}); err != nil || !has[0] {
		t.Fatalf("the committed system backup's volume backup was deleted (%v)", err)
	}
}

// TestLoadManifestAuthenticates: a coordinator with a key reads only the
// system manifests that key authenticates, wherever it reads them (a
// restore, a deletion, the holds of other manifests all load through
// loadManifestFrom): one whose target URL was changed, its checksum made
// to match again, does not load.
func TestLoadManifestAuthenticates(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	def, _ := fsTarget(t)
	c, _ := testCoordinator(t, map[string]plugins.Target{"d": def})
	k, err := backupd.NewKey(bytes.Repeat([]byte{5}, backupd.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	c.opts.Key = k
	m := testManifest()
	put := func(b []byte) {
		t.Helper()
		if err := def.Put(ctx, ManifestKey(m.ID), bytes.NewReader(b), int64(len(b))); err != nil {
			t.Fatal(err)
		}
	}
	b, err := m.Encode(k)
	if err != nil {
		t.Fatal(err)
	}
	put(b)
	if _, err := c.loadManifest(ctx, "d", m.ID); err != nil {
		t.Fatalf("the authentic manifest: %v", err)
	}
	forged, err := DecodeManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	forged.Config.Targets[1].URL = "s3://attacker/p?endpoint=http://203.0.113.9"
	put(encodeUnchecked(t, forged))
	if _, err := c.loadManifest(ctx, "d", m.ID); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "MAC") {
		t.Fatalf("a manifest whose target URL was changed: %v, want ErrCorrupt naming the MAC", err)
	}
}
