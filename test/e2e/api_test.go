package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func runCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// TestControlAPISecurity: the control socket is 0600, and a TCP control
// listener (TLS) refuses requests without the bearer token.
func TestControlAPISecurity(t *testing.T) {
	needRoot(t)
	dataDir := t.TempDir()
	pki := newTestPKI(t)
	certFile, keyFile := pki.serverCert, pki.serverKey
	tokenFile := filepath.Join(t.TempDir(), "token")
	token := "e2e-token-0123456789abcdef"
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	cfg := filepath.Join(t.TempDir(), "strata.toml")
	conf := fmt.Sprintf("api_listen = %q\ntls_cert = %q\ntls_key = %q\ntoken_file = %q\nfuse = \"off\"\n", addr, certFile, keyFile, tokenFile)
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, dataDir, "--config", cfg)

	fi, err := os.Stat(filepath.Join(dataDir, "strata.sock"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode %v, want 0600", fi.Mode().Perm())
	}

	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, Timeout: 10 * time.Second}
	get := func(auth string) int {
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/v1/volumes", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET over TCP: %v\nlog:\n%s", err, s.log.String())
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		auth string
		want int
	}{
		{"", http.StatusUnauthorized},
		{"Bearer wrong-token-0123456789", http.StatusUnauthorized},
		{"Basic " + token, http.StatusUnauthorized},
		{"Bearer " + token, http.StatusOK},
	} {
		if got := get(tc.auth); got != tc.want {
			t.Errorf("Authorization %q: status %d, want %d", tc.auth, got, tc.want)
		}
	}
	// The CLI reaches the server over TCP too, with the token and the CA.
	remote := []string{"--socket", "https://" + addr, "--api-token-file", tokenFile, "--api-ca-file", pki.caCert}
	var vols []volumeJSON
	s.mustJSON(&vols, append([]string{"volume", "ls"}, remote...)...)
	if len(vols) != 0 {
		t.Fatalf("volume ls over TCP: %+v", vols)
	}
	s.must(append([]string{"volume", "create", "vol-t", "--size", "1MiB"}, remote...)...)
	if out := s.must("volume", "ls"); !strings.Contains(out, "vol-t") {
		t.Fatalf("a volume created over TCP is not listed on the socket: %q", out)
	}
	s.fails(t, "bearer token", "volume", "ls", "--socket", "https://"+addr)
	s.fails(t, "certificate", "volume", "ls", "--socket", "https://"+addr, "--api-token-file", tokenFile)
	// Plain HTTP on the TLS port is refused.
	resp, err := http.Get("http://" + addr + "/v1/volumes")
	if err == nil {
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP on the TCP control port was served")
		}
		resp.Body.Close()
	}

	// A TCP listener without TLS and token is refused at start.
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte(fmt.Sprintf("api_listen = %q\n", freeAddr(t))), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(strataBin, "server", "--data-dir", t.TempDir(), "--config", bad).CombinedOutput()
	if err == nil || !bytes.Contains(out, []byte("needs tls_cert, tls_key and token_file")) {
		t.Fatalf("server with api_listen and no TLS: err %v, output %q", err, out)
	}
}

// TestMetrics: /metrics scrapes, and per-volume counters move under I/O.
func TestMetrics(t *testing.T) {
	needRoot(t)
	dataDir := t.TempDir()
	s := startServer(t, dataDir)
	var v volumeJSON
	s.mustJSON(&v, "volume", "create", "vol-m", "--size", "16MiB")

	writes := func() float64 {
		return metricValue(t, scrape(t, dataDir), `strata_volume_ops_total{op="write",volume="vol-m"}`)
	}
	wbytes := func() float64 {
		return metricValue(t, scrape(t, dataDir), `strata_volume_bytes_total{op="write",volume="vol-m"}`)
	}
	w0, b0 := writes(), wbytes()
	writeAt(t, v.FUSEPath, bytes.Repeat([]byte{7}, 1<<20), 0)
	w1, b1 := writes(), wbytes()
	if w1 <= w0 || b1-b0 < 1<<20 {
		t.Fatalf("write counters did not move: ops %v -> %v, bytes %v -> %v", w0, w1, b0, b1)
	}
	text := scrape(t, dataDir)
	for _, want := range []string{
		`strata_volume_op_seconds_bucket{op="write",volume="vol-m"`,
		`strata_volume_ops_total{op="flush",volume="vol-m"}`,
		`strata_volumes 1`,
		`go_goroutines`,
	} {
		if !bytes.Contains([]byte(text), []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func scrape(t *testing.T, dataDir string) string {
	t.Helper()
	sock := filepath.Join(dataDir, "strata.sock")
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://strata/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %v, status %d", err, resp.StatusCode)
	}
	return string(b)
}

func metricValue(t *testing.T, text, series string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return 0
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("metric %s: %v", series, err)
	}
	return f
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestConfigDataDir: a --config file's data_dir is the data directory when
// neither --data-dir nor STRATA_DATA_DIR names one. Before, it was silently
// ignored for ./strata-data.
func TestConfigDataDir(t *testing.T) {
	needRoot(t)
	dataDir := filepath.Join(t.TempDir(), "from-config")
	cfg := filepath.Join(t.TempDir(), "strata.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("data_dir = %q\nfuse = \"off\"\n", dataDir)), 0o600); err != nil {
		t.Fatal(err)
	}
	cwd := t.TempDir()
	cmd := exec.Command(strataBin, "server", "--config", cfg)
	cmd.Dir = cwd
	cmd.Env = append(os.Environ(), "STRATA_DATA_DIR=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-exited
	}()
	sock := filepath.Join(dataDir, "strata.sock")
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if _, err := os.Stat(filepath.Join(cwd, "strata-data", "strata.sock")); err == nil {
			t.Fatalf("the server serves ./strata-data although the config names %s", dataDir)
		}
		select {
		case err := <-exited:
			t.Fatalf("server exited (%v) without serving %s:\n%s", err, sock, out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if _, err := os.Stat(filepath.Join(cwd, "strata-data")); !os.IsNotExist(err) {
		t.Errorf("./strata-data was used although the config names %s: %v", dataDir, err)
	}
}
