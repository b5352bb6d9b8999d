package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRestoreKilledResumes: `strata server` killed with SIGKILL, or
// stopped with SIGTERM, during a `backup restore` into a new volume; at
// the next start the volume is kept out of use (no file in the FUSE
// mount), and running the same restore again resumes it (resumed_bytes:
// what the first run restored is checked, not fetched again) and ends
// bit-exact. Before, the next start removed the volume (and a SIGTERM
// removed it at once), and the rerun began again from nothing.
func TestRestoreKilledResumes(t *testing.T) {
	needRoot(t)
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) { restoreKilled(t, sig) })
	}
}

func restoreKilled(t *testing.T, sig syscall.Signal) {
	dataDir := t.TempDir()
	s := startServer(t, dataDir)
	s.must("target", "add", "local", "file://"+t.TempDir())
	const size = 384 << 20
	var v volumeJSON
	s.mustJSON(&v, "volume", "create", "vol-a", "--size", "384MiB")
	want := make([]byte, size)
	_, _ = rand.Read(want)
	writeAt(t, v.FUSEPath, want, 0)
	b := s.backup("vol-a")

	// Kill the server once the restore has recorded its first window. A
	// restore that finishes first (a fast round) is tried again under
	// another name.
	state := filepath.Join(dataDir, "restore-state")
	var to string
	for attempt := 0; ; attempt++ {
		if attempt == 3 {
			t.Fatal("every restore finished before the kill")
		}
		to = "vol-r" + string(rune('0'+attempt))
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		cli := exec.CommandContext(ctx, strataBin, "backup", "restore", b.ID, "--to", to, "--json", "--data-dir", dataDir)
		var out bytes.Buffer
		cli.Stdout, cli.Stderr = &out, &out
		if err := cli.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		cliDone := make(chan error, 1)
		go func() { cliDone <- cli.Wait() }()
		killed := false
	poll:
		for {
			select {
			case <-cliDone:
				break poll
			default:
			}
			if _, err := os.Stat(filepath.Join(state, to)); err == nil {
				s.stop(sig)
				killed = true
				<-cliDone
				break
			}
			time.Sleep(time.Millisecond)
		}
		cancel()
		if killed && !strings.Contains(out.String(), `"event":"done"`) {
			break
		}
		t.Logf("attempt %d: the restore finished before the kill:\n%s", attempt, out.String())
		if killed {
			s = startServer(t, dataDir)
		}
	}

	s = startServer(t, dataDir)
	var vols []volumeJSON
	s.mustJSON(&vols, "volume", "ls")
	found := false
	for _, vj := range vols {
		if vj.Name == to {
			found = true
			if _, err := os.Stat(vj.FUSEPath); err == nil {
				t.Errorf("the kept volume %s has its file %s in the FUSE mount; want it out of use", to, vj.FUSEPath)
			}
		}
	}
	if !found {
		t.Fatalf("the volume of the killed restore is gone after the restart: %+v\nserver log:\n%s", vols, s.log.String())
	}
	if !strings.Contains(s.log.String(), "kept the volume of an interrupted restore") {
		t.Errorf("the restart did not log keeping %s", to)
	}
	evs := s.events("backup", "restore", b.ID, "--to", to)
	last := evs[len(evs)-1]
	if last.Event != "done" || last.Restore == nil || !last.Restore.Created || last.Restore.Digest != b.Digest || last.Restore.ResumedBytes == 0 {
		t.Fatalf("rerun of the restore: last event %+v", last)
	}
	t.Logf("the rerun resumed %d of %d bytes", last.Restore.ResumedBytes, size)
	var r volumeJSON
	s.mustJSON(&r, "volume", "info", to)
	got, err := os.ReadFile(r.FUSEPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the resumed restore of %s is not bit-exact", to)
	}
}
