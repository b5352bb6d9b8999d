package main

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/strata-block/strata/plugins"
)

// The real binary serves the built-in fs target to a plugin manager:
// `strata plugin serve fs`, handshake, AutoMTLS, and a round trip.
func TestPluginServeFS(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "strata")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	m := plugins.NewManager(plugins.ManagerConfig{Executable: bin})
	t.Cleanup(func() { _ = m.Close() })
	tg, err := m.Open(t.Context(), plugins.TargetConfig{Name: "local", URL: "file://" + t.TempDir()})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	res, err := plugins.RoundTrip(t.Context(), tg, 4<<20)
	if err != nil {
		t.Fatalf("RoundTrip: %v", err)
	}
	if res.Info.Kind != "fs" || res.Info.ConditionalCreate != plugins.ConditionalCreateAtomic {
		t.Fatalf("Info through strata plugin serve fs = %+v", res.Info)
	}
	if tg.PluginPID() <= 0 {
		t.Fatalf("no plugin process")
	}
}
