package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTargets drives `strata target add|ls|test|rm` against a directory
// target and an S3 target (a real versitygw on loopback), and checks that
// the S3 secret appears nowhere: not in any CLI output, the server's log,
// or any file the server wrote.
func TestTargets(t *testing.T) {
	needRoot(t)
	dataDir := t.TempDir()
	s := startServer(t, dataDir, "--fuse", "off")

	dir := t.TempDir()
	var tg map[string]any
	s.mustJSON(&tg, "target", "add", "local", "file://"+dir)
	if tg["default"] != true || tg["kind"] != "fs" {
		t.Fatalf("first target is not the default fs target: %v", tg)
	}
	if out := s.must("target", "test", "local", "--size", "1MiB"); !strings.Contains(out, "round trip of 1 MiB OK") {
		t.Fatalf("target test: %q", out)
	}

	const access, secret = "e2e-access", "e2e-secret-c0ffee-0123456789"
	endpoint := startVersitygw(t, access, secret, "bkt")
	creds := filepath.Join(t.TempDir(), "s3.creds")
	if err := os.WriteFile(creds, []byte("AWS_ACCESS_KEY_ID="+access+"\nAWS_SECRET_ACCESS_KEY="+secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	url := "s3://bkt/strata?endpoint=" + endpoint + "&region=us-east-1"
	var outputs []string
	outputs = append(outputs, s.must("target", "add", "remote", url, "--credentials", creds, "--default"))
	outputs = append(outputs, s.must("target", "ls"), s.must("target", "ls", "--json"))
	out := s.must("target", "test", "remote")
	outputs = append(outputs, out)
	if !strings.Contains(out, "round trip of 4 MiB OK") || !strings.Contains(out, "(s3)") {
		t.Fatalf("target test remote: %q", out)
	}
	var ts []map[string]any
	s.mustJSON(&ts, "target", "ls")
	if len(ts) != 2 || ts[1]["name"] != "remote" || ts[1]["default"] != true || ts[0]["default"] != false {
		t.Fatalf("target ls: %v", ts)
	}

	// Bad input changes nothing.
	s.fails(t, "user info", "target", "add", "x", "s3://"+access+":"+secret+"@bkt/p")
	s.fails(t, "already exists", "target", "add", "local", "file://"+dir)
	// An absolute directory path is taken for its file:// URL.
	plain := t.TempDir()
	s.mustJSON(&tg, "target", "add", "plain", plain)
	if tg["url"] != "file://"+plain || tg["kind"] != "fs" {
		t.Fatalf("target add plain %s: %v, want url file://%s", plain, tg, plain)
	}
	s.must("target", "rm", "plain")
	s.fails(t, "is the default", "target", "rm", "remote")
	// The default moves to an existing target, and back.
	s.mustJSON(&tg, "target", "set", "local", "--default")
	if tg["name"] != "local" || tg["default"] != true {
		t.Fatalf("target set local --default: %v", tg)
	}
	s.mustJSON(&ts, "target", "ls")
	if len(ts) != 2 || ts[0]["default"] != true || ts[1]["default"] != false {
		t.Fatalf("target ls after set local --default: %v", ts)
	}
	if out := s.must("target", "set", "remote", "--default"); !strings.Contains(out, "target remote is the default") {
		t.Fatalf("target set remote --default: %q", out)
	}
	s.fails(t, "not found", "target", "set", "nope", "--default")
	s.fails(t, "--default", "target", "set", "local")
	s.fails(t, "not found", "target", "test", "nope")
	s.fails(t, "invalid name", "target", "add", "../x", "file://"+dir)
	s.fails(t, "does not answer", "target", "add", "wrong", "s3://bkt/p?endpoint="+endpoint+"&region=us-east-1", "--credentials", writeFile(t, "AWS_ACCESS_KEY_ID=nobody\nAWS_SECRET_ACCESS_KEY=wrong-secret-0123456789\n"))
	s.mustJSON(&ts, "target", "ls")
	if len(ts) != 2 {
		t.Fatalf("failed adds changed the targets: %v", ts)
	}
	s.must("target", "rm", "local")

	s.stop(syscall.SIGTERM)
	outputs = append(outputs, s.log.String())
	for _, o := range outputs {
		if strings.Contains(o, secret) {
			t.Fatalf("the S3 secret appears in output or log:\n%s", o)
		}
	}
	err := filepath.Walk(dataDir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), secret) {
			return fmt.Errorf("the S3 secret is stored in %s", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startVersitygw serves an S3 API on a loopback port from a fresh posix
// directory holding bucket, and returns its endpoint URL.
func startVersitygw(t *testing.T, access, secret, bucket string) string {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		gopath, _ := exec.Command("go", "env", "GOPATH").Output()
		bin = filepath.Join(strings.TrimSpace(string(gopath)), "bin", "versitygw")
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("versitygw not found in PATH or $(go env GOPATH)/bin: run make deps")
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, bucket), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--access", access, "--secret", secret, "--port", addr, "--quiet", "posix", root)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return "http://" + addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw on %s not listening after a minute", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBootstrapTarget: `--bootstrap-target datadir` (make run's) registers
// DATA_DIR/backups as the default target "local" on the first start, for
// a data directory whose path holds a space too, and backups land there.
// Before, make run passed file://$(CURDIR)/strata-data/backups unquoted:
// a space in the path broke it, and STRATA_DATA_DIR was not followed.
func TestBootstrapTarget(t *testing.T) {
	needRoot(t)
	dataDir := filepath.Join(t.TempDir(), "my data")
	s := startServer(t, dataDir, "--fuse", "off", "--bootstrap-target", "datadir")
	var ts []map[string]any
	s.mustJSON(&ts, "target", "ls")
	want := "file://" + filepath.Join(dataDir, "backups")
	if len(ts) != 1 || ts[0]["name"] != "local" || ts[0]["url"] != want || ts[0]["default"] != true {
		t.Fatalf("target ls: %v; want the default target local at %s", ts, want)
	}
	s.must("volume", "create", "vol-a", "1MiB")
	b := s.backup("vol-a")
	if _, err := os.Stat(filepath.Join(dataDir, "backups", b.ManifestKey)); err != nil {
		t.Errorf("backup %s is not under the data directory's backups: %v", b.ID, err)
	}
}
