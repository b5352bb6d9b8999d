package backupd_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/plugins"
)

// The crash tests re-execute this test binary as TestCrashChild, which
// runs one backup or restore of a real volume to an fs target and prints a
// line per progress event; the parent SIGKILLs it after a chosen number of
// lines and checks what is left. After each line the child waits for the
// parent's go-ahead on stdin, so the kill lands while the child is inside
// the event it was meant to land in: without it, a loaded parent read the
// line late and a small restore had finished (and removed its state file)
// before the kill.
const (
	crashEnvMode   = "STRATA_BACKUP_CRASH_MODE" // "backup" or "restore"
	crashEnvStore  = "STRATA_BACKUP_CRASH_STORE"
	crashEnvTarget = "STRATA_BACKUP_CRASH_TARGET"
	crashEnvKey    = "STRATA_BACKUP_CRASH_KEY"   // restore: manifest key
	crashEnvState  = "STRATA_BACKUP_CRASH_STATE" // restore: state file
	crashEnvNow    = "STRATA_BACKUP_CRASH_NOW"   // gc: the clock, Unix nanoseconds
	crashPackSize  = 256 << 10
	// The GC crash test's deadline and grace, on its fake clock.
	crashMaxDur = time.Minute
	crashGrace  = 20 * time.Minute // longer than crashMaxDur + 15 min (backupd's graceMargin)
)

// pausingTarget prints a progress line before each Delete and waits for
// the parent's go-ahead, so that the parent can kill a GC between any two
// of its deletes.
type pausingTarget struct {
	plugins.Target
}

func (p pausingTarget) Delete(ctx context.Context, keys []string) error {
	fmt.Fprintf(os.Stdout, "P delete %s\n", strings.Join(keys, " "))
	var b [1]byte
	_, _ = os.Stdin.Read(b[:])
	return p.Target.Delete(ctx, keys)
}

func TestCrashChild(t *testing.T) {
	mode := os.Getenv(crashEnvMode)
	if mode == "" {
		t.Skip("helper process of TestCrashBackup, TestCrashRestore and TestCrashGC")
	}
	ctx := context.Background()
	tg := backupd.NewFSTarget(t, os.Getenv(crashEnvTarget))
	if mode == "gc" {
		ns, err := strconv.ParseInt(os.Getenv(crashEnvNow), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		r := backupd.Open(pausingTarget{tg}, nil)
		if _, err := r.GC(ctx, backupd.GCOptions{Grace: crashGrace, MaxDuration: crashMaxDur, Now: func() time.Time { return time.Unix(0, ns) }}); err != nil {
			fmt.Fprintf(os.Stdout, "E %q\n", err.Error())
			t.Fatal(err)
		}
		fmt.Fprintln(os.Stdout, "DONE")
		return
	}
	m := openManager(t, os.Getenv(crashEnvStore))
	r := backupd.Open(tg, &backupd.Options{PackSize: crashPackSize})
	progress := func(p backupd.Progress) {
		// One write(2) per line, so the parent counts whole events.
		fmt.Fprintf(os.Stdout, "P %s %d %d\n", p.Phase, p.BytesScanned, p.BytesWritten)
		// Wait for the go-ahead (or the kill).
		var b [1]byte
		_, _ = os.Stdin.Read(b[:])
	}
	var err error
	switch mode {
	case "backup":
		_, err = r.Backup(ctx, backupd.BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: device(t, m, "vol-a@s1"), Progress: progress})
	case "restore":
		_, err = r.Restore(ctx, os.Getenv(crashEnvKey), backupd.VolumeDestination{V: device(t, m, "dst")},
			backupd.RestoreOptions{DestZeroed: true, StatePath: os.Getenv(crashEnvState), Progress: progress})
	}
	if err != nil {
		fmt.Fprintf(os.Stdout, "E %q\n", err.Error())
		t.Fatal(err)
	}
	fmt.Fprintln(os.Stdout, "DONE")
}

// runAndKill runs the child and SIGKILLs it after it printed lines
// progress lines; it fails the test if the child finished first.
func runAndKill(t *testing.T, env []string, lines int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestCrashChild$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	goAhead, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer goAhead.Close()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	seen := 0
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "E ") || line == "DONE" {
			_ = cmd.Wait()
			t.Fatalf("child ended before the kill: %s", line)
		}
		if strings.HasPrefix(line, "P ") {
			seen++
			if seen == lines {
				break
			}
			if _, err := goAhead.Write([]byte{'\n'}); err != nil {
				t.Fatalf("go-ahead to the child: %v", err)
			}
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if seen < lines {
		t.Fatalf("child printed %d progress lines, expected %d", seen, lines)
	}
	t.Logf("child killed after %d progress events", seen)
}

