package e2e

import (
	"strings"
	"syscall"
	"testing"
)

// TestVolumeTarget: a volume's backup target, set at create or later,
// listed, persisted across a restart, refused when unregistered, and
// followed by backups that name no target; an if-unchanged backup reuses
// the newest one.
func TestVolumeTarget(t *testing.T) {
	needRoot(t)
	dataDir := t.TempDir()
	s := startServer(t, dataDir)
	s.must("target", "add", "main", "file://"+t.TempDir(), "--default")
	s.must("target", "add", "extra", "file://"+t.TempDir())

	var v volumeJSON
	s.mustJSON(&v, "volume", "create", "vol-a", "16MiB", "--target", "extra")
	if v.Target != "extra" || v.Size != 16<<20 {
		t.Fatalf("create --target extra: %+v", v)
	}
	s.mustJSON(&v, "volume", "create", "vol-b", "--size", "16MiB")
	if v.Target != "" {
		t.Fatalf("create without --target: target %q, want the default", v.Target)
	}
	s.fails(t, `"nowhere"`, "volume", "create", "vol-c", "16MiB", "--target", "nowhere")
	s.fails(t, "size given twice", "volume", "create", "vol-c", "16MiB", "--size", "16MiB")
	s.fails(t, "no size", "volume", "create", "vol-c")

	ls := s.must("volume", "ls")
	for _, want := range []string{"TARGET", "extra", "default"} {
		if !strings.Contains(ls, want) {
			t.Errorf("volume ls does not show %q:\n%s", want, ls)
		}
	}

	for _, tc := range []struct {
		args []string
		want string
	}{
		{args: []string{"--target", "extra"}, want: "extra"},
		{args: []string{"--default-target"}, want: ""},
		{args: []string{"--target", "main"}, want: "main"},
		{args: []string{"--target", ""}, want: ""},
	} {
		s.mustJSON(&v, append([]string{"volume", "set", "vol-b"}, tc.args...)...)
		if v.Target != tc.want {
			t.Errorf("volume set vol-b %v: target %q, want %q", tc.args, v.Target, tc.want)
		}
	}
	s.fails(t, `"nowhere"`, "volume", "set", "vol-b", "--target", "nowhere")
	s.fails(t, "nothing to set", "volume", "set", "vol-b")
	s.fails(t, "contradict", "volume", "set", "vol-b", "--target", "extra", "--default-target")

	// Backups without --target follow the volume's target.
	// A tag's value may hold commas and '=' (they were split as a list).
	b := s.backup("vol-a", "--tag", "run=1", "--tag", "note=a,b=c")
	if b.Target != "extra" || !strings.HasPrefix(b.TargetURL, "file://") || len(b.Tags) != 2 || b.Tags["run"] != "1" || b.Tags["note"] != "a,b=c" || b.Reused {
		t.Errorf("backup of vol-a: %+v, want a new backup on extra tagged run=1 and note=a,b=c", b)
	}
	s.fails(t, `--tag "run": want KEY=VALUE`, "backup", "create", "vol-a", "--tag", "run")
	s.fails(t, `--tag "run" given twice`, "backup", "create", "vol-a", "--tag", "run=1", "--tag", "run=2")
	if b2 := s.backup("vol-b"); b2.Target != "main" {
		t.Errorf("backup of vol-b: target %q, want main (the default)", b2.Target)
	}
	again := s.backup("vol-a", "--policy", "if-unchanged")
	if !again.Reused || again.ID != b.ID {
		t.Errorf("if-unchanged backup of unwritten vol-a: %+v, want %s reused", again, b.ID)
	}
	s.fails(t, `policy "never"`, "backup", "create", "vol-a", "--policy", "never")

	// The setting survives a restart and goes with the volume.
	s.stop(syscall.SIGTERM)
	s = startServer(t, dataDir)
	s.mustJSON(&v, "volume", "info", "vol-a")
	if v.Target != "extra" {
		t.Errorf("after restart: vol-a target %q, want extra", v.Target)
	}
	if out := s.must("volume", "info", "vol-a"); !strings.Contains(out, "target:    extra") {
		t.Errorf("volume info does not show the target:\n%s", out)
	}
	s.must("volume", "rm", "vol-a")
	s.mustJSON(&v, "volume", "create", "vol-a", "16MiB")
	if v.Target != "" {
		t.Errorf("vol-a created again: target %q, want the default", v.Target)
	}
}
