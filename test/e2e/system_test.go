package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// systemEventJSON is one line of `strata system ... --json`.
type systemEventJSON struct {
	Event  string             `json:"event"`
	System *systemSummaryJSON `json:"system"`
	Result *struct {
		Volume string `json:"volume"`
		Status string `json:"status"`
		Error  string `json:"error"`
	} `json:"result"`
	Restore *struct {
		Volumes []struct {
			Agent, Volume, Status, Error string
		} `json:"volumes"`
		TargetsAdded []string `json:"targets_added"`
		Failed       int      `json:"failed"`
	} `json:"restore"`
	Error string `json:"error"`
}

type systemSummaryJSON struct {
	ID            string             `json:"id"`
	Token         uint64             `json:"token"`
	State         string             `json:"state"`
	Started       time.Time          `json:"started"`
	Finished      time.Time          `json:"finished"`
	Error         string             `json:"error"`
	Targets       []string           `json:"targets"`
	CopiesPending []string           `json:"copies_pending"`
	Config        json.RawMessage    `json:"config"`
	Volumes       []volumeBackupJSON `json:"volumes"`
	Known         bool               `json:"known"`
}

type volumeBackupJSON struct {
	Agent       string `json:"agent"`
	Volume      string `json:"volume"`
	Target      string `json:"target"`
	BackupID    string `json:"backup_id"`
	ManifestKey string `json:"manifest_key"`
	Digest      string `json:"digest"`
	Size        int64  `json:"size"`
	Snapshot    string `json:"snapshot"`
	Reused      bool   `json:"reused"`
}

// startServerEnv is startServer with extra environment (fault injection).
func startServerEnv(t *testing.T, dataDir string, env []string, extra ...string) *server {
	t.Helper()
	if len(env) == 0 {
		return startServer(t, dataDir, extra...)
	}
	old := os.Environ()
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		t.Setenv(k, v)
	}
	s := startServer(t, dataDir, extra...)
	os.Clearenv()
	for _, e := range old {
		k, v, _ := strings.Cut(e, "=")
		_ = os.Setenv(k, v)
	}
	return s
}

// systemBackup runs `system backup create --json` and returns the final
// event (done or error) and the error of the command.
func (s *server) systemBackup(args ...string) (*systemEventJSON, error) {
	out, err := s.run(append([]string{"system", "backup", "create", "--json"}, args...)...)
	var last *systemEventJSON
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var ev systemEventJSON
		if json.Unmarshal(sc.Bytes(), &ev) == nil && (ev.Event == "done" || ev.Event == "error" || ev.Event == "accepted") {
			e := ev
			last = &e
		}
	}
	return last, err
}

func (s *server) mustSystemBackup(args ...string) *systemSummaryJSON {
	s.t.Helper()
	ev, err := s.systemBackup(args...)
	if err != nil || ev == nil || ev.Event != "done" || ev.System == nil || ev.System.State != "committed" {
		s.t.Fatalf("system backup create: %v; last event %+v\nserver log:\n%s", err, ev, s.log.String())
	}
	return ev.System
}

func (s *server) systemInfo(id string) *systemSummaryJSON {
	s.t.Helper()
	var info systemSummaryJSON
	out := s.must("system", "backup", "info", id, "--json")
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		s.t.Fatalf("system backup info: %v: %s", err, out)
	}
	return &info
}

// fillRandom writes n random bytes at off of the volume's FUSE file,
// fsynced, and returns them.
func (s *server) fillRandom(vol string, off int64, n int) []byte {
	s.t.Helper()
	var v volumeJSON
	s.mustJSON(&v, "volume", "info", vol)
	p := make([]byte, n)
	_, _ = rand.Read(p)
	writeAt(s.t, v.FUSEPath, p, off)
	return p
}

func (s *server) readVolume(vol string, off int64, n int) []byte {
	s.t.Helper()
	var v volumeJSON
	s.mustJSON(&v, "volume", "info", vol)
	return readAt(s.t, v.FUSEPath, n, off)
}