// makeVolume creates vol-a of size with random data and snapshot s1, and
// returns the data.
func makeVolume(t *testing.T, store string, size int64) []byte {
	t.Helper()
	m := openManager(t, store)
	if _, err := m.Create(t.Context(), "vol-a", size); err != nil {
		t.Fatal(err)
	}
	v, rel, err := m.Open(t.Context(), "vol-a")
	if err != nil {
		t.Fatal(err)
	}
	data := backupd.RandomData(rand.New(rand.NewPCG(51, 52)), int(size))
	write(t, v, data, 0)
	rel()
	snapshot(t, m, "vol-a", "s1")
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	return data
}

// TestCrashBackup kills a backup mid-way (after 3 of its 8 map pages): no
// manifest exists, and a rerun
// succeeds, reuses the chunks the killed run uploaded, and restores
// bit-exact.
func TestCrashBackup(t *testing.T) {
	t.Parallel()
	const size = 64 << 20
	store, tdir := t.TempDir(), t.TempDir()
	data := makeVolume(t, store, size)
	runAndKill(t, []string{crashEnvMode + "=backup", crashEnvStore + "=" + store, crashEnvTarget + "=" + tdir}, 4)

	tg := backupd.NewFSTarget(t, tdir)
	for o, err := range tg.List(t.Context(), "backups/", "") {
		if err != nil {
			t.Fatal(err)
		}
		t.Fatalf("manifest %s exists after the backup was killed", o.Key)
	}
	var left int64
	for o, err := range tg.List(t.Context(), "packs/", "") {
		if err != nil {
			t.Fatal(err)
		}
		left += o.Size
	}
	if left == 0 {
		t.Fatalf("the killed backup left no pack: it was killed too early to test reuse")
	}
	m := openManager(t, store)
	r := backupd.Open(tg, &backupd.Options{PackSize: crashPackSize})
	res, err := r.Backup(t.Context(), backupd.BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: device(t, m, "vol-a@s1")})
	if err != nil {
		t.Fatalf("rerun: %v", err)
	}
	t.Logf("killed run left %d bytes of packs; rerun uploaded %d bytes, reused %d chunks", left, res.BytesUploaded, res.ChunksDedup)
	if res.ChunksDedup == 0 || res.BytesUploaded >= size {
		t.Errorf("rerun uploaded %d bytes and reused %d chunks: the killed run's chunks were not reused", res.BytesUploaded, res.ChunksDedup)
	}
	backupd.MustEqual(t, "restored after the rerun", restoreInto(t, m, r, res.ManifestKey, "restored", size), data)
}

