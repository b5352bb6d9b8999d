package service

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/blockdev/agent"
)

// A backup without a target goes to the volume's target, else the
// default; a named target wins over both.
func TestBackupGoesToVolumeTarget(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	if _, err := e.c.CreateVolume(ctx, agent.CreateVolumeRequest{Name: "vol-x", Size: 1 << 20, Target: "extra"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CreateVolume(ctx, agent.CreateVolumeRequest{Name: "vol-y", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CreateVolume(ctx, agent.CreateVolumeRequest{Name: "vol-z", Size: 1 << 20, Target: "gone"}); !errors.Is(err, blockdev.ErrNotFound) {
		t.Fatalf("create with an unregistered target: %v, want not found", err)
	}
	e.write(t, "vol-x", bytes.Repeat([]byte{7}, 4096), 0)
	for _, tc := range []struct {
		name   string
		req    CreateRequest
		target string
	}{
		{name: "volume's target", req: CreateRequest{Volume: "vol-x"}, target: "extra"},
		{name: "named target wins", req: CreateRequest{Volume: "vol-x", Target: "main"}, target: "main"},
		{name: "default target", req: CreateRequest{Volume: "vol-y"}, target: "main"},
	} {
		if b := e.backup(t, tc.req); b.Target != tc.target {
			t.Errorf("%s: backup went to %q, want %q", tc.name, b.Target, tc.target)
		}
	}
	if _, err := e.c.SetVolumeTarget(ctx, "vol-y", "extra"); err != nil {
		t.Fatal(err)
	}
	if b := e.backup(t, CreateRequest{Volume: "vol-y"}); b.Target != "extra" {
		t.Errorf("after set: backup went to %q, want extra", b.Target)
	}
	if _, err := e.c.SetVolumeTarget(ctx, "vol-y", ""); err != nil {
		t.Fatal(err)
	}
	if b := e.backup(t, CreateRequest{Volume: "vol-y"}); b.Target != "main" {
		t.Errorf("after reset: backup went to %q, want main", b.Target)
	}
}

// A volume whose target left the registry fails its backups with an error
// naming the target and the setting, and a named target still works.
func TestBackupVolumeTargetRemoved(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if _, err := e.c.CreateVolume(t.Context(), agent.CreateVolumeRequest{Name: "vol-x", Size: 1 << 20, Target: "extra"}); err != nil {
		t.Fatal(err)
	}
	if err := e.ts.Registry().Remove("extra"); err != nil {
		t.Fatal(err)
	}
	_, err := CreateBackup(t.Context(), e.c, CreateRequest{Volume: "vol-x"}, nil)
	if !errors.Is(err, blockdev.ErrNotFound) || !strings.Contains(err.Error(), `its target "extra"`) {
		t.Errorf("backup to a removed target: %v, want not found naming the volume's target", err)
	}
	if b := e.backup(t, CreateRequest{Volume: "vol-x", Target: "main"}); b.Target != "main" {
		t.Errorf("backup naming main went to %q", b.Target)
	}
}

// TestFindSkipsUnusableTarget: a backup is found on its target when
// another registered target cannot be opened. Before, the search stopped
// at the first target that failed, hiding the backups of all the others.
func TestFindSkipsUnusableTarget(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if _, err := e.c.CreateVolume(t.Context(), agent.CreateVolumeRequest{Name: "vol-u", Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	b := e.backup(t, CreateRequest{Volume: "vol-u", Target: "main"})
	// "extra" (listed before "main") becomes unusable: its directory is a file.
	if err := os.RemoveAll(e.dirs["extra"]); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.dirs["extra"], nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var got Backup
	if err := e.c.Do(t.Context(), http.MethodGet, "/v1/backups/"+b.ID, nil, &got); err != nil || got.ID != b.ID {
		t.Fatalf("backup info with another target unusable: %+v, %v", got, err)
	}
	err := e.c.Do(t.Context(), http.MethodGet, "/v1/backups/0123456789abcdef0123456789abcdef", nil, &got)
	if err == nil || !strings.Contains(err.Error(), `target "extra"`) {
		t.Errorf("a backup on no target, with one unusable: %v, want an error naming the unusable target", err)
	}
}
