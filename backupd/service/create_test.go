package service

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/agent"
)

func TestBackupTags(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if _, err := e.c.CreateVolume(t.Context(), agent.CreateVolumeRequest{Name: "vol-t", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	e.write(t, "vol-t", bytes.Repeat([]byte{1}, 8192), 4096)
	tags := map[string]string{"system-backup": "s-0001", "fencing.token": "42", "empty": "", "v": strings.Repeat("x", maxTagValueLen)}
	b := e.backup(t, CreateRequest{Volume: "vol-t", Tags: tags})
	if !maps.Equal(b.Tags, tags) || b.Reused || b.TargetURL != "file://"+e.dirs["main"] {
		t.Errorf("done backup: tags %v reused %v target_url %q; want %v, false, file://%s", b.Tags, b.Reused, b.TargetURL, tags, e.dirs["main"])
	}
	var got Backup
	if err := e.c.Do(t.Context(), http.MethodGet, "/v1/backups/"+b.ID, nil, &got); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got.Tags, tags) || got.TargetURL != b.TargetURL {
		t.Errorf("GET backup: tags %v target_url %q, want %v %q", got.Tags, got.TargetURL, tags, b.TargetURL)
	}
	var list []Backup
	if err := e.c.Do(t.Context(), http.MethodGet, "/v1/backups?volume=vol-t", nil, &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].TargetURL != b.TargetURL {
		t.Errorf("list: %+v, want one backup with target_url %q", list, b.TargetURL)
	}
}

func TestBackupIfUnchanged(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	if _, err := e.c.CreateVolume(ctx, agent.CreateVolumeRequest{Name: "vol-u", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	snapshots := func() int {
		t.Helper()
		ss, err := e.c.Snapshots(ctx, "vol-u")
		if err != nil {
			t.Fatal(err)
		}
		return len(ss)
	}
	ifUnchanged := CreateRequest{Volume: "vol-u", Policy: PolicyIfUnchanged, Tags: map[string]string{"run": "2"}}

	// No backup yet: one is taken.
	e.write(t, "vol-u", bytes.Repeat([]byte{2}, 4096), 0)
	first := e.backup(t, CreateRequest{Volume: "vol-u", Policy: PolicyIfUnchanged, Tags: map[string]string{"run": "1"}})
	if first.Reused {
		t.Fatalf("first backup with if-unchanged: reused %+v", first)
	}

	// No write since: the same backup answers, no snapshot is taken, and
	// it keeps the tags it was made with.
	n := snapshots()
	again := e.backup(t, ifUnchanged)
	if !again.Reused || again.ID != first.ID || again.Snapshot != first.Snapshot || again.Digest != first.Digest || again.Tags["run"] != "1" || again.TargetURL == "" {
		t.Errorf("unchanged volume: %+v, want backup %s reused with its tags", again, first.ID)
	}
	if snapshots() != n {
		t.Errorf("a reused backup took a snapshot")
	}
	// Naming the backup's own snapshot reuses it too; "always" never does.
	if b := e.backup(t, CreateRequest{Volume: "vol-u", Snapshot: first.Snapshot, Policy: PolicyIfUnchanged}); !b.Reused || b.ID != first.ID {
		t.Errorf("if-unchanged of the backup's own snapshot: %+v, want reused %s", b, first.ID)
	}
	if b := e.backup(t, CreateRequest{Volume: "vol-u", Policy: PolicyAlways}); b.Reused || b.ID == first.ID {
		t.Errorf("policy always: %+v, want a new backup", b)
	}

	// A write: a new backup, incremental to the newest.
	latest := e.backup(t, ifUnchanged)
	if !latest.Reused {
		t.Fatalf("no write since the always backup: %+v, want it reused", latest)
	}
	e.write(t, "vol-u", []byte("changed!"), 1<<19)
	b := e.backup(t, ifUnchanged)
	if b.Reused || b.ID == latest.ID || b.Parent != latest.ID || b.Tags["run"] != "2" {
		t.Errorf("after a write: %+v, want a new backup incremental to %s tagged run=2", b, latest.ID)
	}

	// The newest backup's snapshot deleted: change tracking cannot vouch
	// for the volume, so a new (full) backup is taken.
	if err := e.c.DeleteSnapshot(ctx, "vol-u", b.Snapshot); err != nil {
		t.Fatal(err)
	}
	nb := e.backup(t, ifUnchanged)
	if nb.Reused || nb.ID == b.ID {
		t.Errorf("after deleting the newest backup's snapshot: %+v, want a new backup", nb)
	}

	// The newest backup's snapshot taken again under its name after a
	// write: the name is the backup's, the snapshot is not, and nothing
	// vouches for what changed in between.
	if err := e.c.DeleteSnapshot(ctx, "vol-u", nb.Snapshot); err != nil {
		t.Fatal(err)
	}
	e.write(t, "vol-u", []byte("between"), 1<<18)
	if _, err := e.c.CreateSnapshot(ctx, "vol-u", nb.Snapshot); err != nil {
		t.Fatal(err)
	}
	remade := e.backup(t, CreateRequest{Volume: "vol-u", Snapshot: nb.Snapshot, Policy: PolicyIfUnchanged})
	if remade.Reused || remade.ID == nb.ID || remade.Digest == nb.Digest {
		t.Errorf("snapshot %q taken again after a write: %+v, want a new backup of other data than %s", nb.Snapshot, remade, nb.ID)
	}

	// Grown: no block changed, but the backup no longer covers the volume.
	if again := e.backup(t, ifUnchanged); !again.Reused || again.ID != remade.ID {
		t.Fatalf("no write since: %+v, want %s reused", again, remade.ID)
	}
	if _, err := e.c.GrowVolume(ctx, "vol-u", 2<<20); err != nil {
		t.Fatal(err)
	}
	if grown := e.backup(t, ifUnchanged); grown.Reused || grown.Size != 2<<20 {
		t.Errorf("after growing the volume: %+v, want a new backup of 2 MiB", grown)
	}
}

func TestBackupRequestRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if _, err := e.c.CreateVolume(t.Context(), agent.CreateVolumeRequest{Name: "vol-r", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	many := map[string]string{}
	for i := range maxTags + 1 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	for _, tc := range []struct {
		name string
		req  CreateRequest
		want string
	}{
		{name: "no volume", req: CreateRequest{}, want: "no volume named"},
		{name: "policy", req: CreateRequest{Volume: "vol-r", Policy: "sometimes"}, want: `policy "sometimes"`},
		{name: "full and if-unchanged", req: CreateRequest{Volume: "vol-r", Policy: PolicyIfUnchanged, Full: true}, want: "contradict"},
		{name: "upper-case key", req: CreateRequest{Volume: "vol-r", Tags: map[string]string{"System": "x"}}, want: `tag key "System"`},
		{name: "empty key", req: CreateRequest{Volume: "vol-r", Tags: map[string]string{"": "x"}}, want: `tag key ""`},
		{name: "long key", req: CreateRequest{Volume: "vol-r", Tags: map[string]string{strings.Repeat("k", maxTagKeyLen+1): "x"}}, want: "must match"},
		{name: "slash in key", req: CreateRequest{Volume: "vol-r", Tags: map[string]string{"a/b": "x"}}, want: `tag key "a/b"`},
		{name: "long value", req: CreateRequest{Volume: "vol-r", Tags: map[string]string{"k": strings.Repeat("v", maxTagValueLen+1)}}, want: "value of 257 bytes"},
		{name: "too many tags", req: CreateRequest{Volume: "vol-r", Tags: many}, want: "17 tags, at most 16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := CreateBackup(t.Context(), e.c, tc.req, nil)
			if !errors.Is(err, blockdev.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("CreateBackup(%s) = %v, %v; want invalid argument mentioning %q", tc.name, b, err, tc.want)
			}
		})
	}
	if ss, err := e.c.Snapshots(t.Context(), "vol-r"); err != nil || len(ss) != 0 {
		t.Errorf("refused requests left snapshots: %v %v", ss, err)
	}
}

func TestPublicURL(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"file:///srv/backups":                      "file:///srv/backups",
		"s3://bucket/prefix?endpoint=http://h:1":   "s3://bucket/prefix?endpoint=http://h:1",
		"s3://key:secret@bucket/prefix?region=r-1": "s3://bucket/prefix?region=r-1",
	} {
		if got := publicURL(in); got != want {
			t.Errorf("publicURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestPruneReportsHeld: prune answers, besides what it kept and deleted,
// the backups it kept because a system backup holds them (and would the
// future-dated and unreadable ones), as docs/API.md documents.
func TestPruneReportsHeld(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if _, err := e.c.CreateVolume(t.Context(), agent.CreateVolumeRequest{Name: "vol-p", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	e.write(t, "vol-p", bytes.Repeat([]byte{3}, 8192), 0)
	held := e.backup(t, CreateRequest{Volume: "vol-p", Tags: map[string]string{backupd.TagSystem: "s-0001", backupd.TagToken: "1"}})
	e.backup(t, CreateRequest{Volume: "vol-p"})
	var res []PruneResult
	if err := e.c.Do(t.Context(), http.MethodPost, "/v1/backups/prune", PruneRequest{Volume: "vol-p", Target: "main", KeepLast: 1}, &res); err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || len(res[0].Held) != 1 || res[0].Held[0].ID != held.ID || len(res[0].Kept) != 1 {
		t.Fatalf("prune answered %+v, want backup %s held and one kept", res, held.ID)
	}
}

// TestFailedBackupDropsItsSnapshot: the snapshot a backup took for itself
// is deleted when the backup fails (no backup names it); one the request
// named stays. Before, each failed attempt left a backup-<time> snapshot
// holding its copy-on-write layer.
func TestFailedBackupDropsItsSnapshot(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if _, err := e.c.CreateVolume(t.Context(), agent.CreateVolumeRequest{Name: "vol-f", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	e.write(t, "vol-f", bytes.Repeat([]byte{1}, 4096), 0)
	// The target opens, but its packs/ is a file: the backup fails after
	// its snapshot was taken.
	dir := e.dirs["main"]
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "packs"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CreateSnapshot(t.Context(), "vol-f", "mine"); err != nil {
		t.Fatal(err)
	}
	for _, snap := range []string{"", "mine"} {
		if b, err := CreateBackup(t.Context(), e.c, CreateRequest{Volume: "vol-f", Target: "main", Snapshot: snap}, nil); err == nil {
			t.Fatalf("backup to a broken target (snapshot %q) succeeded: %+v", snap, b)
		}
	}
	ss, err := e.c.Snapshots(t.Context(), "vol-f")
	if err != nil || len(ss) != 1 || ss[0].Name != "mine" {
		t.Errorf("snapshots after failed backups: %+v, %v; want only mine", ss, err)
	}
}

// TestStoppingCancelsStreams: once the agent starts shutting down
// (Stopping), a streamed backup is cancelled rather than run (or, when
// running, drained until the shutdown deadline under volumes about to
// close). Before, only detached jobs were cancelled, and only after the
// servers had waited out the shutdown timeout.
func TestStoppingCancelsStreams(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if _, err := e.c.CreateVolume(t.Context(), agent.CreateVolumeRequest{Name: "vol-s", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	e.svc.Stopping()
	if b, err := CreateBackup(t.Context(), e.c, CreateRequest{Volume: "vol-s", Target: "main"}, nil); err == nil {
		t.Fatalf("backup after Stopping succeeded: %+v", b)
	}
	if ss, err := e.c.Snapshots(t.Context(), "vol-s"); err != nil || len(ss) != 0 {
		t.Errorf("a cancelled backup left snapshots: %+v, %v", ss, err)
	}
}

// TestInterruptedRestoreRemoved: a volume a restore created and never
// finished (the process was killed: its pending mark is left, naming the
// volume by its creation time) is removed at the next start; other
// volumes stay, also under marks that do not name them, and a restore
// that finishes leaves no mark. Before, the half-restored volume stayed and looked like
// any other.
func TestInterruptedRestoreRemoved(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e, stop := startEnv(t, dir, nil)
	ctx := t.Context()
	for _, v := range []string{"half", "keep", "src"} {
		if _, err := e.c.CreateVolume(ctx, agent.CreateVolumeRequest{Name: v, Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	e.write(t, "src", bytes.Repeat([]byte{5}, 4096), 0)
	b := e.backup(t, CreateRequest{Volume: "src", Target: "main"})
	if _, err := StreamEvents(ctx, e.c, "/v1/backups/"+b.ID+"/restore", RestoreRequest{To: "restored"}, nil); err != nil {
		t.Fatal(err)
	}
	marks := filepath.Join(dir, pendingDir)
	if ents, _ := os.ReadDir(marks); len(ents) != 0 {
		t.Fatalf("a finished restore left marks: %v", ents)
	}
	// A restore that fails (its packs are gone) removes the volume it
	// created, and its mark.
	if err := os.RemoveAll(filepath.Join(e.dirs["main"], "packs")); err != nil {
		t.Fatal(err)
	}
	if _, err := StreamEvents(ctx, e.c, "/v1/backups/"+b.ID+"/restore", RestoreRequest{To: "failed"}, nil); err == nil {
		t.Fatal("restore of a backup without its packs succeeded")
	}
	if _, err := e.c.Volume(ctx, "failed"); !errors.Is(err, blockdev.ErrNotFound) {
		t.Fatalf("the volume a failed restore created: %v, want it removed", err)
	}
	if ents, _ := os.ReadDir(marks); len(ents) != 0 {
		t.Fatalf("a failed restore left marks: %v", ents)
	}
	// What a restore killed while filling "half" leaves: a mark naming it
	// by its creation time. A mark naming another "keep" than the one
	// there (a stale one) and one written before its volume existed
	// (empty) remove nothing.
	half, err := e.c.Volume(ctx, "half")
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"half": half.Created.UTC().Format(time.RFC3339Nano),
		"keep": half.Created.Add(-time.Hour).UTC().Format(time.RFC3339Nano),
		"src":  "",
	} {
		if err := os.WriteFile(filepath.Join(marks, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	e, stop = startEnv(t, dir, e.dirs)
	t.Cleanup(func() { _ = stop() })
	vols, err := e.c.Volumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range vols {
		names = append(names, v.Name)
	}
	if strings.Join(names, ",") != "keep,restored,src" {
		t.Errorf("volumes after the restart: %v, want keep, restored and src (half removed)", names)
	}
	if ents, _ := os.ReadDir(marks); len(ents) != 0 {
		t.Errorf("marks after the restart: %v", ents)
	}
}

// TestOldBackupSnapshotsDropped: once a backup that took its own snapshot
// is committed, the snapshots earlier backups took are deleted, except
// the one of each target's newest backup (the next incremental's base
// there); snapshots the user made or named stay. Before, every backup
// left its backup-<time> snapshot, each holding a copy-on-write layer.
func TestOldBackupSnapshotsDropped(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	if _, err := e.c.CreateVolume(ctx, agent.CreateVolumeRequest{Name: "vol-s", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"mine", "backup-keep", "backup-20200101-000000.000x"} {
		if _, err := e.c.CreateSnapshot(ctx, "vol-s", name); err != nil {
			t.Fatal(err)
		}
	}
	names := func() []string {
		t.Helper()
		ss, err := e.c.Snapshots(ctx, "vol-s")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range ss {
			out = append(out, s.Name)
		}
		slices.Sort(out)
		return out
	}
	user := []string{"backup-20200101-000000.000x", "backup-keep", "mine"}
	want := func(what string, snaps ...string) {
		t.Helper()
		w := slices.Sorted(slices.Values(append(slices.Clone(user), snaps...)))
		if got := names(); !slices.Equal(got, w) {
			t.Errorf("%s: snapshots %q, want %q", what, got, w)
		}
	}
	backup := func(target string, off int64) *Backup {
		t.Helper()
		e.write(t, "vol-s", bytes.Repeat([]byte{byte(off >> 12)}, 4096), off)
		// Taken names are to the millisecond.
		time.Sleep(2 * time.Millisecond)
		return e.backup(t, CreateRequest{Volume: "vol-s", Target: target})
	}

	m1 := backup("main", 0)
	want("first backup", m1.Snapshot)
	x1 := backup("extra", 4096)
	want("first backup to extra", m1.Snapshot, x1.Snapshot)
	m2 := backup("main", 8192)
	want("second backup to main", x1.Snapshot, m2.Snapshot)
	m3 := backup("main", 12288)
	want("third backup to main", x1.Snapshot, m3.Snapshot)
	if m3.Parent != m2.ID {
		t.Errorf("third backup to main: parent %q, want %s", m3.Parent, m2.ID)
	}
	// A backup of a named snapshot deletes nothing.
	if b := e.backup(t, CreateRequest{Volume: "vol-s", Target: "main", Snapshot: "mine"}); b.Snapshot != "mine" {
		t.Fatalf("backup of snapshot mine: %+v", b)
	}
	want("backup of a named snapshot", x1.Snapshot, m3.Snapshot)
	// extra's base was kept: its next backup is incremental.
	x2 := backup("extra", 16384)
	if x2.Parent != x1.ID {
		t.Errorf("second backup to extra: parent %q, want %s (its base snapshot kept)", x2.Parent, x1.ID)
	}
	// main's newest backup is now of snapshot mine: m3's is no base.
	want("second backup to extra", x2.Snapshot)
}

// TestIfUnchangedSnapshotRemadeMeanwhile: policy if-unchanged does not
// reuse a backup when, while the target was listed, the backup's snapshot
// was deleted, the volume written and the snapshot made again under its
// name: the volume info read before the listing vouched for the old
// snapshot. Before, the backup without the write was answered as current.
func TestIfUnchangedSnapshotRemadeMeanwhile(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	if _, err := e.c.CreateVolume(ctx, agent.CreateVolumeRequest{Name: "vol-n", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CreateSnapshot(ctx, "vol-n", "nightly"); err != nil {
		t.Fatal(err)
	}
	first := e.backup(t, CreateRequest{Volume: "vol-n", Snapshot: "nightly"})
	rotate := func() {
		if err := e.c.DeleteSnapshot(ctx, "vol-n", "nightly"); err != nil {
			t.Error(err)
		}
		e.write(t, "vol-n", []byte("written while the target was listed"), 4096)
		if _, err := e.c.CreateSnapshot(ctx, "vol-n", "nightly"); err != nil {
			t.Error(err)
		}
	}
	var once sync.Once
	e.svc.reusableHook = func() { once.Do(rotate) }
	b := e.backup(t, CreateRequest{Volume: "vol-n", Snapshot: "nightly", Policy: PolicyIfUnchanged})
	if b.Reused || b.ID == first.ID || b.Digest == first.Digest {
		t.Fatalf("if-unchanged after the snapshot was made again with a write: %+v, want a new backup (not %s)", b, first.ID)
	}
}

// TestPruneGoesOnPastAFailedTarget: prune and GC over every target go on
// past one that fails, and the error names what they did on the others.
// Before, the first failing target stopped the run: the targets after it
// were never pruned, and the deletions on those before it went unreported.
func TestPruneGoesOnPastAFailedTarget(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	if _, err := e.c.CreateVolume(ctx, agent.CreateVolumeRequest{Name: "vol-p", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	var olds []*Backup
	for _, tg := range []string{"main", "extra"} {
		olds = append(olds, e.backup(t, CreateRequest{Volume: "vol-p", Target: tg}))
		e.write(t, "vol-p", []byte(tg), 0)
		e.backup(t, CreateRequest{Volume: "vol-p", Target: tg})
	}
	// "extra", listed first, no longer answers: its directory is a file.
	if err := os.RemoveAll(e.dirs["extra"]); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.dirs["extra"], nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := e.c.Do(ctx, http.MethodPost, "/v1/backups/prune", PruneRequest{Volume: "vol-p", KeepLast: 1}, nil)
	if err == nil || !strings.Contains(err.Error(), `"extra"`) || !strings.Contains(err.Error(), `"main": 1 deleted, 1 kept`) {
		t.Fatalf("prune with target extra broken: %v; want extra's failure and main's deletion named", err)
	}
	var b Backup
	if err := e.c.Do(ctx, http.MethodGet, "/v1/backups/"+olds[0].ID+"?target=main", nil, &b); !errors.Is(err, blockdev.ErrNotFound) {
		t.Errorf("backup %s on main after the prune: %v, want it deleted", olds[0].ID, err)
	}
	err = e.c.Do(ctx, http.MethodPost, "/v1/backups/gc", GCRequest{DryRun: true}, nil)
	if err == nil || !strings.Contains(err.Error(), `"extra"`) || !strings.Contains(err.Error(), `"main": 0 packs`) {
		t.Fatalf("gc with target extra broken: %v; want extra's failure and main's report named", err)
	}
}

// TestRestoreOverwriteAsked: a restore into an existing volume needs
// Overwrite: without it the volume is refused (exists) and left as it
// was. Before, any detached volume of the backup's size named by mistake
// was overwritten.
func TestRestoreOverwriteAsked(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	for _, v := range []string{"src", "dst"} {
		if _, err := e.c.CreateVolume(ctx, agent.CreateVolumeRequest{Name: v, Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
	}
	e.write(t, "src", bytes.Repeat([]byte{7}, 4096), 0)
	mine := bytes.Repeat([]byte{9}, 4096)
	e.write(t, "dst", mine, 0)
	b := e.backup(t, CreateRequest{Volume: "src", Target: "main"})
	path := "/v1/backups/" + b.ID + "/restore"
	if _, err := StreamEvents(ctx, e.c, path, RestoreRequest{To: "dst"}, nil); !errors.Is(err, blockdev.ErrExists) || !strings.Contains(err.Error(), "overwrite") {
		t.Fatalf("restore into an existing volume without overwrite: %v; want exists, naming overwrite", err)
	}
	if got := e.readVolume(t, "dst")[:4096]; !bytes.Equal(got, mine) {
		t.Fatal("a refused restore changed the volume")
	}
	ev, err := StreamEvents(ctx, e.c, path, RestoreRequest{To: "dst", Overwrite: true}, nil)
	if err != nil || ev.Restore == nil || ev.Restore.Created {
		t.Fatalf("restore with overwrite: %+v, %v", ev, err)
	}
	if got := e.readVolume(t, "dst")[:4096]; !bytes.Equal(got, bytes.Repeat([]byte{7}, 4096)) {
		t.Fatal("the restore with overwrite did not restore")
	}
}
