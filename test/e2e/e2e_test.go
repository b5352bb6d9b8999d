// Package e2e runs the real strata binary: a `strata server` process in a
// temporary data directory, driven by the real CLI, with real FUSE mounts,
// loop devices and NBD clients.
package e2e

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var strataBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "strata-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	strataBin = filepath.Join(dir, "strata")
	out, err := exec.Command("go", "build", "-o", strataBin, "github.com/strata-block/strata/cmd/strata").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build strata: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// server is a running `strata server` process.
type server struct {
	t       *testing.T
	dataDir string
	cmd     *exec.Cmd
	log     *syncBuffer
	exited  chan struct{}
}

// syncBuffer is the server's output, written by the process's copier
// goroutine and read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startServer(t *testing.T, dataDir string, extra ...string) *server {
	t.Helper()
	s := &server{t: t, dataDir: dataDir, log: &syncBuffer{}, exited: make(chan struct{})}
	s.cmd = exec.Command(strataBin, append([]string{"server", "--data-dir", dataDir, "--log-level", "debug"}, extra...)...)
	s.cmd.Stdout = s.log
	s.cmd.Stderr = s.log
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start server: %v", err)
	}
	go func() { _ = s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.stop(syscall.SIGTERM)
		// A server killed and not restarted leaves its FUSE mount: detach
		// it, or removing the temporary directory would fail on it.
		_ = unix.Unmount(filepath.Join(dataDir, "mnt"), unix.MNT_DETACH)
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := s.run("volume", "ls"); err == nil {
			return s
		}
		select {
		case <-s.exited:
			t.Fatalf("server exited at start:\n%s", s.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not answering after 30 s:\n%s", s.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop signals the server and waits for it to exit.
func (s *server) stop(sig syscall.Signal) {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(60 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
		s.t.Errorf("server ignored %v for 60 s; killed. Log:\n%s", sig, s.log.String())
	}
}

// run runs a CLI verb against this server and returns its stdout; the
// error carries stderr.
func (s *server) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, strataBin, append(args, "--data-dir", s.dataDir)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("strata %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

func (s *server) must(args ...string) string {
	s.t.Helper()
	out, err := s.run(args...)
	if err != nil {
		s.t.Fatalf("%v\nserver log:\n%s", err, s.log.String())
	}
	return out
}

// mustJSON runs a verb with --json and decodes its output into v.
func (s *server) mustJSON(v any, args ...string) {
	s.t.Helper()
	out := s.must(append(args, "--json")...)
	dec := json.NewDecoder(strings.NewReader(out))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		s.t.Fatalf("strata %s --json: not the expected JSON: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// fails runs a verb that must fail, and returns its one-line error.
func (s *server) fails(t *testing.T, wantSubstr string, args ...string) {
	t.Helper()
	out, err := s.run(args...)
	if err == nil {
		t.Fatalf("strata %s succeeded, want an error; output %q", strings.Join(args, " "), out)
	}
	msg := err.Error()
	if !strings.Contains(msg, wantSubstr) {
		t.Fatalf("strata %s: error %q does not say %q", strings.Join(args, " "), msg, wantSubstr)
	}
	if i := strings.Index(msg, ": "); strings.Contains(strings.TrimSpace(msg[i+2:]), "\n") {
		t.Fatalf("strata %s: error is not one line: %q", strings.Join(args, " "), msg)
	}
}

// JSON shapes the CLI prints (a subset of the API types, decoded strictly
// where the test owns the shape).
type snapshotJSON struct {
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	Size    int64     `json:"size"`
	Owned   int64     `json:"owned"`
}

type attachmentJSON struct {
	Device     string `json:"device"`
	Kind       string `json:"kind"`
	MountPoint string `json:"mount_point,omitempty"`
	FSType     string `json:"fs_type,omitempty"`
}

type volumeJSON struct {
	Name       string          `json:"name"`
	Size       int64           `json:"size"`
	Created    time.Time       `json:"created"`
	Depth      int             `json:"depth"`
	Snapshots  []snapshotJSON  `json:"snapshots"`
	Users      int             `json:"users"`
	Err        string          `json:"error,omitempty"`
	NBDURI     string          `json:"nbd_uri"`
	FUSEPath   string          `json:"fuse_path,omitempty"`
	Attachment *attachmentJSON `json:"attachment,omitempty"`
	Target     string          `json:"target"`
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but not root: the e2e tests need root for FUSE mounts and loop devices")
		}
		t.Skip("needs root for FUSE mounts and loop devices")
	}
}

func md5File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

func writeRandomFile(t *testing.T, path string, n int) string {
	t.Helper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

func syncFS(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		t.Fatalf("syncfs %s: %v", dir, err)
	}
}
