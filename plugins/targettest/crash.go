package targettest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/strata-block/strata/plugins"
)

// PluginTarget is a target served by a plugin process the test can kill:
// a *plugins.Remote.
type PluginTarget interface {
	plugins.Target
	PluginPID() int
}

// CrashSize is the object RunCrash puts: 64 MiB, killed at KillAt.
const (
	CrashSize = 64 * mib
	KillAt    = 24 * mib
)

// RunCrash kills the plugin process with SIGKILL in the middle of a 64 MiB
// Put and checks that, while it is dead, the object is not visible (no
// partial object, nothing listed) through direct, an in-process target
// over the same storage; that the Put still succeeds, because the manager
// restarts the plugin and retries it; and that afterwards exactly the
// whole object is there. open returns both views of one fresh storage.
func RunCrash(t *testing.T, open func(t *testing.T) (remote PluginTarget, direct plugins.Target)) {
	t.Run("KillMidPut", func(t *testing.T) {
		remote, direct := open(t)
		t.Cleanup(func() { _ = remote.Close(); _ = direct.Close() })
		const key = "crash/big"
		data := Data(64, CrashSize)
		// A Put that succeeds first, so the plugin is running.
		put(t, remote, "crash/small", []byte("small"))
		pid := remote.PluginPID()
		if pid <= 0 {
			t.Fatalf("no plugin process after a Put (pid %d)", pid)
		}
		var checked error
		r := &killingReader{Reader: bytes.NewReader(data), at: KillAt, kill: func() {
			checked = killAndCheck(t, pid, direct, key)
		}}
		if err := remote.Put(t.Context(), key, r, int64(len(data))); err != nil {
			t.Fatalf("Put with the plugin killed mid-way: %v", err)
		}
		if !r.killed {
			t.Fatalf("the reader never reached byte %d, so nothing was killed", KillAt)
		}
		if checked != nil {
			t.Fatalf("while the plugin was dead: %v", checked)
		}
		if got := remote.PluginPID(); got == pid || got <= 0 {
			t.Fatalf("plugin pid %d after the retry, want a new process (killed %d)", got, pid)
		}
		checkContent(t, direct, key, data)
		checkContent(t, remote, key, data)
		if keys := keysOf(listAll(t, direct, "", "")); fmt.Sprint(keys) != "[crash/big crash/small]" {
			t.Fatalf("after the retried Put, the target lists %v", keys)
		}
	})
	t.Run("KillMidGet", func(t *testing.T) {
		remote, direct := open(t)
		t.Cleanup(func() { _ = remote.Close(); _ = direct.Close() })
		data := Data(65, 16*mib)
		put(t, direct, "crash/get", data)
		rc, n, err := remote.Get(t.Context(), "crash/get", 0, -1)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		defer rc.Close()
		head := make([]byte, 4*mib)
		if _, err := io.ReadFull(rc, head); err != nil {
			t.Fatalf("reading the head: %v", err)
		}
		if err := killAndWait(remote.PluginPID()); err != nil {
			t.Fatal(err)
		}
		rest, err := io.ReadAll(rc)
		if err != nil {
			t.Fatalf("reading on after the plugin was killed: %v", err)
		}
		if got := append(head, rest...); int64(len(got)) != n || !bytes.Equal(got, data) {
			t.Fatalf("Get across a plugin restart returned %d bytes that differ from the %d put", len(got), len(data))
		}
	})
}

// killingReader calls kill once when the reader has passed byte at.
type killingReader struct {
	*bytes.Reader
	read   int
	at     int
	kill   func()
	killed bool
}

func (k *killingReader) Read(p []byte) (int, error) {
	if !k.killed && k.read >= k.at {
		k.killed = true
		k.kill()
	}
	n, err := k.Reader.Read(p)
	k.read += n
	return n, err
}

func killAndCheck(t *testing.T, pid int, direct plugins.Target, key string) error {
	if err := killAndWait(pid); err != nil {
		return err
	}
	has, err := direct.Has(t.Context(), []string{key})
	if err != nil {
		return fmt.Errorf("has: %w", err)
	}
	if has[0] {
		return fmt.Errorf("%s is visible after the plugin writing it was killed", key)
	}
	if _, _, err := direct.Get(t.Context(), key, 0, -1); !errors.Is(err, plugins.ErrNotFound) {
		return fmt.Errorf("get of the interrupted object: %v, want not found", err)
	}
	for o, err := range direct.List(t.Context(), "", "") {
		if err != nil {
			return fmt.Errorf("list: %w", err)
		}
		if o.Key != "crash/small" {
			return fmt.Errorf("list shows %q (%d bytes) after the plugin was killed", o.Key, o.Size)
		}
	}
	return nil
}

// killAndWait sends SIGKILL to pid and waits until the process is gone
// (its parent, the plugin client, reaps it).
func killAndWait(pid int) error {
	if pid <= 0 {
		return fmt.Errorf("no plugin process to kill (pid %d)", pid)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %d: %w", pid, err)
	}
	// Not a timed assertion: a generous bound on something that takes
	// milliseconds, so a broken reaper fails instead of hanging.
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("plugin process %d still exists a minute after SIGKILL", pid)
}
