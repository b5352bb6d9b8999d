package plugins_test

import (
	"log/slog"
	"testing"

	"github.com/strata-block/strata/plugins"
	"github.com/strata-block/strata/plugins/targettest"
)

// BenchmarkProtocol measures the plugin protocol alone: the in-memory
// target in-process against the same target in a plugin process, so no
// storage cost hides the overhead (the worst case for the ratio).
func BenchmarkProtocol(b *testing.B) {
	targettest.Bench(b, map[string]func(b *testing.B) plugins.Target{
		"inprocess": func(*testing.B) plugins.Target { return targettest.NewMemory() },
		"plugin": func(b *testing.B) plugins.Target {
			m := plugins.NewManager(plugins.ManagerConfig{Logger: slog.New(slog.DiscardHandler), PluginDir: memPluginDirB(b)})
			b.Cleanup(func() { _ = m.Close() })
			r, err := m.Open(b.Context(), plugins.TargetConfig{Name: "bench", URL: "mem:"})
			if err != nil {
				b.Fatal(err)
			}
			return r
		},
	})
}
