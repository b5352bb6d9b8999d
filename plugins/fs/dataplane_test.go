package fs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/targettest"
)

// No descriptor or goroutine outlives the calls of a run full of failures
// through the data plane — failed, short, long and cancelled Puts, Gets
// abandoned or cancelled half-way, a plugin killed mid-Put — in the host
// or in the plugin, and that the killed plugin's socket directory went
// with it (go-plugin left a socket in the temporary directory for every
// plugin killed). Not parallel: it counts the whole test process's
// descriptors and goroutines, and sets TMPDIR.
func TestDataPlaneNoLeaks(t *testing.T) {
	dir, tmp := t.TempDir(), t.TempDir()
	t.Setenv("TMPDIR", tmp)
	// A socket directory of a host that was killed: the host removes it.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(tmp, fmt.Sprintf("strata-plugin-%d-123", dead.Process.Pid))
	if err := os.MkdirAll(stale, 0o700); err != nil {
		t.Fatal(err)
	}
	r := openPlugin(t, dir, true)
	ctx := t.Context()
	data := targettest.Data(11, 8<<20)
	roundTrip := func() {
		t.Helper()
		if err := r.Put(ctx, "ok", bytes.NewReader(data), int64(len(data))); err != nil {
			t.Fatalf("Put: %v", err)
		}
		rc, _, err := r.Get(ctx, "ok", 0, -1)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		if got, err := io.ReadAll(rc); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("Get: %d bytes, %v", len(got), err)
		}
		rc.Close()
	}
	roundTrip()
	hostFDs, plugin, goroutines := countFDs(t, os.Getpid()), r.PluginPID(), runtime.NumGoroutine()
	pluginFDs := countFDs(t, plugin)

	for range 3 {
		failures(t, r, data)
		roundTrip()
	}
	settle(t, "host descriptors", hostFDs, func() int { return countFDs(t, os.Getpid()) }, os.Getpid())
	settle(t, "plugin descriptors", pluginFDs, func() int { return countFDs(t, plugin) }, plugin)
	settle(t, "goroutines", goroutines, runtime.NumGoroutine, 0)

	// Killed mid-Put: the retried Put succeeds on a new plugin, which
	// replaces the old one's descriptors and goroutines in the host.
	k := &killAt{Reader: bytes.NewReader(data), at: 3 << 20, pid: plugin}
	if err := r.Put(ctx, "killed", k, int64(len(data))); err != nil {
		t.Fatalf("Put with the plugin killed: %v", err)
	}
	if !k.killed || r.PluginPID() == plugin || !r.UsesDataPlane() {
		t.Fatalf("killed %v, plugin %d after (was %d), data plane %v", k.killed, r.PluginPID(), plugin, r.UsesDataPlane())
	}
	roundTrip()
	settle(t, "host descriptors after a restart", hostFDs, func() int { return countFDs(t, os.Getpid()) }, os.Getpid())
	settle(t, "goroutines after a restart", goroutines, runtime.NumGoroutine, 0)
	// Only the running plugin's socket directory is left.
	ents, err := os.ReadDir(tmp)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	if want := fmt.Sprintf("strata-plugin-%d-", os.Getpid()); len(left) != 1 || !strings.HasPrefix(left[0], want) {
		t.Errorf("temporary directory holds %v, want only the running plugin's socket directory (%s…)", left, want)
	}
}

// failures runs calls that fail in every way a payload transfer can.
func failures(t *testing.T, r *plugins.Remote, data []byte) {
	t.Helper()
	ctx := t.Context()
	size := int64(len(data))
	for name, rd := range map[string]io.Reader{
		"reader fails": io.MultiReader(bytes.NewReader(data[:3<<20]), errReader{}),
		"reader short": bytes.NewReader(data[:5<<20]),
	} {
		if err := r.Put(ctx, "bad", rd, size); err == nil {
			t.Fatalf("Put, %s: succeeded", name)
		}
	}
	if err := r.Put(ctx, "bad", bytes.NewReader(data), size-1); err == nil {
		t.Fatal("Put of a reader longer than its size succeeded")
	}
	cctx, cancel := context.WithCancel(ctx)
	if err := r.Put(cctx, "bad", &cancelAt{Reader: bytes.NewReader(data), at: 2 << 20, cancel: cancel}, size); err == nil {
		t.Fatal("Put cancelled mid-way succeeded")
	}
	if err := r.PutIfAbsent(ctx, "ok", bytes.NewReader(data), size); !errors.Is(err, plugins.ErrAlreadyExists) {
		t.Fatalf("PutIfAbsent of an existing key: %v", err)
	}
	if _, _, err := r.Get(ctx, "missing", 0, -1); !errors.Is(err, plugins.ErrNotFound) {
		t.Fatalf("Get of a missing key: %v", err)
	}
	// Abandoned after 1 MiB: the plugin's write fails with EPIPE.
	rc, _, err := r.Get(ctx, "ok", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	cctx, cancel = context.WithCancel(ctx)
	rc, _, err = r.Get(cctx, "ok", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(rc, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(rc); err == nil {
		t.Fatal("Get read to the end after its context was cancelled")
	}
	rc.Close()
	if has, err := r.Has(ctx, []string{"bad"}); err != nil || has[0] {
		t.Fatalf("Has(bad) = %v, %v after failed Puts", has, err)
	}
}

// settle waits until count() comes back to want (descriptors and
// goroutines are released asynchronously: a plugin's exit, a stream's
// end), failing after a generous bound and listing pid's descriptors (if
// not 0) or the goroutines.
func settle(t *testing.T, what string, want int, count func() int, pid int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := count()
		if got <= want {
			return
		}
		if time.Now().After(deadline) {
			if pid != 0 {
				t.Logf("descriptors of %d: %s", pid, listFDs(pid))
			} else {
				buf := make([]byte, 1<<20)
				t.Logf("%s", buf[:runtime.Stack(buf, true)])
			}
			t.Fatalf("%s: %d, was %d before the run", what, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func listFDs(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		l, _ := os.Readlink(dir + "/" + e.Name())
		out = append(out, e.Name()+"->"+l)
	}
	return out
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("injected") }

// cancelAt cancels a context once at bytes were read; killAt kills a
// process with SIGKILL and waits for it to go.
type cancelAt struct {
	*bytes.Reader
	n, at  int
	cancel context.CancelFunc
}

func (c *cancelAt) Read(p []byte) (int, error) {
	if c.n >= c.at {
		c.cancel()
	}
	n, err := c.Reader.Read(p[:min(len(p), 1<<20)])
	c.n += n
	return n, err
}

type killAt struct {
	*bytes.Reader
	n, at, pid int
	killed     bool
}

func (k *killAt) Read(p []byte) (int, error) {
	if k.n >= k.at && !k.killed {
		k.killed = true
		_ = syscall.Kill(k.pid, syscall.SIGKILL)
		for {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", k.pid)); err != nil {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	n, err := k.Reader.Read(p[:min(len(p), 1<<20)])
	k.n += n
	return n, err
}