func writeCreds(t *testing.T, access, secret string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "creds")
	if err := os.WriteFile(p, []byte("AWS_ACCESS_KEY_ID="+access+"\nAWS_SECRET_ACCESS_KEY="+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestSystemBackupRestore is the reproduction of the bug Strata exists to
// prevent: a default fs target and an extra s3 target (versitygw), vol-a
// on the default and vol-b on the extra, 10 MiB of random data in each,
// system backup, extra target removed, both volumes removed, system
// restore: both volumes bit-exact and the extra target back. Then the
// same restore on a wiped data directory with --from.
func TestSystemBackupRestore(t *testing.T) {
	needRoot(t)
	const access, secret, bucket = "strataaccess", "stratasecret1234", "sysbackups"
	endpoint := startVersitygw(t, access, secret, bucket)
	creds := writeCreds(t, access, secret)
	fsDir := t.TempDir()
	s3URL := "s3://" + bucket + "/sys?endpoint=" + endpoint + "&region=us-east-1"

	s := startServer(t, t.TempDir())
	s.must("target", "add", "default", "file://"+fsDir, "--default")
	s.must("target", "add", "extra", s3URL, "--credentials", creds)
	s.must("volume", "create", "vol-a", "64MiB")
	s.must("volume", "create", "vol-b", "64MiB", "--target", "extra")
	const n = 10 << 20
	wantA := s.fillRandom("vol-a", 4<<20, n)
	wantB := s.fillRandom("vol-b", 20<<20, n)

	sys := s.mustSystemBackup()
	if len(sys.Volumes) != 2 {
		t.Fatalf("system backup names %d volumes: %+v", len(sys.Volumes), sys.Volumes)
	}
	for _, v := range sys.Volumes {
		if want := map[string]string{"vol-a": "default", "vol-b": "extra"}[v.Volume]; v.Target != want || v.BackupID == "" {
			t.Fatalf("volume %s: backup %q on %q, want a backup on %q", v.Volume, v.BackupID, v.Target, want)
		}
	}
	// The manifest is on both targets.
	if _, err := os.Stat(filepath.Join(fsDir, "system", sys.ID+".json")); err != nil {
		t.Fatalf("no system manifest on the default target: %v", err)
	}

	s.must("target", "rm", "extra")
	s.must("volume", "rm", "vol-a")
	s.must("volume", "rm", "vol-b")
	out := s.must("system", "restore", sys.ID, "--credentials", "extra="+creds)
	if !strings.Contains(out, "restored") {
		t.Fatalf("system restore output: %q", out)
	}
	MustEqualBytes(t, "vol-a after restore", s.readVolume("vol-a", 4<<20, n), wantA)
	MustEqualBytes(t, "vol-b after restore", s.readVolume("vol-b", 20<<20, n), wantB)
	if z := s.readVolume("vol-a", 0, 4<<20); !bytes.Equal(z, make([]byte, 4<<20)) {
		t.Fatal("vol-a: the unwritten range is not zero after restore")
	}
	if out := s.must("target", "ls"); !strings.Contains(out, "extra") {
		t.Fatalf("target ls after restore has no extra target: %q", out)
	}
	var vb volumeJSON
	s.mustJSON(&vb, "volume", "info", "vol-b")
	if vb.Target != "extra" {
		t.Fatalf("vol-b's target after restore: %q, want extra", vb.Target)
	}
	// A rerun is idempotent: the same data again.
	if out := s.must("system", "restore", sys.ID); strings.Count(out, "restored") != 2 {
		t.Fatalf("second restore: %q", out)
	}
	MustEqualBytes(t, "vol-b after a second restore", s.readVolume("vol-b", 20<<20, n), wantB)
	s.stop(syscall.SIGTERM)

	// A wiped host: a fresh data directory that knows no target.
	w := startServer(t, t.TempDir())
	w.fails(t, "--from", "system", "restore", sys.ID)
	// A URL with a secret in it is refused without showing the secret
	// (the error quoted the URL whole).
	if out, err := w.run("system", "restore", sys.ID, "--from", "s3://AKIA:SECRETVALUE@bkt/p"); err == nil || strings.Contains(afterCommand(err)+out, "SECRETVALUE") {
		t.Errorf("restore --from a URL with user info: %v\n%s; want an error that does not show the secret", err, out)
	}
	w.must("system", "restore", sys.ID, "--from", "file://"+fsDir, "--credentials", "extra="+creds)
	MustEqualBytes(t, "vol-a on a wiped host", w.readVolume("vol-a", 4<<20, n), wantA)
	MustEqualBytes(t, "vol-b on a wiped host", w.readVolume("vol-b", 20<<20, n), wantB)
	if out := w.must("target", "ls"); !strings.Contains(out, "default") || !strings.Contains(out, "extra") {
		t.Fatalf("targets on the wiped host after restore: %q", out)
	}
	// The system backup is listed from the targets' manifests.
	if out := w.must("system", "backup", "ls"); !strings.Contains(out, sys.ID) {
		t.Fatalf("system backup ls on the wiped host: %q", out)
	}
	w.stop(syscall.SIGTERM)

	// Another wiped host restores only vol-b, on the extra target: the
	// system's default target is still the default (before, the first
	// target registered, extra, became it).
	w = startServer(t, t.TempDir())
	w.must("system", "restore", sys.ID, "--from", "file://"+fsDir, "--credentials", "extra="+creds, "--volume", "vol-b")
	MustEqualBytes(t, "vol-b alone on a wiped host", w.readVolume("vol-b", 20<<20, n), wantB)
	var ts []map[string]any
	if err := json.Unmarshal([]byte(w.must("target", "ls", "--json")), &ts); err != nil {
		t.Fatal(err)
	}
	for _, tg := range ts {
		if isDefault, _ := tg["default"].(bool); isDefault != (tg["name"] == "default") {
			t.Fatalf("targets after restoring vol-b alone: %v; want default the default\n%s", ts, w.log.String())
		}
	}
	w.stop(syscall.SIGTERM)

	// Restoring vol-a alone without the extra target's credentials: the
	// restore succeeds, and says the extra target was not recreated.
	w = startServer(t, t.TempDir())
	out = w.must("system", "restore", sys.ID, "--from", "file://"+fsDir, "--volume", "vol-a")
	if !strings.Contains(out, "target not recreated") || !strings.Contains(out, "extra") {
		t.Fatalf("restore of vol-a alone without the extra target's credentials: %q", out)
	}
	MustEqualBytes(t, "vol-a alone on a wiped host", w.readVolume("vol-a", 4<<20, n), wantA)
}

// MustEqualBytes fails with the first differing offset.
func MustEqualBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: first difference at byte %d", what, i)
		}
	}
}

// manifestsIn lists the system manifests an fs target directory holds.
func manifestsIn(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "system"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			out = append(out, id)
		}
	}
	return out
}

