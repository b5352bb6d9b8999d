package backupd_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-block/strata/backupd"
	"github.com/strata-block/strata/blockdev"
	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/s3"
)

// The same backups against a real S3 server: versitygw on loopback, as
// plugins/s3's tests run it (scripts/deps.sh installs it).

const (
	s3Access = "strata-backup-test-access"
	s3Secret = "strata-backup-test-secret-0123456789"
	s3Bucket = "backups"
)

// startVersitygw starts versitygw serving a fresh directory and returns
// its endpoint; it is stopped when the test ends.
func startVersitygw(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		out, _ := exec.CommandContext(t.Context(), "go", "env", "GOPATH").Output()
		// deps.sh installs it in the first GOPATH entry's bin.
		first, _, _ := strings.Cut(strings.TrimSpace(string(out)), string(filepath.ListSeparator))
		bin = filepath.Join(first, "bin", "versitygw")
		if _, err := os.Stat(bin); err != nil {
			msg := "versitygw not found in PATH or $(go env GOPATH)/bin; run scripts/deps.sh (make deps)"
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, s3Bucket), 0o755); err != nil {
		t.Fatal(err)
	}
	for try := 1; ; try++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		_ = l.Close()
		var logs strings.Builder
		cmd := exec.Command(bin, "--access", s3Access, "--secret", s3Secret, "--port", addr, "--quiet", "posix", dir) //nolint:gosec,noctx // stopped in Cleanup
		cmd.Stdout, cmd.Stderr = &logs, &logs
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		// Wait until the port accepts connections (a bound, not an
		// assertion); a port taken meanwhile makes versitygw exit.
		deadline := time.Now().Add(60 * time.Second)
		for {
			select {
			case err := <-exited:
				if try == 5 {
					t.Fatalf("versitygw exited: %v: %s", err, logs.String())
				}
				goto retry
			default:
			}
			if c, err := net.Dial("tcp", addr); err == nil {
				_ = c.Close()
				t.Cleanup(func() {
					_ = cmd.Process.Signal(syscall.SIGTERM)
					select {
					case <-exited:
					case <-time.After(30 * time.Second):
						_ = cmd.Process.Kill()
						<-exited
					}
				})
				return "http://" + addr
			}
			if time.Now().After(deadline) {
				_ = cmd.Process.Kill()
				t.Fatalf("versitygw on %s did not listen within a minute: %s", addr, logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	retry:
	}
}

func openS3(t *testing.T, endpoint, prefix string) plugins.Target {
	t.Helper()
	creds := plugins.NewCredentials(map[string]string{s3.EnvAccessKey: s3Access, s3.EnvSecretKey: s3Secret})
	url := fmt.Sprintf("s3://%s/%s?endpoint=%s&region=us-east-1", s3Bucket, prefix, endpoint)
	tg, err := s3.Open(context.Background(), url, creds)
	if err != nil {
		t.Fatalf("s3.Open(%s): %v", url, err)
	}
	t.Cleanup(func() { _ = tg.Close() })
	return tg
}

// TestS3RoundTrip backs up random and sparse volumes to versitygw, full
// and incremental, restores them bit-exact, verifies with data and runs GC.
func TestS3RoundTrip(t *testing.T) {
	t.Parallel()
	endpoint := startVersitygw(t)
	ctx := t.Context()
	const size = 32 * mib
	m := openManager(t, t.TempDir())
	rng := rand.New(rand.NewPCG(101, 102))
	key, err := backupd.NewKey(backupd.RandomData(rng, backupd.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		vol  string
		key  *backupd.Key
		fill func(v blockdev.Volume)
	}{
		{vol: "random", fill: func(v blockdev.Volume) { write(t, v, backupd.RandomData(rng, size), 0) }},
		{vol: "sparse", fill: func(v blockdev.Volume) {
			for off := int64(0); off < size; off += 3 * mib {
				write(t, v, backupd.RandomData(rng, 8192), off+4096)
			}
		}},
		{vol: "zero-encrypted", key: key, fill: func(blockdev.Volume) {}},
	}
	for _, tc := range tests {
		r := backupd.Open(openS3(t, endpoint, tc.vol), &backupd.Options{Key: tc.key, PackSize: 4 * mib})
		if _, err := m.Create(ctx, tc.vol, size); err != nil {
			t.Fatal(err)
		}
		v := device(t, m, tc.vol)
		tc.fill(v)
		var last *backupd.Result
		for i, snap := range []string{"s1", "s2"} {
			if i > 0 {
				write(t, v, backupd.RandomData(rng, 64<<10), 5*mib)
			}
			snapshot(t, m, tc.vol, snap)
			res, err := r.BackupVolume(ctx, m, tc.vol, snap, backupd.BackupOptions{})
			if err != nil {
				t.Fatalf("%s@%s: backup to s3: %v", tc.vol, snap, err)
			}
			if i > 0 && res.Manifest.Parent != last.ID {
				t.Errorf("%s@%s: parent %q, want %s", tc.vol, snap, res.Manifest.Parent, last.ID)
			}
			backupd.MustEqual(t, tc.vol+"@"+snap+" restored from s3", restoreInto(t, m, r, res.ManifestKey, tc.vol+"-r-"+snap, size), readAll(t, device(t, m, tc.vol+"@"+snap)))
			last = res
		}
		if rep, err := r.Verify(ctx, nil, backupd.VerifyOptions{ReadData: true}); err != nil || !rep.OK() {
			t.Fatalf("%s: Verify on s3: %v", tc.vol, err)
		}
		if _, err := r.GC(ctx, backupd.GCOptions{}); err != nil {
			t.Fatalf("%s: GC on s3: %v", tc.vol, err)
		}
	}
}