// TestCrashGC kills a GC (a real process) between two of its deletes: before
// the first, between a pack's index and the pack, and after whole objects.
// While the dead run's lease is fresh, another GC is refused; once it is
// abandoned, a GC removes it and finishes the sweep. The backup that was
// kept restores bit-exact and verifies, and the deleted backup's data is
// gone.
func TestCrashGC(t *testing.T) {
	t.Parallel()
	// Each pack takes three deletes (index, pack, mark): the kill lands
	// before the first, between the first pack's index and the pack, and
	// after the first pack whole.
	for _, kill := range []int{1, 2, 4} {
		t.Run(fmt.Sprintf("after-%d-deletes", kill-1), func(t *testing.T) {
			t.Parallel()
			const size = 8 << 20
			ctx := t.Context()
			store, tdir := t.TempDir(), t.TempDir()
			makeVolume(t, store, size)
			m := openManager(t, store)
			tg := backupd.NewFSTarget(t, tdir)
			r := backupd.Open(tg, &backupd.Options{PackSize: 64 << 10})
			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			at := func(d time.Duration) func() time.Time { return func() time.Time { return t0.Add(d) } }
			backup := func(snap string) *backupd.Result {
				res, err := r.Backup(ctx, backupd.BackupOptions{Volume: "vol-a", Snapshot: snap, Source: device(t, m, "vol-a@"+snap), MaxDuration: crashMaxDur, Now: at(0)})
				if err != nil {
					t.Fatal(err)
				}
				return res
			}
			old := backup("s1")
			// The second half changes: the old backup's packs of it become
			// garbage once it is deleted.
			v, rel, err := m.Open(ctx, "vol-a")
			if err != nil {
				t.Fatal(err)
			}
			write(t, v, backupd.RandomData(rand.New(rand.NewPCG(81, 82)), size/2), size/2)
			rel()
			snapshot(t, m, "vol-a", "s2")
			kept := backup("s2")
			want := readAll(t, device(t, m, "vol-a@s2"))
			if err := r.Delete(ctx, "vol-a", old.ID); err != nil {
				t.Fatal(err)
			}
			if rep, err := r.GC(ctx, backupd.GCOptions{Grace: crashGrace, MaxDuration: crashMaxDur, Now: at(time.Second)}); err != nil || rep.PacksMarked == 0 {
				t.Fatalf("marking GC: %+v, %v", rep, err)
			}
			packsBefore := len(backupd.SortedKeys(t, tg, "packs/"))
			sweep := time.Second + crashGrace
			runAndKill(t, []string{crashEnvMode + "=gc", crashEnvTarget + "=" + tdir, crashEnvNow + "=" + strconv.FormatInt(t0.Add(sweep).UnixNano(), 10)}, kill)

			if _, err := r.GC(ctx, backupd.GCOptions{Grace: crashGrace, MaxDuration: crashMaxDur, Now: at(sweep + time.Minute)}); !errors.Is(err, backupd.ErrBusy) {
				t.Fatalf("GC while the killed run's lease is fresh = %v, want ErrBusy", err)
			}
			rep, err := r.GC(ctx, backupd.GCOptions{Grace: crashGrace, MaxDuration: crashMaxDur, Now: at(sweep + time.Hour)})
			if err != nil {
				t.Fatalf("GC after the killed run's lease was abandoned: %v", err)
			}
			t.Logf("after the kill: %+v", rep)
			if left := backupd.SortedKeys(t, tg, "locks/"); len(left) != 0 {
				t.Errorf("leases left: %v", left)
			}
			if after := len(backupd.SortedKeys(t, tg, "packs/")); after >= packsBefore {
				t.Errorf("%d packs before the sweep, %d after: nothing reclaimed", packsBefore, after)
			}
			backupd.MustEqual(t, "kept backup restored after the killed GC", restoreInto(t, m, r, kept.ManifestKey, "restored", size), want)
			if vr, err := r.Verify(ctx, nil, backupd.VerifyOptions{ReadData: true}); err != nil || !vr.OK() {
				t.Errorf("Verify after the killed GC: %v", err)
			}
		})
	}
}

// TestCrashRestore kills a restore mid-way; a rerun completes bit-exact,
// resuming from the state file or rewriting everything without one.
func TestCrashRestore(t *testing.T) {
	t.Parallel()
	for _, withState := range []bool{true, false} {
		t.Run(map[bool]string{true: "state-file", false: "rewrite"}[withState], func(t *testing.T) {
			t.Parallel()
			const size = 128 << 20
			store, tdir := t.TempDir(), t.TempDir()
			data := makeVolume(t, store, size)
			m := openManager(t, store)
			tg := backupd.NewFSTarget(t, tdir)
			r := backupd.Open(tg, &backupd.Options{PackSize: crashPackSize})
			res, err := r.Backup(t.Context(), backupd.BackupOptions{Volume: "vol-a", Snapshot: "s1", Source: device(t, m, "vol-a@s1")})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := m.Create(t.Context(), "dst", size); err != nil {
				t.Fatal(err)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			state := ""
			if withState {
				state = filepath.Join(t.TempDir(), "restore.state")
			}
			runAndKill(t, []string{crashEnvMode + "=restore", crashEnvStore + "=" + store, crashEnvTarget + "=" + tdir,
				crashEnvKey + "=" + res.ManifestKey, crashEnvState + "=" + state}, 2)

			m = openManager(t, store)
			v := device(t, m, "dst")
			rr, err := r.Restore(t.Context(), res.ManifestKey, backupd.VolumeDestination{V: v}, backupd.RestoreOptions{DestZeroed: true, StatePath: state})
			if err != nil {
				t.Fatalf("rerun of the restore: %v", err)
			}
			if withState && rr.Resumed == 0 {
				t.Errorf("rerun resumed no page from the state file")
			}
			t.Logf("rerun resumed %d map pages, wrote %d bytes", rr.Resumed, rr.BytesWritten)
			backupd.MustEqual(t, "volume restored after the kill", readAll(t, v), data)
			if withState {
				if _, err := os.Stat(state); !os.IsNotExist(err) {
					t.Errorf("state file left after a successful restore: %v", err)
				}
			}
		})
	}
}