// TestSystemBackupKills kills the coordinator at every step of the
// protocol, and the plugin in the middle of a backup. After a restart no
// manifest exists for a failed system backup, and every manifest that
// exists restores bit-exact.
func TestSystemBackupKills(t *testing.T) {
	needRoot(t)
	steps := []struct {
		step          string
		wantCommitted bool
	}{
		{"opened", false}, {"captured", false}, {"snapshotted", false}, {"backup", false}, {"acked", false},
		{"acked-all", false}, {"committing", false}, {"written", true}, {"copied", true},
	}
	for _, st := range steps {
		t.Run(st.step, func(t *testing.T) {
			dataDir, fsA, fsB := t.TempDir(), t.TempDir(), t.TempDir()
			s := startServerEnv(t, dataDir, []string{"STRATA_FAULT=kill-at=" + st.step})
			s.must("target", "add", "a", "file://"+fsA, "--default")
			s.must("target", "add", "b", "file://"+fsB)
			s.must("volume", "create", "vol-a", "16MiB")
			s.must("volume", "create", "vol-b", "16MiB", "--target", "b")
			wantA := s.fillRandom("vol-a", 0, 4<<20)
			wantB := s.fillRandom("vol-b", 8<<20, 4<<20)
			if ev, err := s.systemBackup(); err == nil {
				t.Fatalf("system backup succeeded though the server was to die at %s: %+v", st.step, ev)
			}
			select {
			case <-s.exited:
			case <-time.After(30 * time.Second):
				t.Fatalf("server still running after kill-at=%s", st.step)
			}
			s = startServer(t, dataDir)
			// The restart settles the run in the background.
			var runs []systemSummaryJSON
			deadline := time.Now().Add(30 * time.Second)
			for {
				runs = nil // decode afresh: omitted fields must not keep older values
				s.mustJSON(&runs, "system", "backup", "ls")
				if len(runs) == 1 && (runs[0].State == "failed" && runs[0].Error != "" || runs[0].State == "committed" && len(runs[0].CopiesPending) == 0) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("system backup not settled after restart: %+v\nserver log:\n%s", runs, s.log.String())
				}
				time.Sleep(100 * time.Millisecond)
			}
			id := runs[0].ID
			inA, inB := manifestsIn(t, fsA), manifestsIn(t, fsB)
			if !st.wantCommitted {
				if runs[0].State != "failed" || len(inA)+len(inB) != 0 {
					t.Fatalf("killed at %s: state %s, manifests on a %v, on b %v; want failed and none", st.step, runs[0].State, inA, inB)
				}
				// Its volume backups are released (in the background).
				deadline := time.Now().Add(30 * time.Second)
				for {
					var bs []backupJSON
					s.mustJSON(&bs, "backup", "ls")
					if len(bs) == 0 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("killed at %s: the failed system backup's volume backups remain: %+v", st.step, bs)
					}
					time.Sleep(100 * time.Millisecond)
				}
				// The next system backup works and is restorable.
				id = s.mustSystemBackup().ID
			} else if runs[0].State != "committed" {
				t.Fatalf("killed at %s (manifest written): state %s, want committed", st.step, runs[0].State)
			}
			if got := manifestsIn(t, fsB); len(got) == 0 || got[len(got)-1] != id {
				t.Fatalf("the copy on target b is missing: %v", got)
			}
			s.must("volume", "rm", "vol-a")
			s.must("volume", "rm", "vol-b")
			s.must("system", "restore", id)
			MustEqualBytes(t, "vol-a", s.readVolume("vol-a", 0, 4<<20), wantA)
			MustEqualBytes(t, "vol-b", s.readVolume("vol-b", 8<<20, 4<<20), wantB)
		})
	}
	t.Run("plugin", func(t *testing.T) {
		fsA := t.TempDir()
		s := startServer(t, t.TempDir())
		s.must("target", "add", "a", "file://"+fsA, "--default")
		s.must("volume", "create", "vol-a", "256MiB")
		want := s.fillRandom("vol-a", 0, 128<<20)
		kills, restored := 0, 0
		for round := range 3 {
			// Kill every plugin process of the server while the system
			// backup runs, a little later each round: the first ones that
			// exist after the delay.
			stop, killed := make(chan struct{}), make(chan int, 1)
			go func() {
				n := 0
				defer func() { killed <- n }()
				select {
				case <-time.After(time.Duration(100+200*round) * time.Millisecond):
				case <-stop:
					return
				}
				for n == 0 {
					if n = killChildren(t, s.cmd.Process.Pid, "plugin"); n > 0 {
						return
					}
					select {
					case <-stop:
						return
					case <-time.After(5 * time.Millisecond):
					}
				}
			}()
			ev, err := s.systemBackup()
			close(stop)
			kills += <-killed
			if err != nil {
				ids := manifestsIn(t, fsA)
				if ev == nil || ev.System != nil && slicesContains(ids, ev.System.ID) {
					t.Fatalf("round %d: failed system backup (%v) left a manifest: %v", round, err, ids)
				}
				continue
			}
			s.must("volume", "rm", "vol-a")
			s.must("system", "restore", ev.System.ID)
			MustEqualBytes(t, "vol-a", s.readVolume("vol-a", 0, 128<<20), want)
			restored++
		}
		if kills == 0 {
			t.Fatal("no plugin process was killed during any round's system backup: nothing was tested")
		}
		// Whatever happened, every manifest that exists restores; and one
		// system backup at least must have been committed.
		ids := manifestsIn(t, fsA)
		if len(ids) == 0 {
			s.mustSystemBackup()
			ids = manifestsIn(t, fsA)
		}
		for _, id := range ids {
			s.must("volume", "rm", "vol-a")
			s.must("system", "restore", id)
			MustEqualBytes(t, "vol-a from "+id, s.readVolume("vol-a", 0, 128<<20), want)
			restored++
		}
		t.Logf("%d plugin processes killed in 3 rounds; %d restores compared", kills, restored)
	})
}

