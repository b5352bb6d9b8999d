package agent

import (
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-block/strata/blockdev"
)

const testToken = "0123456789abcdef-test-token"

// streamMux answers GET /lines with NDJSON: n lines, blank lines between,
// and a last line of big bytes; GET /missing with a not_found error.
func streamMux(big int) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /lines", func(w http.ResponseWriter, r *http.Request) {
		var in struct{ N int }
		if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
			writeError(w, fmt.Errorf("%v: %w", err, blockdev.ErrInvalidArgument))
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		for i := range in.N {
			fmt.Fprintf(w, "{\"i\":%d}\n\n", i)
		}
		fmt.Fprintf(w, "{\"big\":%q}\n", strings.Repeat("x", big))
	})
	mux.HandleFunc("GET /missing", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, fmt.Errorf("volume %q: %w", "nope", blockdev.ErrNotFound))
	})
	return mux
}

func unixServer(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

// tlsServer serves h with the token check over TLS and returns its URL,
// a CA file for its certificate and a token file.
func tlsServer(t *testing.T, h http.Handler) (addr, caFile, tokenFile string) {
	t.Helper()
	srv := httptest.NewTLSServer(requireToken(testToken, h))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile = filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(testToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL, caFile, tokenFile
}

func TestDialAndStream(t *testing.T) {
	t.Parallel()
	const big = 1 << 20 // past bufio.Scanner's default 64 KiB
	sock := unixServer(t, streamMux(big))
	url, ca, tok := tlsServer(t, streamMux(big))
	for _, tc := range []struct {
		name string
		addr string
		opt  DialOptions
	}{
		{name: "socket path", addr: sock},
		{name: "unix url", addr: "unix://" + sock},
		{name: "https", addr: url, opt: DialOptions{TokenFile: tok, CAFile: ca}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Dial(tc.addr, tc.opt)
			if err != nil {
				t.Fatalf("Dial(%q): %v", tc.addr, err)
			}
			if want := strings.TrimPrefix(tc.addr, "unix://"); c.Addr() != want {
				t.Errorf("Addr() = %q, want %q", c.Addr(), want)
			}
			var lines []string
			err = c.Stream(t.Context(), http.MethodPost, "/lines", map[string]int{"N": 3}, func(line []byte) error {
				lines = append(lines, string(line))
				return nil
			})
			if err != nil {
				t.Fatalf("Stream: %v", err)
			}
			if len(lines) != 4 || lines[0] != `{"i":0}` || lines[2] != `{"i":2}` || len(lines[3]) != big+len(`{"big":""}`) {
				t.Fatalf("Stream lines: %d, first %q", len(lines), lines[0])
			}

			stop := errors.New("stop")
			n := 0
			err = c.Stream(t.Context(), http.MethodPost, "/lines", map[string]int{"N": 3}, func([]byte) error {
				n++
				return stop
			})
			if !errors.Is(err, stop) || n != 1 {
				t.Errorf("Stream with fn failing: err %v after %d lines, want stop after 1", err, n)
			}

			err = c.Stream(t.Context(), http.MethodGet, "/missing", nil, func([]byte) error {
				t.Error("fn called on an error answer")
				return nil
			})
			var ae *APIError
			if !errors.As(err, &ae) || ae.Code != "not_found" || !errors.Is(err, blockdev.ErrNotFound) || !strings.Contains(err.Error(), `"nope"`) {
				t.Errorf("Stream of an error answer: %v, want a not_found APIError naming the volume", err)
			}
			if err := c.Do(t.Context(), http.MethodGet, "/missing", nil, nil); !errors.Is(err, blockdev.ErrNotFound) {
				t.Errorf("Do of an error answer: %v, want not found", err)
			}
		})
	}
}

func TestDialTLSRefusals(t *testing.T) {
	t.Parallel()
	url, ca, tok := tlsServer(t, streamMux(0))
	dir := t.TempDir()
	wrongTok := filepath.Join(dir, "wrong")
	if err := os.WriteFile(wrongTok, []byte("not-the-token-at-all"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opt  DialOptions
		want string
	}{
		{name: "wrong token", opt: DialOptions{TokenFile: wrongTok, CAFile: ca}, want: "bearer token"},
		{name: "unknown CA", opt: DialOptions{TokenFile: tok}, want: "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c, err := Dial(url, tc.opt)
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			err = c.Do(t.Context(), http.MethodGet, "/missing", nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("request: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func TestDialBadAddresses(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	empty := filepath.Join(dir, "empty")
	notPEM := filepath.Join(dir, "ca")
	for f, b := range map[string]string{tok: testToken, empty: " \n", notPEM: "not a certificate"} {
		if err := os.WriteFile(f, []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		addr string
		opt  DialOptions
		want string
	}{
		{name: "empty", addr: "", want: "empty"},
		{name: "http", addr: "http://127.0.0.1:1", opt: DialOptions{TokenFile: tok}, want: "only over TLS"},
		{name: "scheme", addr: "ftp://host:1", want: `scheme "ftp"`},
		{name: "relative unix", addr: "unix://rel/sock", want: "absolute"},
		{name: "https path", addr: "https://h:1/v1", opt: DialOptions{TokenFile: tok}, want: "nothing after the port"},
		{name: "no token", addr: "https://h:1", want: "no token file"},
		{name: "missing token file", addr: "https://h:1", opt: DialOptions{TokenFile: filepath.Join(dir, "nope")}, want: "agent token"},
		{name: "empty token", addr: "https://h:1", opt: DialOptions{TokenFile: empty}, want: "is empty"},
		{name: "bad CA", addr: "https://h:1", opt: DialOptions{TokenFile: tok, CAFile: notPEM}, want: "no PEM certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := Dial(tc.addr, tc.opt); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Dial(%q): %v, want an error mentioning %q", tc.addr, err, tc.want)
			}
		})
	}
}

func TestNewAPIError(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code   string
		status int
		is     error
	}{
		{code: "not_found", status: http.StatusNotFound, is: blockdev.ErrNotFound},
		{code: "in_use", status: http.StatusConflict, is: blockdev.ErrInUse},
		{code: "invalid", status: http.StatusBadRequest, is: blockdev.ErrInvalidArgument},
		{code: "internal", status: http.StatusInternalServerError},
	} {
		e := NewAPIError(tc.code, "msg")
		if e.Status != tc.status || (tc.is != nil && !errors.Is(e, tc.is)) {
			t.Errorf("NewAPIError(%q) = %+v, want status %d matching %v", tc.code, e, tc.status, tc.is)
		}
	}
}
