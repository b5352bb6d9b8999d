package s3_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// Test credentials of the throwaway gateway.
const (
	testAccess = "strata-test-access"
	testSecret = "strata-test-secret-0123456789"
	testBucket = "strata-test"
)

// gateway is a real versitygw serving a posix directory on loopback.
type gateway struct {
	endpoint string
	prefixes atomic.Int64
}

// findVersitygw returns the versitygw binary: in PATH, else in
// $(go env GOPATH)/bin where scripts/deps.sh installs it.
func findVersitygw(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p
	}
	out, err := exec.CommandContext(t.Context(), "go", "env", "GOPATH").Output()
	if err == nil {
		for _, dir := range filepath.SplitList(strings.TrimSpace(string(out))) {
			p := filepath.Join(dir, "bin", "versitygw")
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	msg := "versitygw not found in PATH or $(go env GOPATH)/bin; run scripts/deps.sh (make deps) to install it"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// startGateway starts versitygw on a free loopback port with a fresh data
// directory and bucket, stopping it when the test ends.
func startGateway(t *testing.T) *gateway {
	t.Helper()
	bin := findVersitygw(t)
	for try := 0; ; try++ {
		g, err := tryStart(t, bin)
		if err == nil {
			return g
		}
		if try == 4 {
			t.Fatalf("starting versitygw: %v", err)
		}
		t.Logf("starting versitygw (try %d): %v", try+1, err)
	}
}

func tryStart(t *testing.T, bin string) (*gateway, error) {
	// A port the kernel just handed out; another process could take it
	// before versitygw binds it, which the caller's retry covers.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, testBucket), 0o755); err != nil {
		return nil, err
	}
	var logs strings.Builder
	cmd := exec.Command(bin, "--access", testAccess, "--secret", testSecret, "--port", addr, "--quiet", "posix", dir) //nolint:gosec,noctx // stopped by SIGTERM in Cleanup
	cmd.Stdout, cmd.Stderr = &logs, &logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	g := &gateway{endpoint: "http://" + addr}
	// Wait until it answers S3 requests (a bound, not an assertion).
	client := g.client()
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case err := <-exited:
			return nil, fmt.Errorf("versitygw exited: %v: %s", err, logs.String())
		default:
		}
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		_, err := client.HeadBucket(ctx, &awss3.HeadBucketInput{Bucket: aws.String(testBucket)})
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("versitygw on %s did not answer within a minute: %w: %s", addr, err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(stop)
	return g, nil
}

func (g *gateway) client() *awss3.Client {
	return awss3.New(awss3.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(g.endpoint),
		UsePathStyle: true,
		Credentials: aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
			return aws.Credentials{AccessKeyID: testAccess, SecretAccessKey: testSecret}, nil
		}),
	})
}

// url returns a target URL with a prefix of its own in the test bucket.
func (g *gateway) url(extra string) string {
	return fmt.Sprintf("s3://%s/t%d/p?endpoint=%s&region=us-east-1%s", testBucket, g.prefixes.Add(1), g.endpoint, extra)
}