// afterCommand is what a CLI error from server.run says after the command
// line it quotes.
func afterCommand(err error) string {
	_, msg, _ := strings.Cut(err.Error(), ": exit status ")
	return msg
}

// byVolume maps a system backup's volumes by name.
func byVolume(sys *systemSummaryJSON) map[string]volumeBackupJSON {
	m := map[string]volumeBackupJSON{}
	for _, v := range sys.Volumes {
		m[v.Volume] = v
	}
	return m
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// childPIDs lists the child processes of pid (from /proc: pgrep is not
// on every machine).
func childPIDs(pid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var pids []int
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // exited meanwhile
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 || f[1] != strconv.Itoa(pid) {
			continue
		}
		if c, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil {
			pids = append(pids, c)
		}
	}
	return pids
}

// killChildren SIGKILLs the child processes of pid whose command line
// contains substr, and returns how many it killed.
func killChildren(t *testing.T, pid int, substr string) int {
	n := 0
	for _, c := range childPIDs(pid) {
		cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(c) + "/cmdline")
		if bytes.Contains(cmdline, []byte(substr)) && syscall.Kill(c, syscall.SIGKILL) == nil {
			t.Logf("killed plugin process %d", c)
			n++
		}
	}
	return n
}

// apiClient talks to a server's control socket directly.
func apiClient(s *server) *http.Client {
	sock := filepath.Join(s.dataDir, "strata.sock")
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
}

