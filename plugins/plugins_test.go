package plugins_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/targettest"
)

func TestMain(m *testing.M) {
	targettest.Main(m, map[string]plugins.OpenFunc{"mem": targettest.OpenMemory})
}

// The reference target passes its own suite.
func TestConformanceMemory(t *testing.T) {
	t.Parallel()
	targettest.Run(t, func(*testing.T) plugins.Target { return targettest.NewMemory() })
}

// The shims, over a real gRPC connection in this process.
func TestConformanceGRPC(t *testing.T) {
	t.Parallel()
	targettest.Run(t, func(t *testing.T) plugins.Target {
		return plugins.NewInProcess(t, targettest.OpenMemory, "mem:")
	})
}

// memPluginDir returns a plugin directory holding strata-target-mem, a
// script that runs this test binary as the memory plugin.
func memPluginDir(t *testing.T) string { return memPluginDirB(t) }

func memPluginDirB(t testing.TB) string {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	script := fmt.Sprintf("#!/bin/sh\nexec %q plugin serve mem\n", exe)
	if err := os.WriteFile(filepath.Join(dir, plugins.ExternalPrefix+"mem"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The whole path: an external plugin found in the plugin directory,
// started by the manager, handshake, AutoMTLS, the shims.
// Payloads over the data plane, and with it turned off in the host.
func TestConformanceExternalPlugin(t *testing.T) {
	t.Parallel()
	dir := memPluginDir(t)
	for _, dataPlane := range []bool{true, false} {
		t.Run(map[bool]string{true: "DataPlane", false: "GRPCPayloads"}[dataPlane], func(t *testing.T) {
			t.Parallel()
			targettest.Run(t, func(t *testing.T) plugins.Target {
				m := plugins.NewManager(plugins.ManagerConfig{Logger: targettest.Logger(t), PluginDir: dir, DisableDataPlane: !dataPlane})
				t.Cleanup(func() { _ = m.Close() })
				r, err := m.Open(t.Context(), plugins.TargetConfig{Name: "mem", URL: "mem:"})
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				if r.UsesDataPlane() != dataPlane {
					t.Fatalf("UsesDataPlane() = %v, want %v", r.UsesDataPlane(), dataPlane)
				}
				return r
			})
		})
	}
}

func TestManagerPlugins(t *testing.T) {
	t.Parallel()
	dir := memPluginDir(t)
	if err := os.WriteFile(filepath.Join(dir, plugins.ExternalPrefix+"noexec"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "other-file"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	m := plugins.NewManager(plugins.ManagerConfig{PluginDir: dir})
	got, err := m.Plugins()
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprint([]plugins.PluginInfo{{Kind: "fs", Builtin: true}, {Kind: "mem", Path: filepath.Join(dir, "strata-target-mem")}, {Kind: "s3", Builtin: true}})
	if fmt.Sprint(got) != want {
		t.Fatalf("Plugins() = %v, want %v", got, want)
	}
}

func TestManagerOpenErrors(t *testing.T) {
	t.Parallel()
	m := plugins.NewManager(plugins.ManagerConfig{Logger: targettest.Logger(t), PluginDir: memPluginDir(t)})
	t.Cleanup(func() { _ = m.Close() })
	tests := []struct {
		name string
		url  string
	}{
		{name: "unknown plugin", url: "nosuch://x"},
		{name: "credentials in URL", url: "s3://AKIA:SECRETVALUE@bucket/p"},
		{name: "bad scheme", url: "Bad_Scheme://x"},
		{name: "plugin rejects its URL", url: "mem:?option=1"},
		{name: "not executable", url: "noexec:x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := m.Open(t.Context(), plugins.TargetConfig{Name: "t", URL: tt.url})
			if err == nil {
				t.Fatalf("Open(%q) succeeded", tt.url)
			}
			if c := plugins.Classify(err); c != plugins.ClassPermanent {
				t.Fatalf("Open(%q): %v classified %v, want permanent", tt.url, err, c)
			}
			if s := err.Error(); contains(s, "SECRETVALUE") {
				t.Fatalf("the error shows the secret: %s", s)
			}
		})
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// The round-trip helper behind `strata target test`.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	tg := targettest.NewMemory()
	res, err := plugins.RoundTrip(t.Context(), tg, 1<<20)
	if err != nil {
		t.Fatalf("RoundTrip: %v", err)
	}
	if res.Size != 1<<20 || res.PutLatency <= 0 || res.GetLatency <= 0 || res.PutThroughput <= 0 || res.Info.Kind != "memory" {
		t.Fatalf("RoundTrip = %+v", res)
	}
	if left := targettestList(t, tg); left != 0 {
		t.Fatalf("RoundTrip left %d objects behind", left)
	}
}

func targettestList(t *testing.T, tg plugins.Target) int {
	n := 0
	for _, err := range tg.List(t.Context(), "", "") {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	return n
}

// A host that itself runs with the data plane's variable set (say, an
// agent started from a plugin's environment) still hands its plugins the
// right descriptor: go-plugin appends the host's environment after the
// variables the manager sets, and the last value would win.
func TestManagerHostDataPlaneEnv(t *testing.T) {
	// Not parallel: it sets the process environment.
	t.Setenv(plugins.DataPlaneEnv, "57")
	m := plugins.NewManager(plugins.ManagerConfig{Logger: targettest.Logger(t), PluginDir: memPluginDir(t)})
	t.Cleanup(func() { _ = m.Close() })
	r, err := m.Open(t.Context(), plugins.TargetConfig{Name: "mem", URL: "mem:"})
	if err != nil {
		t.Fatalf("Open with %s set in the host: %v", plugins.DataPlaneEnv, err)
	}
	if !r.UsesDataPlane() {
		t.Fatal("the plugin does not use the data plane")
	}
	if err := r.Put(t.Context(), "k", strings.NewReader("v"), 1); err != nil {
		t.Fatalf("Put: %v", err)
	}
}

// TestHungPluginReplaced: a plugin process that stops answering (here
// SIGSTOP) is found out once a call to it ends with its caller's context,
// killed, and the next call gets a new process. Before, only a transient
// error led to a health check, a context's end counted as permanent, and
// every later call went to the stopped process until its caller gave up.
func TestHungPluginReplaced(t *testing.T) {
	t.Parallel()
	m := plugins.NewManager(plugins.ManagerConfig{Logger: targettest.Logger(t), PluginDir: memPluginDir(t)})
	t.Cleanup(func() { _ = m.Close() })
	r, err := m.Open(t.Context(), plugins.TargetConfig{Name: "mem", URL: "mem:"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	pid := r.PluginPID()
	if pid <= 0 {
		t.Fatalf("no plugin process: pid %d", pid)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	for !stopped(t, pid) {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	_, err = r.Info(ctx)
	cancel()
	if err == nil {
		t.Fatal("Info on a stopped plugin succeeded")
	}
	// Well within the keepalive's 40 s: only the health check can help.
	ctx, cancel = context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if _, err := r.Info(ctx); err != nil {
		t.Fatalf("Info after the stopped plugin's call timed out: %v (the process was not replaced)", err)
	}
	if got := r.PluginPID(); got == pid || got <= 0 {
		t.Errorf("plugin pid %d after the hang, was %d: want a new process", got, pid)
	}
}

// stopped reports whether process pid is stopped (state T in its stat).
func stopped(t *testing.T, pid int) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	i := strings.LastIndexByte(string(b), ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'T'
}

// hungTarget's Has and Delete wait for their context to end: a target
// that stopped answering after a Put.
type hungTarget struct{ plugins.Target }

func (h hungTarget) Has(ctx context.Context, _ []string) ([]bool, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (h hungTarget) Delete(ctx context.Context, _ []string) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestRoundTripHungTarget: RoundTrip against a target that stops
// answering returns once its context ends; the clean-up Delete of its
// probe is bounded too. Before, that Delete ran without a deadline and
// `strata target add` or `target test` never returned.
func TestRoundTripHungTarget(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := plugins.RoundTrip(ctx, hungTarget{targettest.NewMemory()}, 4096)
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("RoundTrip against a hung target succeeded")
		}
	case <-time.After(45 * time.Second):
		t.Fatal("RoundTrip against a hung target still running 45 s after its context ended")
	}
}