func postAck(t *testing.T, s *server, ack map[string]any) (int, string) {
	t.Helper()
	b, _ := json.Marshal(ack)
	resp, err := apiClient(s).Post("http://strata/v1/system/acks", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var eb struct {
		Error string `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&eb)
	return resp.StatusCode, eb.Error
}

// TestSystemBackupFencing delays one volume's acknowledgement past the
// others: nothing is written meanwhile, stale, foreign and forged acks are
// refused and change nothing; a timeout fails the system backup with no
// manifest; a hand-corrupted manifest is refused by restore.
func TestSystemBackupFencing(t *testing.T) {
	needRoot(t)
	dataDir, fsA, fsB := t.TempDir(), t.TempDir(), t.TempDir()
	s := startServerEnv(t, dataDir, []string{"STRATA_FAULT=delay-ack=vol-b:6s"})
	s.must("target", "add", "a", "file://"+fsA, "--default")
	s.must("target", "add", "b", "file://"+fsB)
	s.must("volume", "create", "vol-a", "16MiB")
	s.must("volume", "create", "vol-b", "16MiB", "--target", "b")
	s.fillRandom("vol-a", 0, 1<<20)
	wantB := s.fillRandom("vol-b", 0, 1<<20)

	// A system backup that times out while vol-b's ack is held fails
	// and leaves no manifest.
	if ev, err := s.systemBackup("--timeout", "3s"); err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("system backup with a 3 s timeout and a 6 s ack delay: %v, %+v", err, ev)
	}
	if a, b := manifestsIn(t, fsA), manifestsIn(t, fsB); len(a)+len(b) != 0 {
		t.Fatalf("a timed-out system backup left manifests: %v %v", a, b)
	}
	var runs []systemSummaryJSON
	s.mustJSON(&runs, "system", "backup", "ls")
	if len(runs) != 1 || runs[0].State != "failed" {
		t.Fatalf("after the timeout: %+v", runs)
	}
	stale := runs[0]
	// Its volume backups were released: no manifest names them.
	for _, vol := range []string{"vol-a", "vol-b"} {
		var bs []backupJSON
		s.mustJSON(&bs, "backup", "ls", vol)
		if len(bs) != 0 {
			t.Fatalf("the failed system backup left %s's backups: %+v", vol, bs)
		}
	}

	// Now one that waits for the delayed ack.
	out := s.must("system", "backup", "create", "--no-wait")
	id := strings.TrimSpace(out)
	deadline := time.Now().Add(30 * time.Second)
	var open *systemSummaryJSON
	for {
		open = s.systemInfo(id)
		if open.State == "open" && len(manifestsIn(t, fsA)) == 0 {
			break
		}
		if time.Now().After(deadline) || open.State != "open" {
			t.Fatalf("system backup %s: state %s, want open while vol-b's ack is held", id, open.State)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// vol-a's backup exists; its ack is in. Acks that must change nothing:
	backups := func(vol string) []backupJSON {
		var bs []backupJSON
		s.mustJSON(&bs, "backup", "ls", vol, "--target", map[string]string{"vol-a": "a", "vol-b": "b"}[vol])
		return bs
	}
	var volA backupJSON
	deadline = time.Now().Add(30 * time.Second)
	for {
		// vol-a's ack is accepted (info lists the acknowledged volumes
		// of an open system backup); vol-b's is held.
		if info := s.systemInfo(id); len(info.Volumes) == 1 && info.Volumes[0].Volume == "vol-a" {
			bs := backups("vol-a")
			volA = bs[len(bs)-1]
			if volA.ID != info.Volumes[0].BackupID {
				t.Fatalf("vol-a's acknowledged backup %s is not its newest %s", info.Volumes[0].BackupID, volA.ID)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("vol-a's backup was never acknowledged")
		}
		time.Sleep(50 * time.Millisecond)
	}
	forged := map[string]any{"system": id, "token": open.Token, "agent": "local", "volume": "vol-b", "backup_id": "00000000000000000000000000000000",
		"target": "b", "manifest_key": "backups/vol-b/00000000000000000000000000000000", "digest": volA.Digest, "size": volA.Size, "snapshot": "sys-" + id}
	cases := []struct {
		name string
		edit func(map[string]any)
		want string
	}{
		{"stale token", func(a map[string]any) { a["token"] = stale.Token }, "token"},
		{"failed system backup", func(a map[string]any) { a["system"] = stale.ID; a["token"] = stale.Token }, "failed"},
		{"foreign volume", func(a map[string]any) { a["volume"] = "vol-z" }, "does not have"},
		{"wrong target", func(a map[string]any) { a["target"] = "a" }, "target"},
		{"missing backup", func(a map[string]any) {}, "does not load"},
		{"not the system backup's snapshot", func(a map[string]any) { a["snapshot"] = "monday" }, "snapshot"},
		{"conflicting duplicate", func(a map[string]any) {
			a["volume"], a["target"], a["snapshot"] = "vol-a", "a", "sys-"+id
		}, "already acknowledged"},
	}
	for _, tc := range cases {
		ack := map[string]any{}
		for k, v := range forged {
			ack[k] = v
		}
		tc.edit(ack)
		code, msg := postAck(t, s, ack)
		if code < 400 || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: answered %d %q, want an error saying %q", tc.name, code, msg, tc.want)
		}
	}
	if got := s.systemInfo(id); got.State != "open" || len(manifestsIn(t, fsA)) != 0 {
		t.Fatalf("refused acks changed the system backup: %+v", got)
	}
	// The delayed ack arrives; the system backup commits naming vol-b's
	// real backup.
	deadline = time.Now().Add(60 * time.Second)
	var done *systemSummaryJSON
	for {
		done = s.systemInfo(id)
		if done.State != "open" && done.State != "committing" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("system backup %s still %s", id, done.State)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if done.State != "committed" {
		t.Fatalf("system backup %s: %s (%s)", id, done.State, done.Error)
	}
	bs := backups("vol-b")
	found := false
	for _, v := range done.Volumes {
		if v.Volume == "vol-b" {
			found = v.BackupID == bs[len(bs)-1].ID
		}
	}
	if !found {
		t.Fatalf("the manifest does not name vol-b's backup %s: %+v", bs[len(bs)-1].ID, done.Volumes)
	}
	// An ack for a committed system backup changes nothing either.
	if code, msg := postAck(t, s, forged); code < 400 || !strings.Contains(msg, "committed") {
		t.Errorf("ack after the commit: %d %q", code, msg)
	}
	// A volume backup the system backup holds cannot be deleted on its own.
	s.fails(t, "held by a system backup", "backup", "rm", bs[len(bs)-1].ID, "--target", "b")

	// A hand-corrupted manifest is refused with a clear error.
	p := filepath.Join(fsA, "system", id+".json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	corrupt := bytes.Replace(b, []byte(`"vol-b"`), []byte(`"vol-c"`), 1)
	if err := os.WriteFile(p, corrupt, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fsB, "system", id+".json"), corrupt, 0o600); err != nil {
		t.Fatal(err)
	}
	s.must("volume", "rm", "vol-b")
	s.fails(t, "checksum", "system", "restore", id)
	// With one good copy back, restore works.
	if err := os.WriteFile(filepath.Join(fsB, "system", id+".json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	s.must("system", "restore", id)
	MustEqualBytes(t, "vol-b", s.readVolume("vol-b", 0, 1<<20), wantB)

	// system backup rm removes the manifests and the volume backups.
	s.must("system", "backup", "rm", id)
	if a, b := manifestsIn(t, fsA), manifestsIn(t, fsB); len(a)+len(b) != 0 {
		t.Fatalf("system backup rm left manifests: %v %v", a, b)
	}
	for _, v := range done.Volumes {
		if bs := backups(v.Volume); len(bs) != 0 && bs[len(bs)-1].ID == v.BackupID {
			t.Errorf("system backup rm left volume %s's backup %s", v.Volume, v.BackupID)
		}
	}
}

// TestSystemBackupWriters: writes acknowledged before `system backup
// create` starts are always in the restore, with a writer running during
// the backup, over 20 rounds.
func TestSystemBackupWriters(t *testing.T) {
	needRoot(t)
	fsA := t.TempDir()
	s := startServer(t, t.TempDir())
	s.must("target", "add", "a", "file://"+fsA, "--default")
	const blocks, bs = 1024, 4096 // 4 MiB
	s.must("volume", "create", "vol-w", strconv.Itoa(blocks*bs))
	var v volumeJSON
	s.mustJSON(&v, "volume", "info", "vol-w")
	f, err := os.OpenFile(v.FUSEPath, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	// The writer stamps block i with a counter; acked[i] is the last
	// counter whose write returned.
	type state struct{ acked [blocks]uint64 }
	snapCh := make(chan chan state)
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		var st state
		buf := make([]byte, bs)
		var ctr uint64
		for i := 0; ; i = (i*7 + 13) % blocks {
			select {
			case <-stop:
				writerDone <- nil
				return
			case reply := <-snapCh:
				reply <- st
			default:
			}
			ctr++
			for j := 0; j < bs; j += 16 {
				binUint64(buf[j:], uint64(i))
				binUint64(buf[j+8:], ctr)
			}
			if _, err := f.WriteAt(buf, int64(i)*bs); err != nil {
				writerDone <- err
				return
			}
			st.acked[i] = ctr
		}
	}()
	for round := range 20 {
		reply := make(chan state)
		snapCh <- reply
		before := <-reply // every write acknowledged before the create starts
		sys := s.mustSystemBackup()
		if len(sys.Volumes) != 1 {
			t.Fatalf("round %d: %+v", round, sys.Volumes)
		}
		chk := fmt.Sprintf("chk-%d", round)
		s.must("backup", "restore", sys.Volumes[0].BackupID, "--to", chk)
		got := s.readVolume(chk, 0, blocks*bs)
		for i := range blocks {
			b := got[i*bs : (i+1)*bs]
			idx, c := readUint64(b), readUint64(b[8:])
			if before.acked[i] == 0 {
				continue
			}
			if idx != uint64(i) || c < before.acked[i] {
				t.Fatalf("round %d: block %d holds (block %d, counter %d); the write of counter %d was acknowledged before the system backup started", round, i, idx, c, before.acked[i])
			}
		}
		s.must("volume", "rm", chk)
	}
	close(stop)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	// The last round through a whole system restore: the writer stopped,
	// every write is acknowledged, the volume comes back equal.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want := s.readVolume("vol-w", 0, blocks*bs)
	sys := s.mustSystemBackup("--policy", "if-unchanged")
	s.must("volume", "rm", "vol-w")
	s.must("system", "restore", sys.ID)
	MustEqualBytes(t, "vol-w after system restore", s.readVolume("vol-w", 0, blocks*bs), want)
}

// startTwoVolumes starts a server with a default fs target "a" and the
// 16 MiB volumes vol-a and vol-b, each with 1 MiB of random data at 0; it
// returns vol-a's.
func startTwoVolumes(t *testing.T) (*server, []byte) {
	t.Helper()
	s := startServer(t, t.TempDir())
	s.must("target", "add", "a", "file://"+t.TempDir(), "--default")
	s.must("volume", "create", "vol-a", "16MiB")
	s.must("volume", "create", "vol-b", "16MiB")
	a := s.fillRandom("vol-a", 0, 1<<20)
	s.fillRandom("vol-b", 0, 1<<20)
	return s, a
}

// TestSystemBackupPolicies: if-unchanged reuses a volume's backup only
// while change tracking shows no write since it; an attached volume is
// restored only with --force.
func TestSystemBackupPolicies(t *testing.T) {
	needRoot(t)
	s, _ := startTwoVolumes(t)
	// A negative timeout is refused (it silently became the 6h default).
	s.fails(t, "want a positive duration", "system", "backup", "create", "--timeout", "-5m")
	s.fails(t, "policy \"sometimes\"", "system", "backup", "create", "--policy", "sometimes")
	first := s.mustSystemBackup("--policy", "if-unchanged")
	byVol := func(sys *systemSummaryJSON) map[string]string {
		m := map[string]string{}
		for _, v := range sys.Volumes {
			m[v.Volume] = v.BackupID
			if v.Reused != (v.Volume == "vol-b" && sys != first) {
				t.Errorf("volume %s: reused %v", v.Volume, v.Reused)
			}
		}
		return m
	}
	b1 := byVol(first)
	s.must("snapshot", "create", "vol-a", "sys-before-upgrade") // a user's
	wantA := s.fillRandom("vol-a", 2<<20, 1<<20)                // vol-b unchanged
	second := s.mustSystemBackup("--policy", "if-unchanged")
	b2 := byVol(second)
	// The second system backup deleted the first's snapshot of vol-a, not
	// the user's that merely looks like one.
	var snaps []snapshotJSON
	s.mustJSON(&snaps, "snapshot", "ls", "vol-a")
	names := map[string]bool{}
	for _, sn := range snaps {
		names[sn.Name] = true
	}
	if !names["sys-before-upgrade"] || !names["sys-"+second.ID] || names["sys-"+first.ID] {
		t.Errorf("vol-a's snapshots after the second system backup: %v; want sys-before-upgrade and sys-%s, not sys-%s", names, second.ID, first.ID)
	}
	if b2["vol-b"] != b1["vol-b"] || b2["vol-a"] == b1["vol-a"] {
		t.Fatalf("if-unchanged: first %v, second %v; want vol-b's backup reused and a new one of vol-a", b1, b2)
	}
	// Removing the first system backup keeps vol-b's backup: the second
	// names it.
	s.must("system", "backup", "rm", first.ID)
	var bs []backupJSON
	s.mustJSON(&bs, "backup", "ls", "vol-b")
	if len(bs) != 1 || bs[0].ID != b2["vol-b"] {
		t.Fatalf("vol-b's backups after removing the first system backup: %+v", bs)
	}
	// That backup still carries the first system backup's tag, so it
	// cannot be named again as held: if-unchanged takes a new one of
	// vol-b instead of failing the system backup.
	if b3 := byVolume(s.mustSystemBackup("--policy", "if-unchanged")); b3["vol-b"].BackupID == "" || b3["vol-b"].Reused || b3["vol-b"].BackupID == b2["vol-b"] {
		t.Errorf("vol-b after its backup's system backup was removed: %+v (was %s); want a new backup", b3["vol-b"], b2["vol-b"])
	}

	// Attached: refused, then --force.
	s.must("volume", "attach", "vol-a")
	s.fillRandom("vol-a", 2<<20, 1<<20)
	// The volume's line says why; the others are restored.
	if out, err := s.run("system", "restore", second.ID); err == nil || !strings.Contains(err.Error(), "attached at /dev/loop") ||
		!strings.Contains(err.Error(), "--force") || !strings.Contains(out, "restored") {
		t.Fatalf("restore over an attached volume: %v; output %q", err, out)
	}
	s.must("system", "restore", second.ID, "--force")
	MustEqualBytes(t, "vol-a after a forced restore", s.readVolume("vol-a", 2<<20, 1<<20), wantA)

	// Mounted: --force unmounts and detaches; --volume restores only it.
	mnt := t.TempDir()
	s.must("volume", "create", "vol-m", "64MiB")
	s.must("volume", "mount", "vol-m", mnt, "--mkfs", "ext4")
	third := s.mustSystemBackup()
	s.fails(t, "no volume", "system", "restore", third.ID, "--volume", "vol-zz")
	s.must("system", "restore", third.ID, "--force", "--volume", "vol-m")
	var vm volumeJSON
	s.mustJSON(&vm, "volume", "info", "vol-m")
	if vm.Attachment != nil {
		t.Fatalf("vol-m still attached after a forced restore: %+v", vm.Attachment)
	}
}

func binUint64(b []byte, v uint64) {
	for k := range 8 {
		b[k] = byte(v >> (8 * k))
	}
}

func readUint64(b []byte) uint64 {
	var v uint64
	for k := range 8 {
		v |= uint64(b[k]) << (8 * k)
	}
	return v
}

// TestSystemBackupTwoAgents: one coordinator drives two `strata server`
// processes (the second with --coordinator=false) in one system backup,
// and restores a volume of the second agent there.
func TestSystemBackupTwoAgents(t *testing.T) {
	needRoot(t)
	fsA := t.TempDir()
	a := startServer(t, t.TempDir())
	b := startServer(t, t.TempDir(), "--coordinator=false")
	a.must("target", "add", "a", "file://"+fsA, "--default")
	a.must("volume", "create", "vol-a", "16MiB")
	b.must("volume", "create", "vol-b", "16MiB")
	wantA := a.fillRandom("vol-a", 0, 2<<20)
	wantB := b.fillRandom("vol-b", 4<<20, 2<<20)
	b.fails(t, "404", "system", "backup", "ls") // no coordinator there
	a.must("agent", "add", "b", filepath.Join(b.dataDir, "strata.sock"))
	// One volume name on two agents, one target: refused, clearly.
	b.must("volume", "create", "vol-a", "16MiB")
	if _, err := a.systemBackup(); err == nil || !strings.Contains(err.Error(), `volume "vol-a" exists on agents "local" and "b"`) {
		t.Fatalf("system backup with vol-a on two agents and one target: %v", err)
	}
	b.must("volume", "rm", "vol-a")
	if out := a.must("agent", "ls"); !strings.Contains(out, "local") || !strings.Contains(out, " b ") && !strings.Contains(out, "\nb ") {
		t.Fatalf("agent ls: %q", out)
	}
	sys := a.mustSystemBackup("--consistency-group")
	agents := map[string]string{}
	for _, v := range sys.Volumes {
		agents[v.Volume] = v.Agent
	}
	if agents["vol-a"] != "local" || agents["vol-b"] != "b" {
		t.Fatalf("system backup volumes: %+v", sys.Volumes)
	}
	// Agent b got the target registered by the coordinator.
	if out := b.must("target", "ls"); !strings.Contains(out, "file://"+fsA) {
		t.Fatalf("agent b's targets: %q", out)
	}
	a.must("volume", "rm", "vol-a")
	b.must("volume", "rm", "vol-b")
	a.must("system", "restore", sys.ID)
	MustEqualBytes(t, "vol-a", a.readVolume("vol-a", 0, 2<<20), wantA)
	MustEqualBytes(t, "vol-b on agent b", b.readVolume("vol-b", 4<<20, 2<<20), wantB)
}

// TestSystemBackupAgentKills kills -9 a second agent in the middle of a
// system backup (the backup fails and leaves no manifest; after the agent
// restarts the next one commits), and kills the coordinator's server in
// the middle of a system restore (the rerun completes bit-exact).
func TestSystemBackupAgentKills(t *testing.T) {
	needRoot(t)
	fsA := t.TempDir()
	aDir, bDir := t.TempDir(), t.TempDir()
	a := startServer(t, aDir)
	b := startServer(t, bDir, "--coordinator=false")
	a.must("target", "add", "a", "file://"+fsA, "--default")
	a.must("volume", "create", "vol-a", "16MiB")
	b.must("volume", "create", "vol-b", "512MiB")
	wantA := a.fillRandom("vol-a", 0, 1<<20)
	wantB := b.fillRandom("vol-b", 0, 256<<20)
	a.must("agent", "add", "b", filepath.Join(bDir, "strata.sock"))

	done := make(chan struct{})
	var plugins []int // b's plugin processes when it was killed
	go func() {
		defer close(done)
		// Kill b as soon as it has started a plugin process: the system
		// backup has reached it (the coordinator registers the target on
		// b, then b backs vol-b up through that target's plugin). A fixed
		// sleep raced the backup, which the plugins' data plane made
		// faster than the sleep.
		deadline := time.Now().Add(30 * time.Second)
		for len(plugins) == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
			plugins = childPIDs(b.cmd.Process.Pid)
		}
		_ = b.cmd.Process.Kill()
	}()
	ev, err := a.systemBackup()
	<-done
	// A plugin dies with its host.
	for _, pid := range plugins {
		deadline := time.Now().Add(10 * time.Second)
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				t.Fatalf("plugin process %d outlived its killed host", pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err == nil {
		t.Fatalf("system backup succeeded though agent b was killed: %+v", ev)
	}
	if ids := manifestsIn(t, fsA); len(ids) != 0 {
		t.Fatalf("a system backup that lost an agent left manifests: %v", ids)
	}
	<-b.exited
	b = startServer(t, bDir, "--coordinator=false")
	sys := a.mustSystemBackup()

	// Kill the coordinator's server while it restores vol-b on agent b,
	// then rerun: the restore resumes and ends bit-exact.
	b.must("volume", "rm", "vol-b")
	a.must("volume", "rm", "vol-a")
	done = make(chan struct{})
	go func() {
		defer close(done)
		// As soon as the restore has made vol-b again on b (a fixed
		// sleep could miss the restore, and the rerun then tested
		// nothing).
		meta := filepath.Join(bDir, "store", "volumes", "vol-b.meta")
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			if _, err := os.Stat(meta); err == nil {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		_ = a.cmd.Process.Kill()
	}()
	if out, err := a.run("system", "restore", sys.ID); err == nil {
		t.Fatalf("system restore finished before its coordinator was killed: the rerun would test nothing\n%s", out)
	}
	<-done
	<-a.exited
	a = startServer(t, aDir)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := a.run("system", "restore", sys.ID)
		if err == nil {
			break
		}
		// The agent may still be finishing the restore the dead
		// coordinator asked for: that volume is busy for a moment.
		if !strings.Contains(err.Error(), "in use") && !strings.Contains(err.Error(), "busy") || time.Now().After(deadline) {
			t.Fatalf("rerun of the restore: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
	}
	MustEqualBytes(t, "vol-a", a.readVolume("vol-a", 0, 1<<20), wantA)
	MustEqualBytes(t, "vol-b", b.readVolume("vol-b", 0, 256<<20), wantB)
}

// TestSystemRestoreRerun: a system restore run again skips a volume an
// earlier run restored only while it still holds the backup's data; a
// volume written since is restored again.
func TestSystemRestoreRerun(t *testing.T) {
	needRoot(t)
	s, wantA := startTwoVolumes(t)
	sys := s.mustSystemBackup()

	// vol-b attached: every run fails it, so the restore stays unfinished
	// and its record of vol-a stays.
	s.must("volume", "attach", "vol-b")
	defer s.must("volume", "detach", "vol-b")
	restore := func(want string) {
		t.Helper()
		out, err := s.run("system", "restore", sys.ID)
		// The per-volume lines go to stderr, which err carries.
		if err == nil || !strings.Contains(err.Error(), "local/vol-b: failed") || !strings.Contains(err.Error(), "local/vol-a: "+want) {
			t.Fatalf("system restore: %v; output %q; want vol-a %s and vol-b failed", err, out, want)
		}
	}
	s.fillRandom("vol-a", 0, 1<<20)
	restore("restored")
	MustEqualBytes(t, "vol-a restored", s.readVolume("vol-a", 0, 1<<20), wantA)
	restore("skipped")
	// Written since the run that restored it: restored again, not skipped.
	s.fillRandom("vol-a", 4<<20, 1<<20)
	restore("restored")
	MustEqualBytes(t, "vol-a restored again", s.readVolume("vol-a", 0, 1<<20), wantA)
	MustEqualBytes(t, "vol-a's later write undone", s.readVolume("vol-a", 4<<20, 1<<20), make([]byte, 1<<20))
}

// TestSystemBackupRmTargetMoved: `system backup rm` refuses when a target
// of the system backup is registered again at another URL: the copy at
// the old URL would outlive the removal and name the volume backups
// deleted with it. Before, only the name was checked; the delete of the
// copy went to the new URL and found nothing.
func TestSystemBackupRmTargetMoved(t *testing.T) {
	needRoot(t)
	s := startServer(t, t.TempDir(), "--fuse", "off")
	dirA, dirX, dirY := t.TempDir(), t.TempDir(), t.TempDir()
	s.must("target", "add", "a", "file://"+dirA, "--default")
	s.must("target", "add", "x", "file://"+dirX)
	s.must("volume", "create", "vol-a", "4MiB")
	sys := s.mustSystemBackup()
	s.must("target", "rm", "x")
	s.must("target", "add", "x", "file://"+dirY)
	s.fails(t, "registered at file://"+dirY, "system", "backup", "rm", sys.ID)
	if got := manifestsIn(t, dirX); !slicesContains(got, sys.ID) {
		t.Fatalf("the copy at the old location is gone: %v", got)
	}
	var bs []backupJSON
	s.mustJSON(&bs, "backup", "ls", "vol-a")
	if len(bs) != 1 || bs[0].ID != byVolume(sys)["vol-a"].BackupID {
		t.Fatalf("vol-a's backups after the refused removal: %+v", bs)
	}
	// Registered again at another URL that reaches the same storage (a
	// share mounted elsewhere; here a symlink) and holds the copy, the
	// removal goes through.
	alias := filepath.Join(t.TempDir(), "alias")
	if err := os.Symlink(dirX, alias); err != nil {
		t.Fatal(err)
	}
	s.must("target", "rm", "x")
	s.must("target", "add", "x", "file://"+alias)
	s.must("system", "backup", "rm", sys.ID)
	if got := manifestsIn(t, dirX); slicesContains(got, sys.ID) {
		t.Fatalf("the copy is left after the removal: %v", got)
	}
}
